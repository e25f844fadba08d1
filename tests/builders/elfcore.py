"""ElfCoreBuilder: fabricate ELF64 x86_64 core files (vmcores), big ones written sparse.

Two layouts, as seen on real files (QEMU's dump-guest-memory and the kernel's /proc/vmcore):

* ``proc_vmcore`` (the kernel's /proc/vmcore, fs/proc/vmcore.c): Ehdr, program headers at 64,
  the merged PT_NOTE at the next page boundary and padded to whole pages, PT_LOADs at
  page-aligned file offsets (p_offset keeps paddr's offset inside the page), p_flags RWX.
* ``qemu`` (QEMU 7.2 dump-guest-memory, paging=false): two section headers at 64 (SHT_NULL
  and .shstrtab), program headers at e_phoff = 192, e_ehsize = 8 (QEMU bug), p_vaddr = 0,
  notes then PT_LOADs packed with no alignment, the .shstrtab bytes at the end of the file.

PN_XNUM: with 0xffff or more program headers (or ``force_xnum=True``) e_phnum = 0xffff and the
real count goes to section header 0's sh_info.

Every Ehdr field can be overridden (``override_ehdr``), every Phdr field per segment
(``add_load(..., overrides={...})``, ``note_overrides``), and the note bytes can be replaced
(``notes_raw``), so broken inputs are easy to make.

Data of a PT_LOAD is bytes, None (all zero) or a ``PhysSource`` (an object with
``iter_nonzero(paddr, size)`` yielding ``(offset, bytes)`` chunks that are not all zero);
``write(path)`` ftruncates the file and writes only those chunks.
"""

from __future__ import annotations

import itertools
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from cdbdump.formats.elf import (
    CORE_NOTE_NAME,
    ELF64_EHDR,
    ELF64_NHDR,
    ELF64_PHDR,
    ELF64_SHDR,
    ELFCLASS64,
    ELFDATA2LSB,
    ELFMAG,
    EM_X86_64,
    ET_CORE,
    NOTE_ALIGN,
    NT_PRSTATUS,
    PN_XNUM,
    PT_LOAD,
    PT_NOTE,
    VMCOREINFO_NOTE_NAME,
)

__all__ = (
    "ELF_PRSTATUS_SIZE",
    "ElfCoreBuilder",
    "LoadSpec",
    "NoteSpec",
    "PhysSource",
    "make_note",
    "make_prstatus",
)

Layout = Literal["proc_vmcore", "qemu"]
PAGE = 4096
PF_X, PF_W, PF_R = 1, 2, 4
SHT_NULL = 0
SHT_STRTAB = 3
EV_CURRENT = 1

ELF_PRSTATUS_SIZE = 336  # sizeof(struct elf_prstatus) on x86_64
_PR_PID_OFFSET = 32
_PR_REG_OFFSET = 112  # struct user_regs_struct: 27 x u64
_QEMU_CPUSTATE_SIZE = 0x1B8


class PhysSource(Protocol):
    """Physical memory that can list its non-zero parts."""

    def iter_nonzero(self, paddr: int, size: int) -> Iterator[tuple[int, bytes]]:
        """Yield (offset from paddr, data) for every not-all-zero part of [paddr, paddr+size)."""
        ...


@dataclass
class LoadSpec:
    """One PT_LOAD. filesz defaults to memsz (or len(data))."""

    paddr: int
    memsz: int
    filesz: int
    vaddr: int
    data: bytes | PhysSource | None
    p_flags: int = PF_R | PF_W | PF_X
    p_align: int = 0
    overrides: dict[str, int] = field(default_factory=dict)


@dataclass
class NoteSpec:
    name: bytes
    n_type: int
    desc: bytes


def _pad4(n: int) -> int:
    return (n + NOTE_ALIGN - 1) // NOTE_ALIGN * NOTE_ALIGN


def make_note(name: bytes, n_type: int, desc: bytes) -> bytes:
    """One ELF note: Nhdr, name + NUL and desc each padded to 4 (elf_info.c offset_next_note)."""
    name_z = name + b"\0"
    return (
        ELF64_NHDR.pack(len(name_z), len(desc), n_type)
        + name_z.ljust(_pad4(len(name_z)), b"\0")
        + desc.ljust(_pad4(len(desc)), b"\0")
    )


