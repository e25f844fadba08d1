"""Physical memory of a dump: the one seam every container plugs into.

A container (ELF core, kdump-compressed file, flattened stream, split set)
answers :meth:`PhysicalMemory.extents`: the runs of [paddr, paddr+size) that
are stored (DATA), in memory but not stored, so zero (ZERO: ELF p_filesz <
p_memsz), or not in the dump (ABSENT). Everything else here (strict reads,
filling a buffer, zero-copy views, pfn ranges) is written once over extents,
as drgn's memory_reader.h segments and libkdumpfile's format_ops.get_page do.
The mapped input's RSS is the container's business (release/release_all).
"""

from __future__ import annotations

import bisect
import enum
import heapq
import itertools
from collections.abc import Iterable, Iterator
from typing import NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

from cdbdump.errors import InputReadError, NotInDumpError
from cdbdump.fileio import MappedFile
from cdbdump.formats.elf import LoadSegment

__all__ = (
    "ElfMemory",
    "Extent",
    "ExtentKind",
    "LostRange",
    "PhysicalMemory",
    "all_data",
    "data_pfn_ranges",
    "fill",
    "read_extents",
    "view_run",
)

_FAULT_AROUND = 64 << 10  # Linux fault_around_bytes default


class ExtentKind(enum.Enum):
    DATA = "data"  # stored in the dump
    ZERO = "zero"  # memory the dump does not store: reads as zero (p_filesz < p_memsz)
    ABSENT = "absent"  # not in the dump


class LostRange(NamedTuple):
    """[paddr, end) a PT_LOAD says is stored at file_offset, which the file cannot
    supply: past its end (``past_eof``), or file bytes an earlier PT_LOAD holds."""

    paddr: int
    end: int
    file_offset: int
    past_eof: bool


class Extent(NamedTuple):
    """A run of physical memory of one kind; file_offset only for raw DATA (else -1)."""

    paddr: int
    size: int
    kind: ExtentKind
    file_offset: int = -1

    @property
    def end(self) -> int:
        return self.paddr + self.size


class PhysicalMemory(Protocol):
    """What every container implements."""

    page_size: int

    @property
    def end_paddr(self) -> int:
        """One past the highest address the dump describes."""

    def extents(self, paddr: int, size: int) -> Iterator[Extent]:
        """Runs covering exactly [paddr, paddr+size), in address order."""

    def data(self, extent: Extent) -> memoryview:
        """The bytes of a DATA extent that extents() yielded."""

    def read(self, paddr: int, size: int) -> bytes:
        """``size`` bytes at ``paddr``; NotInDumpError where ABSENT."""

    def present_pfn_ranges(self) -> Iterator[tuple[int, int]]:
        """[start_pfn, end_pfn) of the frames present in the dump (the 1st bitmap)."""

    def known_zero_frames(self, pfns: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_] | None:
        """Frames known to read as zero without reading them; None if none are known."""

    def release(self, paddr: int, size: int) -> None:
        """Drop what reading [paddr, paddr+size) mapped or cached (RSS)."""

    def release_all(self) -> None:
        """Drop everything mapped or cached so far (RSS)."""


# -- reads over extents (for every container) ---------------------------------------------


def read_extents(mem: PhysicalMemory, paddr: int, size: int) -> bytes:
    """A strict read: DATA copied, ZERO zero-filled, NotInDumpError at the first ABSENT."""
    out = bytearray()
    for ext in mem.extents(paddr, size):
        if ext.kind is ExtentKind.ABSENT:
            raise NotInDumpError(ext.paddr, paddr + size - ext.paddr)
        out += mem.data(ext) if ext.kind is ExtentKind.DATA else bytes(ext.size)
    return bytes(out)


