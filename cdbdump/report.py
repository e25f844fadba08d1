"""What a run did, as data (--report-json serialises it), and makedumpfile's text of it:
print_report and print_mem_usage hand their lines to a callable (the CLIs print them)."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from cdbdump.mm.counts import PageCounts

if TYPE_CHECKING:
    from cdbdump.mm.scan import MemoryUsage

__all__ = ("DumpReport", "PageProgress", "PathTaken", "ProgressCallback", "print_mem_usage",
           "print_report")

# (step name, units done, units total); called once per window, never per page
ProgressCallback = Callable[[str, int, int], None]
# (pages written, pages to write): a writer's progress, once per window
PageProgress = Callable[[int, int], None]


class PathTaken(enum.Enum):
    """How the 2nd bitmap was made."""

    BITMAP = "bitmap"  # -q: the kernel's crash dump bitmap
    LEGACY = "legacy"  # the mem_map scan, as asked (no -q)
    FALLBACK = "fallback"  # -q was asked, the kernel bitmap was refused, mem_map scan instead
    NONE = "none"  # no page classification needed or possible (levels 0/1)


@dataclass(slots=True)
class DumpReport:
    """Facts of one run; page numbers follow makedumpfile's print_report."""

    vmcore: str
    dumpfile: str
    path_taken: PathTaken = PathTaken.NONE
    fallback_reason: str | None = None
    dump_level_requested: int = 0
    dump_level_applied: int = 0
    levels_not_applied: str | None = None  # why some -d bits could not be honoured
    codec: str = "zstd"
    max_mapnr: int = 0
    memory_hole_pages: int = 0
    counts: PageCounts = field(default_factory=PageCounts)
    dumpable_pages: int = 0  # set bits of the 2nd bitmap (zero pages included)
    pages_written: int = 0  # page data records written (zero pages share one)
    bytes_in: int = 0  # file-backed bytes of the input PT_LOADs
    bytes_out: int = 0  # size of the dump file
    bytes_written: int = 0  # bytes really written (makedumpfile's "Write bytes"; holes excluded)
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    input_incomplete: bool = False  # a refiltered input was itself flagged incomplete
    kernel_bitmap: dict[str, int] | None = None  # the struct's fields when -q used it
    pages_unreadable: int = 0  # input pages that could not be read: excluded, not dumped
    unreadable_pages: list[dict[str, Any]] = field(default_factory=list)  # the first of them
    pages_lost: int = 0  # dumpable pages of an incomplete dump without data (ENOSPC, signal)
    elf_excluded_pages: int | None = None  # -E: pages really left out (pfn_elf_excluded)
    split_ranges: list[tuple[int, int]] | None = None  # --split: [start_pfn, end_pfn) per file

    @property
    def original_pages(self) -> int:
        return self.max_mapnr - self.memory_hole_pages

    @property
    def excluded_pages(self) -> int:
        return self.counts.total

    @property
    def remaining_pages(self) -> int:
        return self.original_pages - self.excluded_pages

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["path_taken"] = self.path_taken.value
        data["original_pages"] = self.original_pages
        data["excluded_pages"] = self.excluded_pages
        data["remaining_pages"] = self.remaining_pages
        return data


def print_report(report: DumpReport, out: Callable[[str], None]) -> None:
    """makedumpfile's print_report lines, same labels and formats."""
    c = report.counts
    original = report.original_pages
    remaining = report.remaining_pages
    out("")
    out(f"Original pages  : 0x{original:016x}")
    out(f"  Excluded pages   : 0x{report.excluded_pages:016x}")
    elf_excluded = report.elf_excluded_pages
    if elf_excluded is not None:  # -E: what the 256-page rule really left out
        out(f"     in ELF format : 0x{elf_excluded:016x}")
    out(f"    Pages filled with zero  : 0x{c.zero:016x}")
    out(f"    Non-private cache pages : 0x{c.cache:016x}")
    out(f"    Private cache pages     : 0x{c.cache_private:016x}")
    out(f"    User process data pages : 0x{c.user:016x}")
    out(f"    Free pages              : 0x{c.free:016x}")
    out(f"    Hwpoison pages          : 0x{c.hwpoison:016x}")
    out(f"    Offline pages           : 0x{c.offline:016x}")
    out(f"  Remaining pages  : 0x{remaining:016x}")
    if elf_excluded is not None:
        out(f"     in ELF format : 0x{original - elf_excluded:016x}")
        remaining = original - elf_excluded
    if original:
        out(f"  (The number of pages is reduced to {remaining * 100 // original}%.)")
    if report.pages_unreadable:
        out(f"  Unreadable pages : 0x{report.pages_unreadable:016x}")
    out(f"Memory Hole     : 0x{report.memory_hole_pages:016x}")
    out("-" * 50)
    out(f"Total pages     : 0x{report.max_mapnr:016x}")
    out(f"Write bytes     : {report.bytes_written}")
    out("")


def print_mem_usage(usage: MemoryUsage, page_size: int, out: Callable[[str], None]) -> None:
    """makedumpfile print_mem_usage's table, same columns and labels."""
    out("")
    out("TYPE\t\tPAGES\t\t\tEXCLUDABLE\tDESCRIPTION")
    out("-" * 70)
    for name, pages, excludable, description in usage.rows():
        tabs = "\t\t" if len(name) < 8 else "\t"
        tail = " " if name == "KERN_DATA" else ""  # makedumpfile prints that trailing blank
        out(f"{name}{tabs}{pages:<16}\t{'yes' if excludable else 'no'}\t\t{description}{tail}")
    out("")
    out(f"page size:\t\t{page_size:<16}")
    out(f"Total pages on system:\t{usage.original_pages:<16}")
    out(f"Total size on system:\t{usage.original_pages * page_size:<16} Byte")