def make_prstatus(cpu: int, pid: int | None = None) -> bytes:
    """A struct elf_prstatus (336 bytes) with pr_pid and recognisable register values."""
    desc = bytearray(ELF_PRSTATUS_SIZE)
    struct.pack_into("<I", desc, _PR_PID_OFFSET, pid if pid is not None else cpu + 1)
    for i in range(27):
        struct.pack_into("<Q", desc, _PR_REG_OFFSET + 8 * i, 0xC0DE_0000_0000 | cpu << 8 | i)
    return bytes(desc)


@dataclass
class _Plan:
    ehdr: dict[str, object]
    phoff: int  # where the table really is (e_phoff may be overridden to lie)
    phdrs: list[dict[str, int]]
    shdrs: list[dict[str, int]]
    shoff: int
    notes: bytes
    note_offset: int
    load_offsets: list[int]
    shstrtab: bytes
    shstrtab_offset: int
    file_size: int


_EHDR_FIELDS = (
    "e_ident",
    "e_type",
    "e_machine",
    "e_version",
    "e_entry",
    "e_phoff",
    "e_shoff",
    "e_flags",
    "e_ehsize",
    "e_phentsize",
    "e_phnum",
    "e_shentsize",
    "e_shnum",
    "e_shstrndx",
)
_PHDR_FIELDS = (
    "p_type",
    "p_flags",
    "p_offset",
    "p_vaddr",
    "p_paddr",
    "p_filesz",
    "p_memsz",
    "p_align",
)
_SHDR_FIELDS = (
    "sh_name",
    "sh_type",
    "sh_flags",
    "sh_addr",
    "sh_offset",
    "sh_size",
    "sh_link",
    "sh_info",
    "sh_addralign",
    "sh_entsize",
)


