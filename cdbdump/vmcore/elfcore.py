"""ELF64 vmcores: /proc/vmcore, saved copies, and QEMU/libvirt dumps.

pyelftools reads the ELF and program headers (it honours e_phoff, which QEMU
puts at 192, and PN_XNUM); notes are walked over the raw PT_NOTE bytes; page
data is never read here (see memory.physical).
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from cdbdump.errors import CorruptDumpError, InputReadError, UnsupportedError
from cdbdump.fileio import MappedFile
from cdbdump.formats.elf import (
    CORE_NOTE_NAME,
    ELF64_PHDR,
    ELFCLASS64,
    ELFDATA2LSB,
    EM_X86_64,
    NT_PRSTATUS,
    PT_LOAD,
    PT_NOTE,
    VMCOREINFO_NOTE_NAME,
)
from cdbdump.vmcore.notes import Note, iter_notes
from cdbdump.vmcore.vmcoreinfo import VmcoreInfo

__all__ = ("ElfCore", "LoadSegment")

# fs/proc/kcore.c sets p_paddr to (elf_addr_t)-1 for segments that are not RAM or text
NO_PADDR = 0xFFFF_FFFF_FFFF_FFFF
# x86_64 MAX_PHYSMEM_BITS is 52 with 5-level paging (46 with 4-level)
MAX_PHYS_ADDR = 1 << 52


@dataclass(frozen=True, slots=True)
class LoadSegment:
    """One PT_LOAD program header (the fields cdbdump uses)."""

    index: int
    file_offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int
    flags: int
    align: int


@dataclass(frozen=True, slots=True)
class ElfCore:
    """The parsed headers and notes of an ELF vmcore."""

    file: MappedFile
    e_machine: int
    e_phoff: int
    loads: tuple[LoadSegment, ...]
    notes_raw: bytes  # every PT_NOTE segment, concatenated, byte for byte
    notes: tuple[Note, ...]
    vmcoreinfo: VmcoreInfo | None
    vmcoreinfo_desc_offset: int | None  # offset of the VMCOREINFO text within notes_raw
    problems: tuple[str, ...]  # degradations found while parsing (e.g. truncated file)

    @property
    def nr_cpus(self) -> int:
        # makedumpfile get_nr_cpus: "CORE" notes of type NT_PRSTATUS
        return sum(1 for n in self.notes if n.name == CORE_NOTE_NAME and n.n_type == NT_PRSTATUS)

    @classmethod
    def parse(cls, file: MappedFile) -> ElfCore:
        ident = bytes(file.view(0, 16, "ELF e_ident")) if file.size >= 16 else b""
        if ident[4:5] != bytes([ELFCLASS64]) or ident[5:6] != bytes([ELFDATA2LSB]):
            raise UnsupportedError(
                f"{file.path}: only little-endian ELF64 vmcores are handled "
                f"(EI_CLASS {ident[4:5].hex()}, EI_DATA {ident[5:6].hex()})"
            )
        headers = _read_headers(file)
        e_machine, e_phoff, phdrs = headers
        if e_machine != EM_X86_64:
            raise UnsupportedError(f"{file.path}: e_machine {e_machine} (only x86_64, 62)")

        problems: list[str] = []
        loads: list[LoadSegment] = []
        note_chunks: list[bytes] = []
        for index, (p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align) in (
            enumerate(phdrs)
        ):
            phdr_offset = e_phoff + index * ELF64_PHDR.size
            if p_type == PT_NOTE:
                if p_offset + p_filesz > file.size:
                    raise CorruptDumpError(
                        f"PT_NOTE {index} extends past end of file: needs "
                        f"{p_offset + p_filesz:#x} bytes, file has {file.size:#x}",
                        file_offset=phdr_offset,
                        field="program header",
                    )
                note_chunks.append(bytes(file.view(p_offset, p_filesz, "PT_NOTE")))
            elif p_type == PT_LOAD:
                if p_paddr == NO_PADDR:
                    continue  # /proc/kcore: vmalloc, modules, vmemmap have no physical address
                if p_paddr + p_memsz > MAX_PHYS_ADDR:
                    raise CorruptDumpError(
                        f"PT_LOAD {index} covers paddr {p_paddr:#x}+{p_memsz:#x}, beyond the "
                        f"{MAX_PHYS_ADDR.bit_length() - 1}-bit physical address space",
                        file_offset=phdr_offset,
                        field="program header",
                    )
                if p_filesz > p_memsz:
                    raise CorruptDumpError(
                        f"PT_LOAD {index} has p_filesz {p_filesz:#x} > p_memsz {p_memsz:#x}",
                        file_offset=phdr_offset,
                        field="program header",
                    )
                if p_offset + p_filesz > file.size:
                    kept = max(0, file.size - p_offset)
                    problems.append(
                        f"PT_LOAD {index} (paddr {p_paddr:#x}) extends past end of file "
                        f"{file.size:#x}: {p_filesz - kept:#x} bytes missing are treated as "
                        "not in the dump"
                    )
                    p_filesz = kept
                if p_filesz == 0:
                    p_offset = 0  # nothing is read through it; keep it a sane number
                loads.append(
                    LoadSegment(index, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_flags,
                                p_align)
                )
        notes_raw = b"".join(note_chunks)
        notes = tuple(iter_notes(notes_raw))
        vmcoreinfo: VmcoreInfo | None = None
        vmcoreinfo_desc_offset: int | None = None
        for note in notes:
            if note.name == VMCOREINFO_NOTE_NAME:
                vmcoreinfo = VmcoreInfo.parse(note.desc(notes_raw))
                vmcoreinfo_desc_offset = note.desc_offset
                break
        return cls(
            file=file,
            e_machine=e_machine,
            e_phoff=e_phoff,
            loads=tuple(loads),
            notes_raw=notes_raw,
            notes=notes,
            vmcoreinfo=vmcoreinfo,
            vmcoreinfo_desc_offset=vmcoreinfo_desc_offset,
            problems=tuple(problems),
        )

    @property
    def vmcoreinfo_note(self) -> Note | None:
        for note in self.notes:
            if note.name == VMCOREINFO_NOTE_NAME:
                return note
        return None


PhdrTuple = tuple[int, int, int, int, int, int, int, int]


def _read_headers(file: MappedFile) -> tuple[int, int, list[PhdrTuple]]:
    """Ehdr and program headers through pyelftools; its errors become CorruptDumpError."""
    # pyelftools reads lazily from a stream; hand it the header region only so
    # it can never pull page data (the program header table may be anywhere,
    # so the stream is the whole file opened normally).
    try:
        with io.FileIO(file.path, "r") as stream:
            elf = ELFFile(stream)
            e_phoff = int(elf["e_phoff"])
            e_machine_raw = elf["e_machine"]
            nr_phdrs = elf.num_segments()
            if e_phoff + nr_phdrs * ELF64_PHDR.size > file.size:
                raise CorruptDumpError(
                    f"{nr_phdrs} program headers at e_phoff {e_phoff:#x} run past the end of "
                    f"the file ({file.size:#x} bytes)",
                    file_offset=e_phoff,
                    field="program header table",
                )
            phdrs: list[PhdrTuple] = []
            for i in range(nr_phdrs):
                h = elf.get_segment(i).header
                phdrs.append(
                    (
                        _ptype(h["p_type"]), int(h["p_flags"]), int(h["p_offset"]),
                        int(h["p_vaddr"]), int(h["p_paddr"]), int(h["p_filesz"]),
                        int(h["p_memsz"]), int(h["p_align"]),
                    )
                )
    except ELFError as exc:
        raise CorruptDumpError(f"{file.path}: bad ELF header: {exc}", file_offset=0) from exc
    except (struct.error, ValueError) as exc:
        raise CorruptDumpError(f"{file.path}: bad ELF header: {exc}", file_offset=0) from exc
    except OSError as exc:  # EIO in the header region: nothing can be dumped
        raise InputReadError(file.path, 0, file.size, f"ELF headers unreadable: "
                             f"{exc.strerror or exc}") from exc
    e_machine = EM_X86_64 if e_machine_raw == "EM_X86_64" else _machine_number(e_machine_raw)
    return e_machine, e_phoff, phdrs


_PT_NAMES = {"PT_LOAD": PT_LOAD, "PT_NOTE": PT_NOTE}


def _ptype(value: object) -> int:
    if isinstance(value, int):
        return value
    return _PT_NAMES.get(str(value), -1)


def _machine_number(value: object) -> int:
    return value if isinstance(value, int) else -1