def fill(
    mem: PhysicalMemory, paddr: int, out: npt.NDArray[np.uint8], *, salvage: bool = False
) -> list[Extent]:
    """Copy [paddr, paddr+out.size) into ``out``; zero and return what is not DATA.

    A DATA extent the input cannot deliver raises InputReadError (EIO, a file
    shrunk under us). With ``salvage`` it is retried page by page instead, so
    one bad page does not hide its neighbours (the mem_map scan: an unreadable
    struct page keeps its frames); the pages that still fail are zeroed and
    returned as ABSENT.
    """
    missing: list[Extent] = []
    for ext in mem.extents(paddr, out.size):
        lo = ext.paddr - paddr
        if ext.kind is ExtentKind.DATA:
            try:
                if isinstance(mem, ElfMemory):  # pread straight into ``out``: no copy
                    mem.data_into(ext, out[lo : lo + ext.size])
                else:
                    out[lo : lo + ext.size] = np.frombuffer(mem.data(ext), dtype=np.uint8)
            except InputReadError:
                if not salvage:
                    raise
                missing.extend(_fill_pages(mem, ext, paddr, out))
        else:
            out[lo : lo + ext.size] = 0
            missing.append(ext)
    return missing


def _fill_pages(
    mem: PhysicalMemory, ext: Extent, paddr: int, out: npt.NDArray[np.uint8]
) -> list[Extent]:
    """Error path of fill: copy one DATA extent page by page; return what failed."""
    missing: list[Extent] = []
    ps = mem.page_size
    cur = ext.paddr
    while cur < ext.end:
        stop = min(ext.end, (cur // ps + 1) * ps)
        for sub in mem.extents(cur, stop - cur):
            lo = sub.paddr - paddr
            try:
                out[lo : lo + sub.size] = np.frombuffer(mem.data(sub), dtype=np.uint8)
            except InputReadError:
                out[lo : lo + sub.size] = 0
                missing.append(Extent(sub.paddr, sub.size, ExtentKind.ABSENT))
        cur = stop
    return missing


def view_run(mem: PhysicalMemory, paddr: int, size: int) -> memoryview | None:
    """The bytes of [paddr, paddr+size) when they are one DATA extent (zero-copy for ELF)."""
    ext = next(mem.extents(paddr, size), None)
    if ext is None or ext.kind is not ExtentKind.DATA or ext.size != size:
        return None
    return mem.data(ext)


def all_data(mem: PhysicalMemory, paddr: int, size: int) -> bool:
    """Every byte of [paddr, paddr+size) is stored in the dump."""
    return all(ext.kind is ExtentKind.DATA for ext in mem.extents(paddr, size))


def data_pfn_ranges(mem: PhysicalMemory, *, first_byte: bool) -> Iterator[tuple[int, int]]:
    """[start_pfn, end_pfn) of frames with stored bytes, adjacent ranges merged.

    With ``first_byte`` a frame counts only if its first byte is stored
    (makedumpfile is_in_segs → paddr_to_offset); otherwise any stored byte
    does (makedumpfile exclude_nodata_pages keeps such frames).
    """
    ps = mem.page_size
    yield from _merged_ranges(
        (-(-ext.paddr // ps) if first_byte else ext.paddr // ps, -(-ext.end // ps))
        for ext in mem.extents(0, mem.end_paddr)
        if ext.kind is ExtentKind.DATA
    )


def _merged_ranges(ranges: Iterable[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    """[lo, hi) ranges in ascending order of lo with touching ones merged and
    empty ones dropped."""
    cur: tuple[int, int] | None = None
    for lo, hi in ranges:
        if lo >= hi:
            continue
        if cur is not None and lo <= cur[1]:
            cur = (cur[0], max(cur[1], hi))
            continue
        if cur is not None:
            yield cur
        cur = (lo, hi)
    if cur is not None:
        yield cur


# -- ELF cores ----------------------------------------------------------------------------


class ElfMemory:
    """Physical memory as the PT_LOAD segments of an ELF vmcore present it.

    The segments are resolved once into disjoint DATA and ZERO extents (what
    is not covered is ABSENT), so every lookup is a bisect. Overlapping
    PT_LOADs (the kernel-text LOAD that kexec puts before the direct-map LOAD
    on x86_64) follow makedumpfile's paddr_to_offset: a byte is read from the
    first segment in program-header order that stores it. A segment whose
    file data ends early (p_filesz < p_memsz, or a truncated file) therefore
    leaves its bytes to a later segment that stores them; only memory no
    segment stores is ZERO.
    """

    def __init__(self, file: MappedFile, loads: Iterable[LoadSegment], page_size: int) -> None:
        self._file = file
        self.page_size = page_size
        self._runs, self.lost = _resolve_loads(loads, file.size)  # lost: list[LostRange]
        self._starts = [r.paddr for r in self._runs]
        data = [r for r in self._runs if r.kind is ExtentKind.DATA]
        self._data_paddr = np.array([r.paddr for r in data], dtype=np.int64)
        self._data_end = np.array([r.end for r in data], dtype=np.int64)
        self._data_file_offset = np.array([r.file_offset for r in data], dtype=np.int64)

    @property
    def end_paddr(self) -> int:
        return self._runs[-1].end if self._runs else 0

    @property
    def file_size(self) -> int:
        return self._file.size

    def extents(self, paddr: int, size: int) -> Iterator[Extent]:
        end = paddr + size
        cur = paddr
        runs = self._runs
        i = max(0, bisect.bisect_right(self._starts, paddr) - 1)
        while cur < end:
            run = runs[i] if i < len(runs) else None
            if run is None or cur < run.paddr:  # a hole up to the next run
                stop = end if run is None else min(end, run.paddr)
                yield Extent(cur, stop - cur, ExtentKind.ABSENT)
                cur = stop
                continue
            if cur < run.end:
                stop = min(end, run.end)
                offset = run.file_offset + (cur - run.paddr) if run.file_offset >= 0 else -1
                yield Extent(cur, stop - cur, run.kind, offset)
                cur = stop
            i += 1

    def data(self, extent: Extent) -> memoryview:
        return self._file.view(extent.file_offset, extent.size, "PT_LOAD data")

    def data_into(self, extent: Extent, out: npt.NDArray[np.uint8]) -> None:
        """Copy a DATA extent into ``out`` (its size): the writer's reused buffer, not
        a fresh bytes object (and its page faults) per read."""
        self._file.read_into(extent.file_offset, out, "PT_LOAD data")

    def read(self, paddr: int, size: int) -> bytes:
        return read_extents(self, paddr, size)

    def present_pfn_ranges(self) -> Iterator[tuple[int, int]]:
        """Every page with any byte in a segment's p_memsz, touching ranges merged.

        A segment ending mid-page counts its last page (makedumpfile >= 1.7.6
        dumps it with the missing tail zero-filled).
        """
        ps = self.page_size
        yield from _merged_ranges((run.paddr // ps, -(-run.end // ps)) for run in self._runs)

    def known_zero_frames(self, pfns: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_] | None:
        """Frames whose bytes all lie in holes of a sparse input file.

        None when the input has no holes (the common /proc/vmcore case).
        """
        extents = self._file.data_extents()
        if extents is None or pfns.size == 0:
            return None
        data_starts, data_ends = extents
        ps = self.page_size
        paddr = pfns.astype(np.int64) * ps
        if self._data_paddr.size == 0:
            return np.zeros(pfns.size, dtype=np.bool_)
        run = np.maximum(np.searchsorted(self._data_paddr, paddr, side="right") - 1, 0)
        whole = (paddr >= self._data_paddr[run]) & (paddr + ps <= self._data_end[run])
        offset = self._data_file_offset[run] + (paddr - self._data_paddr[run])
        # the first data extent ending after the page start must begin after its end
        nxt = np.searchsorted(data_ends, offset, side="right")
        clear_of_data = np.ones(pfns.size, dtype=np.bool_)
        inside = nxt < data_starts.size
        clear_of_data[inside] = data_starts[nxt[inside]] >= offset[inside] + ps
        result: npt.NDArray[np.bool_] = whole & clear_of_data
        return result

    def release(self, paddr: int, size: int) -> None:
        offsets = [(e.file_offset, e.file_offset + e.size)
                   for e in self.extents(paddr, size) if e.kind is ExtentKind.DATA]
        if offsets:
            lo = min(o[0] for o in offsets)
            hi = max(o[1] for o in offsets)
            # fault-around maps up to 64 KiB of cached neighbours beyond the reads
            self._file.drop_range(lo - _FAULT_AROUND, hi - lo + 2 * _FAULT_AROUND)

    def release_all(self) -> None:
        self._file.drop_all()


# (start, end, owner's program-header index, file offset minus paddr)
_Owned = tuple[int, int, int, int]


def _resolve_loads(
    loads: Iterable[LoadSegment], file_size: int
) -> tuple[list[Extent], list[LostRange]]:
    """Disjoint DATA and ZERO extents of the PT_LOADs, in paddr order (gaps are
    ABSENT), and the ranges the headers claim are stored that the file cannot supply.

    A stored byte comes from the first segment in program-header order whose
    [p_paddr, p_paddr+p_filesz) covers it (makedumpfile paddr_to_offset).
    Memory only p_memsz covers is ZERO. The bytes of p_filesz a segment does
    not hold (``missing``: past the end of the file, or file bytes an earlier
    segment holds, ElfCore.parse) are lost where no segment stores them.
    O(n log n) in segments, never in pages.
    """
    segs = [s for s in loads if s.memsz > 0]
    stored = first_owner([(s.paddr, s.paddr + s.filesz, s.index, s.file_offset - s.paddr)
                          for s in segs if s.filesz > 0])
    runs: list[Extent] = []
    for a, b, _, d in stored:
        _append_run(runs, Extent(a, b - a, ExtentKind.DATA, a + d))
    data = _union((a, b) for a, b, _, _ in stored)
    for a, b in _subtract(_union((s.paddr, s.paddr + s.memsz) for s in segs), data):
        runs.append(Extent(a, b - a, ExtentKind.ZERO))
    runs.sort(key=lambda r: r.paddr)
    claimed = first_owner([(s.paddr, s.paddr + s.filesz + s.missing, s.index,
                             s.file_offset - s.paddr) for s in segs if s.filesz + s.missing])
    lost = [LostRange(a, b, a + d, a + d >= file_size)
            for a, b, _, d in _subtract_owned(claimed, data)]
    return runs, lost


def first_owner(items: list[_Owned]) -> list[_Owned]:
    """Disjoint pieces of the union of (start, end, owner index, payload) ``items``,
    each given to the lowest owner index that covers it, in start order."""
    items = sorted(items)
    bounds = sorted({x for a, b, _, _ in items for x in (a, b)})
    active: list[tuple[int, int, int]] = []  # (owner index, end, delta), a heap
    out: list[_Owned] = []
    nxt = 0
    for at, stop in itertools.pairwise(bounds):
        while nxt < len(items) and items[nxt][0] <= at:
            _, end, index, delta = items[nxt]
            heapq.heappush(active, (index, end, delta))
            nxt += 1
        while active and active[0][1] <= at:
            heapq.heappop(active)
        if active:
            index, _, delta = active[0]
            if out and out[-1][1] == at and out[-1][2] == index and out[-1][3] == delta:
                out[-1] = (out[-1][0], stop, index, delta)
            else:
                out.append((at, stop, index, delta))
    return out


def _union(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(s for s in spans if s[0] < s[1]):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _subtract(spans: list[tuple[int, int]], holes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted disjoint ``spans`` minus sorted disjoint ``holes``."""
    return [(a, b) for a, b, _, _ in _subtract_owned([(a, b, 0, 0) for a, b in spans], holes)]


def _subtract_owned(items: list[_Owned], holes: list[tuple[int, int]]) -> list[_Owned]:
    out: list[_Owned] = []
    j = 0
    for a, b, index, delta in items:
        cur = a
        while j < len(holes) and holes[j][1] <= cur:
            j += 1
        k = j
        while cur < b:
            if k >= len(holes) or holes[k][0] >= b:
                out.append((cur, b, index, delta))
                break
            if holes[k][0] > cur:
                out.append((cur, holes[k][0], index, delta))
            cur = max(cur, holes[k][1])
            k += 1
    return out


def _append_run(runs: list[Extent], ext: Extent) -> None:
    last = runs[-1] if runs else None
    if (last is not None and last.end == ext.paddr and last.kind is ext.kind
            and (ext.kind is ExtentKind.ZERO or last.file_offset + last.size == ext.file_offset)):
        runs[-1] = Extent(last.paddr, last.size + ext.size, ext.kind, last.file_offset)
    else:
        runs.append(ext)