class ElfCoreBuilder:
    """Collect notes and PT_LOADs, then ``build()`` bytes or ``write(path)`` sparse.

    >>> b = ElfCoreBuilder("proc_vmcore")
    >>> b.add_prstatus(0); b.add_vmcoreinfo(make_vmcoreinfo("6.1"))
    >>> b.add_load(0x1000, data=page_bytes, vaddr=0xffff888000001000)
    >>> raw = b.build()
    """

    def __init__(self, layout: Layout = "proc_vmcore", *, force_xnum: bool = False) -> None:
        if layout not in ("proc_vmcore", "qemu"):
            raise ValueError(f"unknown layout {layout!r}")
        self.layout: Layout = layout
        self.force_xnum = force_xnum
        self.notes: list[NoteSpec] = []
        self.loads: list[LoadSpec] = []
        self.ehdr_overrides: dict[str, object] = {}
        self.note_overrides: dict[str, int] = {}
        self.notes_raw: bytes | None = None  # replaces the concatenated notes when set
        self.omit_note_phdr = False

    # -- content -----------------------------------------------------------------------
    def add_note(self, name: bytes, n_type: int, desc: bytes) -> None:
        self.notes.append(NoteSpec(name, n_type, desc))

    def add_prstatus(self, cpu: int, pid: int | None = None) -> None:
        """A "CORE"/NT_PRSTATUS note for one CPU (QEMU also adds a "QEMU" note per CPU)."""
        self.add_note(CORE_NOTE_NAME, NT_PRSTATUS, make_prstatus(cpu, pid))

    def add_qemu_cpustate(self, cpu: int) -> None:
        desc = bytearray(_QEMU_CPUSTATE_SIZE)
        struct.pack_into("<II", desc, 0, 1, _QEMU_CPUSTATE_SIZE)  # version, size
        struct.pack_into("<Q", desc, 8, 0xC0DE_0000_0000 | cpu)
        self.add_note(b"QEMU", 0, bytes(desc))

    def add_vmcoreinfo(self, text: bytes) -> None:
        self.add_note(VMCOREINFO_NOTE_NAME, 0, text)

    def add_load(
        self,
        paddr: int,
        *,
        data: bytes | PhysSource | None = None,
        memsz: int | None = None,
        filesz: int | None = None,
        vaddr: int | None = None,
        p_flags: int | None = None,
        p_align: int = 0,
        overrides: dict[str, int] | None = None,
    ) -> LoadSpec:
        """Add a PT_LOAD. vaddr defaults to 0 (qemu) or paddr; memsz to len(data)."""
        if memsz is None:
            if not isinstance(data, bytes | bytearray):
                raise ValueError("memsz is required unless data is bytes")
            memsz = len(data)
        if filesz is None:
            filesz = min(memsz, len(data)) if isinstance(data, bytes | bytearray) else memsz
        if vaddr is None:
            vaddr = 0 if self.layout == "qemu" else paddr
        if p_flags is None:
            p_flags = 0 if self.layout == "qemu" else PF_R | PF_W | PF_X
        spec = LoadSpec(paddr, memsz, filesz, vaddr, data, p_flags, p_align, dict(overrides or {}))
        self.loads.append(spec)
        return spec

    def override_ehdr(self, **fields: object) -> None:
        """Force Ehdr fields (e_phoff, e_phnum, e_ident, ...) after layout."""
        unknown = set(fields) - set(_EHDR_FIELDS)
        if unknown:
            raise ValueError(f"unknown Ehdr fields {sorted(unknown)}")
        self.ehdr_overrides.update(fields)

    # -- layout ------------------------------------------------------------------------
    def notes_bytes(self) -> bytes:
        if self.notes_raw is not None:
            return self.notes_raw
        return b"".join(make_note(n.name, n.n_type, n.desc) for n in self.notes)

    def _plan(self) -> _Plan:
        notes = self.notes_bytes()
        nr_phdrs = len(self.loads) + (0 if self.omit_note_phdr else 1)
        xnum = self.force_xnum or nr_phdrs >= PN_XNUM
        shstrtab = b""
        shdrs: list[dict[str, int]] = []
        if self.layout == "qemu":
            shstrtab = b"\0.shstrtab\0"
            shoff = ELF64_EHDR.size
            nr_shdrs = 2
            phoff = shoff + nr_shdrs * ELF64_SHDR.size  # 192
            cursor = phoff + nr_phdrs * ELF64_PHDR.size
            note_offset = cursor
            cursor += len(notes)
        else:
            phoff = ELF64_EHDR.size
            cursor = phoff + nr_phdrs * ELF64_PHDR.size
            shoff = 0
            nr_shdrs = 0
            if xnum:
                shoff = cursor
                nr_shdrs = 1
                cursor += ELF64_SHDR.size
            note_offset = _roundup(cursor, PAGE)
            cursor = note_offset + _roundup(len(notes), PAGE)
        load_offsets: list[int] = []
        for load in self.loads:
            if self.layout == "qemu":
                load_offsets.append(cursor if load.filesz else 0)
                cursor += load.filesz
            else:
                start = load.paddr & ~(PAGE - 1)
                end = _roundup(load.paddr + load.filesz, PAGE)
                load_offsets.append(cursor + (load.paddr - start))
                cursor += end - start if load.filesz else 0
        shstrtab_offset = 0
        if self.layout == "qemu":
            shstrtab_offset = cursor
            cursor += len(shstrtab)
            shdrs = [
                _shdr(sh_info=nr_phdrs if xnum else 0),
                _shdr(
                    sh_name=1,
                    sh_type=SHT_STRTAB,
                    sh_offset=shstrtab_offset,
                    sh_size=len(shstrtab),
                    sh_addralign=1,
                ),
            ]
        elif xnum:
            shdrs = [_shdr(sh_info=nr_phdrs)]
        phdrs: list[dict[str, int]] = []
        if not self.omit_note_phdr:
            note_phdr = {
                "p_type": PT_NOTE,
                "p_flags": 0,
                "p_offset": note_offset,
                "p_vaddr": 0,
                "p_paddr": 0,
                "p_filesz": len(notes),
                "p_memsz": len(notes),
                "p_align": 0,
            }
            note_phdr.update(self.note_overrides)
            phdrs.append(note_phdr)
        for load, offset in zip(self.loads, load_offsets, strict=True):
            phdr = {
                "p_type": PT_LOAD,
                "p_flags": load.p_flags,
                "p_offset": offset,
                "p_vaddr": load.vaddr,
                "p_paddr": load.paddr,
                "p_filesz": load.filesz,
                "p_memsz": load.memsz,
                "p_align": load.p_align,
            }
            phdr.update(load.overrides)
            phdrs.append(phdr)
        ident = ELFMAG + bytes([ELFCLASS64, ELFDATA2LSB, EV_CURRENT, 0]) + bytes(8)
        ehdr: dict[str, object] = {
            "e_ident": ident,
            "e_type": ET_CORE,
            "e_machine": EM_X86_64,
            "e_version": EV_CURRENT,
            "e_entry": 0,
            "e_phoff": phoff,
            "e_shoff": shoff,
            "e_flags": 0,
            "e_ehsize": 8 if self.layout == "qemu" else ELF64_EHDR.size,
            "e_phentsize": ELF64_PHDR.size,
            "e_phnum": PN_XNUM if xnum else nr_phdrs,
            "e_shentsize": ELF64_SHDR.size if nr_shdrs else 0,
            "e_shnum": nr_shdrs,
            "e_shstrndx": 1 if self.layout == "qemu" else 0,
        }
        ehdr.update(self.ehdr_overrides)
        return _Plan(
            ehdr,
            phoff,
            phdrs,
            shdrs,
            shoff,
            notes,
            note_offset,
            load_offsets,
            shstrtab,
            shstrtab_offset,
            cursor,
        )

    def _headers(self, plan: _Plan) -> list[tuple[int, bytes]]:
        """(file offset, bytes) of everything that is not PT_LOAD data."""
        out = [(0, ELF64_EHDR.pack(*(plan.ehdr[f] for f in _EHDR_FIELDS)))]
        raw_phdrs = b"".join(ELF64_PHDR.pack(*(p[f] for f in _PHDR_FIELDS)) for p in plan.phdrs)
        out.append((plan.phoff, raw_phdrs))
        if plan.shdrs:
            raw = b"".join(ELF64_SHDR.pack(*(s[f] for f in _SHDR_FIELDS)) for s in plan.shdrs)
            out.append((plan.shoff, raw))
        out.append((plan.note_offset, plan.notes))
        if plan.shstrtab:
            out.append((plan.shstrtab_offset, plan.shstrtab))
        return out

    def file_size(self) -> int:
        return self._plan().file_size

    def load_file_offsets(self) -> list[int]:
        """p_offset of each PT_LOAD, in add_load order."""
        return self._plan().load_offsets

    def note_file_offset(self) -> int:
        return self._plan().note_offset

    # -- output ------------------------------------------------------------------------
    def _iter_load_chunks(self, plan: _Plan) -> Iterator[tuple[int, bytes]]:
        for load, offset in zip(self.loads, plan.load_offsets, strict=True):
            if not load.filesz or load.data is None:
                continue
            if isinstance(load.data, bytes | bytearray):
                yield offset, bytes(load.data[: load.filesz])
            else:
                for rel, chunk in load.data.iter_nonzero(load.paddr, load.filesz):
                    yield offset + rel, chunk

    def build(self) -> bytes:
        """The whole file in memory (small machines only)."""
        plan = self._plan()
        buf = bytearray(plan.file_size)
        for offset, chunk in (*self._headers(plan), *self._iter_load_chunks(plan)):
            end = offset + len(chunk)
            if end > len(buf):
                buf.extend(bytes(end - len(buf)))
            buf[offset:end] = chunk
        return bytes(buf)

    def write(self, path: str | os.PathLike[str]) -> int:
        """Write the file sparse (ftruncate + pwrite of non-zero data only); return its size."""
        plan = self._plan()
        fd = os.open(Path(path), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, plan.file_size)
            # chained, not unpacked: the chunks are made and written one at a time
            for offset, chunk in itertools.chain(self._headers(plan),
                                                 self._iter_load_chunks(plan)):
                _pwrite_all(fd, chunk, offset)
        finally:
            os.close(fd)
        return plan.file_size


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _shdr(**fields: int) -> dict[str, int]:
    sh = dict.fromkeys(_SHDR_FIELDS, 0)
    sh.update(fields)
    return sh


def _roundup(n: int, align: int) -> int:
    return (n + align - 1) // align * align
