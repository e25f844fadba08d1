"""ELF64 vmcores: /proc/vmcore, saved copies, and QEMU/libvirt dumps.

The ELF and program headers are decoded with formats.elf (e_phoff honoured,
PN_XNUM resolved); notes are walked over the raw PT_NOTE bytes; page data is
never read here (see memory.physical).
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import NamedTuple

from cdbdump.errors import CorruptDumpError, UnsupportedError
from cdbdump.fileio import MappedFile
from cdbdump.formats.elf import (
    CORE_NOTE_NAME,
    ELF64_EHDR,
    ELF64_PHDR,
    ELF64_SHDR,
    ELFCLASS64,
    ELFDATA2LSB,
    EM_X86_64,
    NT_PRSTATUS,
    PN_XNUM,
    PT_LOAD,
    PT_NOTE,
    VMCOREINFO_NOTE_NAME,
    LoadSegment,
)
from cdbdump.memory.physical import first_owner
from cdbdump.vmcore.notes import Note, iter_notes
from cdbdump.vmcore.vmcoreinfo import VmcoreInfo

# ELF e_machine values of the architectures kdump runs on (elf.h EM_*)
_MACHINES = {3: "i386", 8: "mips", 20: "ppc", 21: "ppc64", 22: "s390x", 40: "arm",
             183: "aarch64", 243: "riscv64", 258: "loongarch64"}

__all__ = ("ElfCore", "LoadSegment")

# fs/proc/kcore.c sets p_paddr to (elf_addr_t)-1 for segments that are not RAM or text
NO_PADDR = 0xFFFF_FFFF_FFFF_FFFF
# x86_64 MAX_PHYSMEM_BITS is 52 with 5-level paging (46 with 4-level)
MAX_PHYS_ADDR = 1 << 52


class ElfCore(NamedTuple):
    """The parsed headers and notes of an ELF vmcore."""

    file: MappedFile
    e_machine: int
    e_phoff: int
    loads: tuple[LoadSegment, ...]
    notes_raw: bytes  # every PT_NOTE segment, concatenated, byte for byte
    notes: tuple[Note, ...]
    vmcoreinfo: VmcoreInfo | None
    vmcoreinfo_note: Note | None
    problems: tuple[str, ...]  # degradations found while parsing (e.g. truncated file)
    note_paddrs: tuple[tuple[int, int, int], ...] = ()  # PT_NOTEs: (offset in notes_raw,
    #                                                     size, p_paddr)

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
            arch = _MACHINES.get(e_machine, f"e_machine {e_machine}")
            raise UnsupportedError(f"{file.path}: a vmcore of {arch}; cdbdump supports x86_64 only")

        problems: list[str] = []
        loads: list[LoadSegment] = []
        note_chunks: list[bytes] = []
        note_paddrs: list[tuple[int, int, int]] = []  # (offset in notes_raw, size, p_paddr)
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
                note_paddrs.append((sum(map(len, note_chunks)), p_filesz, p_paddr))
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
                missing = 0
                if p_offset + p_filesz > file.size:
                    kept = max(0, file.size - p_offset)
                    missing = p_filesz - kept
                    problems.append(
                        f"PT_LOAD {index} (paddr {p_paddr:#x}) extends past end of file "
                        f"{file.size:#x}: {missing:#x} bytes are missing; their pages are "
                        "lost, not dumped"
                    )
                    p_filesz = kept
                if p_filesz == 0:
                    p_offset = 0  # nothing is read through it; keep it a sane number
                loads.append(
                    LoadSegment(index, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_flags,
                                p_align, missing)
                )
        loads = _unaliased(loads, problems)
        notes_raw = b"".join(note_chunks)
        notes = tuple(iter_notes(notes_raw))
        note = next((n for n in notes if n.name == VMCOREINFO_NOTE_NAME), None)
        return cls(
            file=file,
            e_machine=e_machine,
            e_phoff=e_phoff,
            loads=tuple(loads),
            notes_raw=notes_raw,
            notes=notes,
            vmcoreinfo=VmcoreInfo.parse(note.desc(notes_raw)) if note is not None else None,
            vmcoreinfo_note=note,
            problems=tuple(problems),
            note_paddrs=tuple(note_paddrs),
        )

    @property
    def vmcoreinfo_note_paddr(self) -> tuple[int, int] | None:
        """(paddr, size) of the whole VMCOREINFO note in the crashed kernel's memory,
        when its PT_NOTE says where (p_paddr; kexec-tools' elfcorehdr does, the
        merged PT_NOTE of /proc/vmcore has 0 there, fs/proc/vmcore.c)."""
        note = self.vmcoreinfo_note
        if note is None:
            return None
        for start, size, p_paddr in self.note_paddrs:
            if p_paddr and start <= note.note_offset < start + size:
                end = note.desc_offset + note.desc_size
                return p_paddr + note.note_offset - start, end - note.note_offset
        return None

    @property
    def vmcoreinfo_desc_offset(self) -> int | None:
        """Offset of the VMCOREINFO text within notes_raw."""
        return self.vmcoreinfo_note.desc_offset if self.vmcoreinfo_note is not None else None


PhdrTuple = tuple[int, int, int, int, int, int, int, int]


def _unaliased(loads: list[LoadSegment], problems: list[str]) -> list[LoadSegment]:
    """Each file byte backs one PT_LOAD: a segment's file data ends where it reaches
    bytes an earlier segment in program-header order holds; the rest of its p_filesz
    is ``missing`` (lost where no other segment stores that memory).

    The kernel (fs/proc/vmcore.c) and QEMU store every segment's data once, so
    this only cuts lying headers; it bounds any output by the input's size.
    """
    spans = sorted((s.file_offset, s.file_offset + s.filesz, s.index, 0)
                   for s in loads if s.filesz)
    if all(b[0] >= a[1] for a, b in itertools.pairwise(spans)):
        return loads  # disjoint file ranges: the usual case
    own_end = {s.index: s.file_offset for s in loads}  # owned from p_offset up to here
    cut: set[int] = set()
    for start, end, index, _ in first_owner(spans):  # in file order
        if index in cut:
            continue
        if start == own_end[index]:
            own_end[index] = end
        else:
            cut.add(index)
    out: list[LoadSegment] = []
    for seg in loads:
        keep = own_end[seg.index] - seg.file_offset
        if keep < seg.filesz:
            problems.append(
                f"PT_LOAD {seg.index} (paddr {seg.paddr:#x}) reuses file bytes of an earlier "
                f"PT_LOAD at {seg.file_offset + keep:#x}: {seg.filesz - keep:#x} bytes are "
                "missing; their pages are lost, not dumped")
            seg = replace(seg, filesz=keep, missing=seg.missing + seg.filesz - keep)
        out.append(seg)
    return out


def _read_headers(file: MappedFile) -> tuple[int, int, list[PhdrTuple]]:
    """Elf64_Ehdr and the program header table, decoded over the mapped file.

    e_phoff is honoured (QEMU puts the table at 192); e_phnum PN_XNUM means the
    real count is section header 0's sh_info (linux fs/binfmt_elf.c, elf_core_dump).
    """
    if file.size < ELF64_EHDR.size:
        raise CorruptDumpError(f"{file.path}: bad ELF header: the file has {file.size} bytes",
                               file_offset=0, field="Elf64_Ehdr")
    ehdr = ELF64_EHDR.unpack(file.view(0, ELF64_EHDR.size, "Elf64_Ehdr"))
    e_machine, e_phoff, e_shoff, e_phentsize, e_phnum = (
        ehdr[2], ehdr[5], ehdr[6], ehdr[9], ehdr[10])
    if e_phnum == PN_XNUM:
        if e_shoff == 0 or e_shoff + ELF64_SHDR.size > file.size:
            raise CorruptDumpError(
                f"{file.path}: e_phnum is PN_XNUM but section header 0 at e_shoff "
                f"{e_shoff:#x} is not in the file", file_offset=0x28, field="e_shoff")
        e_phnum = ELF64_SHDR.unpack(file.view(e_shoff, ELF64_SHDR.size, "section header 0"))[7]
    if e_phnum and e_phentsize != ELF64_PHDR.size:
        raise CorruptDumpError(f"{file.path}: bad ELF header: e_phentsize {e_phentsize}, "
                               f"Elf64_Phdr is {ELF64_PHDR.size}", file_offset=0x36,
                               field="e_phentsize")
    if e_phoff + e_phnum * ELF64_PHDR.size > file.size:
        raise CorruptDumpError(
            f"{e_phnum} program headers at e_phoff {e_phoff:#x} run past the end of "
            f"the file ({file.size:#x} bytes)",
            file_offset=e_phoff,
            field="program header table",
        )
    table = file.view(e_phoff, e_phnum * ELF64_PHDR.size, "program header table")
    return e_machine, e_phoff, list(ELF64_PHDR.iter_unpack(table))
