"""``cdbdump.open_dump``: one reader for ELF vmcores, kdump-compressed, flattened and split dumps.

    >>> with open_dump("vmcore.kdump") as d:
    ...     d.read(0x1000, 16)

Addresses are physical. A read that touches memory the machine did not have
raises NotPresentError; memory it had but the dump left out (filtered, lost,
beyond p_filesz in an ELF core with holes: that reads as zero) raises
NotInDumpError.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cdbdump.bitmap import Bitmap
from cdbdump.closing import Closing
from cdbdump.codecs import Codec
from cdbdump.errors import NotInDumpError, NotPresentError, UnknownFormatError
from cdbdump.fileio import FileView, MappedFile
from cdbdump.formats.x86_64 import PAGE_SIZE
from cdbdump.memory.kdump import KdumpMemory
from cdbdump.memory.physical import ElfMemory, ExtentKind, PhysicalMemory, data_pfn_ranges
from cdbdump.pipeline import open_files
from cdbdump.vmcore.detect import DumpFormat, sniff
from cdbdump.vmcore.elfcore import ElfCore
from cdbdump.vmcore.flattened import FlattenedFile
from cdbdump.vmcore.kdumpfile import KdumpFile
from cdbdump.vmcore.vmcoreinfo import VmcoreInfo

__all__ = ("Dump", "DumpFacts", "open_dump")

StrPath = str | os.PathLike[str]


@dataclass(frozen=True, slots=True)
class DumpFacts:
    """What the headers say."""

    format: str  # "elf", "kdump-compressed", "flattened", "split" (kdump-compressed)
    page_size: int
    max_mapnr: int  # pfns covered
    nr_files: int
    dump_level: int | None = None  # kdump-compressed only
    codec: str | None = None  # kdump-compressed only: zlib, lzo, snappy, zstd, none
    incomplete: bool = False  # kdump-compressed only: DUMP_DH_COMPRESSED_INCOMPLETE
    header_version: int | None = None
    timestamp_sec: int | None = None
    utsname: dict[str, str] | None = None
    phys_base: int | None = None


class Dump(Closing):
    """An opened dump. Build it with :func:`open_dump`; close it (or use ``with``)."""

    def __init__(self, files: list[FileView], memory: PhysicalMemory, facts: DumpFacts,
                 vmcoreinfo: VmcoreInfo | None, present: Bitmap) -> None:
        self._files = files
        self.memory = memory
        self.facts = facts
        self.vmcoreinfo = vmcoreinfo
        self._present = present

    @property
    def page_size(self) -> int:
        return self.facts.page_size

    def read(self, paddr: int, size: int) -> bytes:
        """``size`` bytes of physical memory at ``paddr``.

        Raises:
            NotPresentError: part of the range is not memory of the dumped machine.
            NotInDumpError: part of it is memory the dump does not hold.
        """
        for ext in self.memory.extents(paddr, size):
            if ext.kind is ExtentKind.ABSENT:
                self._raise_absent(ext.paddr, ext.size)
        return self.memory.read(paddr, size)

    def read_pfn(self, pfn: int) -> bytes:
        """The page frame ``pfn``, whole."""
        return self.read(pfn * self.page_size, self.page_size)

    def dumpable_pfn_runs(self) -> Iterator[tuple[int, int]]:
        """[start_pfn, end_pfn) of the frames whose data the dump holds, ascending."""
        return data_pfn_ranges(self.memory, first_byte=False)

    def present_pfn_runs(self) -> Iterator[tuple[int, int]]:
        """[start_pfn, end_pfn) of the frames the dumped machine had (the 1st bitmap)."""
        return self._present.iter_runs()

    def _raise_absent(self, paddr: int, size: int) -> None:
        ps = self.page_size
        first, last = paddr // ps, (paddr + size - 1) // ps
        present = self._present.get_bools(first, last + 1)
        if present.size < last + 1 - first or not present.all():
            missing = first + int(np.argmin(np.append(present, False)))
            raise NotPresentError(max(paddr, missing * ps), size)
        raise NotInDumpError(paddr, size)

    def close(self) -> None:
        for f in self._files:
            f.close()


def open_dump(path: StrPath, *split_parts: StrPath) -> Dump:
    """Open an ELF vmcore, a kdump-compressed or flattened dump, or a split set.

    Raises:
        CdbdumpError: the file cannot be read as a dump (typed: UnknownFormatError,
            CorruptDumpError, TruncatedDumpError, InputError).
    """
    files = open_files(Path(path), tuple(Path(p) for p in split_parts))
    try:
        return _open(files)
    except BaseException:
        for f in files:
            f.close()
        raise


def _open(files: list[FileView]) -> Dump:
    fmt = sniff(files[0])
    if fmt is DumpFormat.KDUMP:
        memory = KdumpMemory([KdumpFile.open(f) for f in files])
        head = memory.header_file
        kind = "split" if len(files) > 1 else (
            "flattened" if isinstance(files[0], FlattenedFile) else fmt.value)
        facts = DumpFacts(
            kind, memory.page_size, memory.max_mapnr, len(files), head.dump_level,
            head.codec.label if head.codec is not Codec.NONE else "none",
            any(p.is_incomplete for p in memory.parts), head.header.header_version,
            head.header.timestamp_sec, head.utsname, head.phys_base,
        )
        return Dump(files, memory, facts, head.vmcoreinfo, head.bitmap1)
    file = files[0]
    if fmt is not DumpFormat.ELF or not isinstance(file, MappedFile) or len(files) > 1:
        raise UnknownFormatError(file.path, bytes(file.view(0, min(16, file.size))))
    core = ElfCore.parse(file)
    info = core.vmcoreinfo
    page_size = (info.page_size if info is not None else None) or PAGE_SIZE
    elf = ElfMemory(file, core.loads, page_size)
    max_mapnr = -(-elf.end_paddr // page_size)
    present = Bitmap(max_mapnr)
    for lo, hi in elf.present_pfn_ranges():
        present.set_range(lo, hi)
    facts = DumpFacts("elf", page_size, max_mapnr, 1,
                      phys_base=info.phys_base if info is not None else None,
                      timestamp_sec=info.crashtime if info is not None else None)
    return Dump(files, elf, facts, info, present)
