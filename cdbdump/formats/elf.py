"""ELF64 core-file layouts (linux: include/uapi/linux/elf.h), little endian."""

from __future__ import annotations

import struct
from dataclasses import dataclass

ELFMAG = b"\x7fELF"
ELFCLASS64 = 2
ELFDATA2LSB = 1
ET_CORE = 4
EM_X86_64 = 62

PT_LOAD = 1
PT_NOTE = 4
PN_XNUM = 0xFFFF  # e_phnum overflow: real count in section header 0's sh_info

NT_PRSTATUS = 1
VMCOREINFO_NOTE_NAME = b"VMCOREINFO"
CORE_NOTE_NAME = b"CORE"

# Elf64_Ehdr (64 bytes)
ELF64_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
# e_ident, e_type, e_machine, e_version, e_entry, e_phoff, e_shoff, e_flags,
# e_ehsize, e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx

# Elf64_Phdr (56 bytes)
ELF64_PHDR = struct.Struct("<IIQQQQQQ")
# p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align

# Elf64_Shdr (64 bytes)
ELF64_SHDR = struct.Struct("<IIQQQQIIQQ")
# sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size, sh_link, sh_info,
# sh_addralign, sh_entsize

# Elf64_Nhdr (12 bytes): n_namesz, n_descsz, n_type; name and desc 4-byte padded
ELF64_NHDR = struct.Struct("<III")
NOTE_ALIGN = 4


@dataclass(frozen=True, slots=True)
class LoadSegment:
    """One PT_LOAD program header (the fields cdbdump uses).

    Also the neutral "memory at paddr, the first filesz bytes stored at
    file_offset" record of cdbdump.memory, which never imports a container.
    """

    index: int
    file_offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int
    flags: int = 0
    align: int = 0
    # bytes of p_filesz the file does not hold (it ends first): claimed stored, lost;
    # filesz above is what the file holds
    missing: int = 0
