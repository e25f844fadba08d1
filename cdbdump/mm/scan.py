"""The legacy mem_map scan: clear excluded page frames from the 2nd bitmap.

reference: makedumpfile create_2nd_bitmap → exclude_unnecessary_pages →
__exclude_unnecessary_pages, and exclude_free_page → _exclude_free_page →
reset_bitmap_of_free_pages for kernels without the buddy page type. The
mem_map is read in bounded windows (64 Ki struct pages = 4 MiB by default),
zero-copy when a window is one file-backed physical run, and classified with
numpy (mm.classify); memory use stays a few windows whatever the machine size.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from cdbdump.bitmap import Bitmap
from cdbdump.errors import AddressError, CorruptDumpError, MissingVmcoreInfoKey
from cdbdump.memory.kernel import KernelMemory
from cdbdump.memory.physical import data_pfn_ranges, view_run
from cdbdump.mm.classify import ChunkClassifier, Columns, Decision
from cdbdump.mm.counts import PageCounts
from cdbdump.mm.levels import DumpLevel
from cdbdump.mm.memmodel import MemMap, MemMapRun, locate_mem_map
from cdbdump.mm.pageflags import PageDialect
from cdbdump.report import ProgressCallback
from cdbdump.vmcore.vmcoreinfo import VmcoreInfo

__all__ = (
    "DEFAULT_WINDOW",
    "MemoryUsage",
    "ScanResult",
    "exclude_unnecessary_pages",
    "memory_usage",
    "scan_needed",
)

PROGRESS_STEP = "Excluding unnecessary pages"  # makedumpfile's step name
DEFAULT_WINDOW = 1 << 16  # struct pages per window: 4 MiB of 64-byte struct page
_MAX_PROBLEM_RANGES = 8
_NR_BUFFERS = 3  # windows of struct pages in flight: read, being decided, decided
_MMAP_PROBE = 4 << 20  # see _scan_mem_map


@dataclass(slots=True)
class ScanResult:
    """Outcome of the mem_map scan."""

    counts: PageCounts
    problems: list[str]
    ran: bool  # False when makedumpfile would not scan at all for this level
    mem_map: MemMap | None = None
    dialect: PageDialect | None = None
    nr_struct_pages: int = 0  # struct pages covered by the scanned mem_map runs
    nr_unreadable: int = 0  # struct pages of dumped frames that could not be read
    free_pages_method: str = ""  # "buddy page type", "free lists" or ""


class MemoryUsage(NamedTuple):
    """makedumpfile --mem-usage table (print_mem_usage), in pages."""

    total_pages: int  # max_mapnr
    original_pages: int  # max_mapnr minus memory holes
    zero: int
    non_pri_cache: int
    pri_cache: int
    user: int
    free: int
    hwpoison: int
    offline: int

    @property
    def kern_data(self) -> int:
        return self.original_pages - (self.zero + self.non_pri_cache + self.pri_cache
                                      + self.user + self.free + self.hwpoison + self.offline)

    def rows(self) -> list[tuple[str, int, bool, str]]:
        """(TYPE, PAGES, EXCLUDABLE, DESCRIPTION) rows in makedumpfile's order."""
        return [
            ("ZERO", self.zero, True, "Pages filled with zero"),
            ("NON_PRI_CACHE", self.non_pri_cache, True, "Cache pages without private flag"),
            ("PRI_CACHE", self.pri_cache, True, "Cache pages with private flag"),
            ("USER", self.user, True, "User process pages"),
            ("FREE", self.free, True, "Free pages"),
            ("KERN_DATA", self.kern_data, False, "Dumpable kernel data"),
        ]


def scan_needed(level: DumpLevel, dialect: PageDialect) -> bool:
    """Whether makedumpfile runs the mem_map scan at all (create_2nd_bitmap).

    The scan runs for -d 2, 4 or 8, whenever NUMBER(PG_hwpoison) is known
    (then hwpoison and offline pages go even at -d 0), and for -d 16 when free
    pages are recognised by the buddy page type.
    """
    return bool(
        level & (DumpLevel.CACHE | DumpLevel.CACHE_PRI | DumpLevel.USER)
        or dialect.pg_hwpoison is not None
        or (level & DumpLevel.FREE and dialect.has_buddy_method)
    )


def exclude_unnecessary_pages(
    kernel: KernelMemory,
    info: VmcoreInfo,
    level: DumpLevel,
    bitmap2: Bitmap,
    progress: ProgressCallback | None = None,
    *,
    mem_map: MemMap | None = None,
    window: int = DEFAULT_WINDOW,
) -> ScanResult:
    """Clear from ``bitmap2`` every pfn makedumpfile excludes at ``level`` (not zero pages).

    ``bitmap2`` covers [0, max_mapnr) and holds the pages still dumpable;
    excluded pfns are cleared in place and counted as makedumpfile counts
    them (every bit cleared, whether or not it was set). Pass the ``mem_map``
    the pipeline located with locate_mem_map (whose max_mapnr sized the
    bitmaps); without it, it is located here with bitmap2.nr_bits.

    Degradations never raise: a window of struct pages that cannot be read
    leaves its page frames dumpable and is reported in ``problems``.

    Raises:
        MissingVmcoreInfoKey / BadVmcoreInfoValue: VMCOREINFO cannot describe
            struct page, mem_section or a page flag the level needs.
        CorruptDumpError: no valid mem_section array.
    """
    dialect = PageDialect.from_vmcoreinfo(info)
    result = ScanResult(counts=PageCounts(), problems=list(dialect.problems), ran=False,
                        dialect=dialect)
    scan_mem_map = scan_needed(level, dialect)
    walk_free_lists = bool(level & DumpLevel.FREE) and not dialect.has_buddy_method
    if not scan_mem_map and not walk_free_lists:
        return result
    if mem_map is None:
        mem_map = locate_mem_map(kernel, info, bitmap2.nr_bits)
    result.mem_map = mem_map
    result.problems.extend(mem_map.problems)
    result.ran = True
    max_mapnr = min(mem_map.max_mapnr, bitmap2.nr_bits)

    if scan_mem_map:
        _scan_mem_map(kernel, dialect, level, bitmap2, mem_map, max_mapnr, window,
                      progress, result)
    if walk_free_lists:
        result.free_pages_method = "free lists"
        nr_free = _exclude_free_lists(kernel, info, dialect, bitmap2, mem_map, max_mapnr,
                                      result.problems)
        result.counts.free += nr_free
    elif level & DumpLevel.FREE:
        result.free_pages_method = "buddy page type"
    return result


# -- the mem_map scan ---------------------------------------------------------------------


class _Window(NamedTuple):
    start_pfn: int
    stop_pfn: int
    vaddr: int  # of the struct page of start_pfn


class _Decided(NamedTuple):
    window: _Window
    decision: Decision
    lost: npt.NDArray[np.bool_] | None  # dumped frames whose struct page was unreadable


# a window's struct pages, the byte ranges that could not be read, their Columns
_Read = tuple[npt.NDArray[np.uint8], list[tuple[int, int]], Columns]


def _plan_windows(runs: list[MemMapRun], max_mapnr: int, window: int,
                  size: int) -> list[_Window]:
    out = []
    for run in runs:
        end_pfn = min(run.end_pfn, max_mapnr)
        start = run.start_pfn
        while start < end_pfn:
            stop = min(end_pfn, (start // window + 1) * window)
            out.append(_Window(start, stop, run.mem_map_vaddr + (start - run.start_pfn) * size))
            start = stop
    return out


def _scan_mem_map(
    kernel: KernelMemory,
    dialect: PageDialect,
    level: DumpLevel,
    bitmap2: Bitmap,
    mem_map: MemMap,
    max_mapnr: int,
    window: int,
    progress: ProgressCallback | None,
    result: ScanResult,
) -> None:
    """Read and classify the mem_map window by window, reading ahead on a thread.

    One reader thread reads the windows in order into a ring of _NR_BUFFERS
    buffers and pulls out the words the rows test (pread and numpy release the
    GIL; the kernel's read-ahead sees one sequential reader, and only that
    thread touches the input and its page-table cache); this thread decides
    and applies the windows in pfn order (skip-ahead, counts, the bitmap), so
    the result is the one of a sequential scan whatever the timing.
    """
    classifier = ChunkClassifier(
        dialect, level, max_mapnr=max_mapnr, pages_per_section=mem_map.pages_per_section
    )
    size = dialect.layout.size
    # windows stay aligned to makedumpfile's 512-entry struct page buffer
    window = max(512, window - window % 512)
    in_segs = _PfnRanges(data_pfn_ranges(kernel.phys, first_byte=True))
    runs = [r for r in mem_map.runs if r.start_pfn < max_mapnr]
    windows = _plan_windows(runs, max_mapnr, window, size)
    total = sum(w.stop_pfn - w.start_pfn for w in windows)
    # glibc serves allocations above M_MMAP_THRESHOLD (128 KiB at start) with mmap and
    # gives them back on free, so every window-sized numpy temporary would be page
    # faults (~30x the sys time); freeing one mmapped block raises the threshold to
    # its size (mallopt(3), dynamic mmap threshold), and the heap keeps them.
    np.empty(max(window * size, _MMAP_PROBE), dtype=np.uint8)  # allocated, freed at once
    buffers = [np.empty(window * size, dtype=np.uint8)
               for _ in range(min(_NR_BUFFERS, len(windows)))]

    def read(k: int) -> _Read:
        w = windows[k]
        raw, missing = kernel.gather(
            w.vaddr, buffers[k % len(buffers)][: (w.stop_pfn - w.start_pfn) * size])
        kernel.phys.release_all()  # RSS: one window, not the whole mem_map
        # the words the rows test, while the window is still in this core's cache
        return raw, missing, classifier.columns(raw)

    def decide(k: int, reading: Future[_Read]) -> _Decided:
        w = windows[k]
        raw, missing, columns = reading.result()
        n = w.stop_pfn - w.start_pfn
        readable = _readable(n, size, missing)
        candidate = in_segs.mask(w.start_pfn, w.stop_pfn)
        lost = None
        if missing:
            lost = candidate & ~readable
            candidate &= readable
        return _Decided(w, classifier.decide(w.start_pfn, raw, candidate, readable, columns),
                        lost)

    done = 0
    unreadable_ranges: list[tuple[int, int]] = []

    def apply(decided: _Decided) -> None:
        nonlocal done
        w, lost = decided.window, decided.lost
        if lost is not None:
            nr_lost = int(lost.sum())
            if nr_lost:
                result.nr_unreadable += nr_lost
                if len(unreadable_ranges) < _MAX_PROBLEM_RANGES:
                    unreadable_ranges.append((w.start_pfn + int(np.argmax(lost)), w.stop_pfn))
        outcome = classifier.apply(w.start_pfn, decided.decision)
        _clear(bitmap2, w.start_pfn, outcome.cleared)
        for lo, hi in outcome.beyond:
            bitmap2.clear_range(lo, hi)
        bitmap2.release()  # RSS: not the whole bitmap, when it lives in the output file
        done += w.stop_pfn - w.start_pfn
        if progress is not None:
            progress(PROGRESS_STEP, done, total)

    with ThreadPoolExecutor(1, thread_name_prefix="cdbdump-mem_map-read") as reader:
        reads: deque[Future[_Read]] = deque()
        for k in range(min(len(buffers) - 1, len(windows))):
            reads.append(reader.submit(read, k))
        for k in range(len(windows)):
            if k + len(buffers) - 1 < len(windows):  # the buffer of window k - 1 is free
                reads.append(reader.submit(read, k + len(buffers) - 1))
            apply(decide(k, reads.popleft()))
    result.nr_struct_pages = total
    result.counts.add(classifier.counts)
    result.problems.extend(classifier.problems)
    if result.nr_unreadable:
        where = ", ".join(f"[{lo:#x}, {hi:#x})" for lo, hi in unreadable_ranges)
        result.problems.append(
            f"struct pages of {result.nr_unreadable} dumped page frames could not be read "
            f"(mem_map not mapped or not in the dump; pfns in {where}"
            f"{' ...' if len(unreadable_ranges) >= _MAX_PROBLEM_RANGES else ''}): "
            "those pages are kept, not classified"
        )


def _readable(n: int, size: int, missing: list[tuple[int, int]]) -> npt.NDArray[np.bool_]:
    readable = np.ones(n, dtype=np.bool_)
    for offset, length in missing:
        readable[offset // size : (offset + length - 1) // size + 1] = False
    return readable


def _clear(bitmap: Bitmap, start: int, cleared: npt.NDArray[np.bool_]) -> None:
    """bitmap[start + i] = 0 where cleared[i]; start is a multiple of 8."""
    if not cleared.any():
        return
    end = min(start + cleared.size, bitmap.nr_bits)
    if start % 8:
        bitmap.clear_where(start, cleared[: end - start])
        return
    packed = np.packbits(cleared[: end - start], bitorder="little")
    b0 = start >> 3
    bitmap.bits[b0 : b0 + packed.size] &= ~packed


class _PfnRanges:
    """is_in_segs for pfns, from disjoint ascending [start, end) pfn ranges.

    reference: makedumpfile is_in_segs → paddr_to_offset (the frame's first
    byte is stored in the dump).
    """

    def __init__(self, ranges: Iterable[tuple[int, int]]) -> None:
        self._ranges = list(ranges)
        self._starts = [lo for lo, _ in self._ranges]

    def mask(self, start: int, stop: int) -> npt.NDArray[np.bool_]:
        out = np.zeros(stop - start, dtype=np.bool_)
        i = max(0, bisect.bisect_right(self._starts, start) - 1)
        while i < len(self._ranges) and self._ranges[i][0] < stop:
            lo, hi = self._ranges[i]
            if hi > start:
                out[max(lo, start) - start : min(hi, stop) - start] = True
            i += 1
        return out


# -- free pages from the buddy free lists (makedumpfile exclude_free_page) -------------


class _FreeListKeys(NamedTuple):
    node_zones: int
    nr_zones: int
    zone_size: int
    spanned_pages: int
    free_area: int
    free_area_size: int
    free_list: int
    list_head_size: int
    next: int
    prev: int
    lru: int
    nr_orders: int
    nr_types: int
    pgdats: list[int]  # struct pglist_data addresses, filled after the keys


def _free_list_keys(kernel: KernelMemory, info: VmcoreInfo) -> _FreeListKeys:
    def need(value: int | None, key: str) -> int:
        if value is None:
            raise MissingVmcoreInfoKey(key, "excluding free pages from the free lists")
        return value

    keys = _FreeListKeys(
        node_zones=need(info.get_offset("pglist_data.node_zones"),
                        "OFFSET(pglist_data.node_zones)"),
        nr_zones=need(info.get_offset("pglist_data.nr_zones"), "OFFSET(pglist_data.nr_zones)"),
        zone_size=need(info.get_size("zone"), "SIZE(zone)"),
        spanned_pages=need(info.get_offset("zone.spanned_pages"), "OFFSET(zone.spanned_pages)"),
        free_area=need(info.get_offset("zone.free_area"), "OFFSET(zone.free_area)"),
        free_area_size=need(info.get_size("free_area"), "SIZE(free_area)"),
        free_list=need(info.get_offset("free_area.free_list"), "OFFSET(free_area.free_list)"),
        list_head_size=info.get_size("list_head") or 16,
        next=need(info.get_offset("list_head.next"), "OFFSET(list_head.next)"),
        prev=need(info.get_offset("list_head.prev"), "OFFSET(list_head.prev)"),
        lru=need(info.get_offset("page.lru"), "OFFSET(page.lru)"),
        nr_orders=need(info.get_length("zone.free_area"), "LENGTH(zone.free_area)"),
        nr_types=info.get_length("free_area.free_list") or 1,
        pgdats=[],
    )
    # reference: makedumpfile get_numnodes / next_online_node / next_online_pgdat
    nodes = [0]
    online = info.get_symbol("node_online_map")
    nodemask_size = info.get_size("nodemask_t")
    if online is not None and nodemask_size:
        raw = np.frombuffer(kernel.read(online, nodemask_size), dtype=np.uint8)
        nodes = np.flatnonzero(np.unpackbits(raw, bitorder="little")).tolist() or [0]
    node_data = info.get_symbol("node_data")
    contig = info.get_symbol("contig_page_data")
    for node in nodes:
        if node_data is not None:
            length = info.get_length("node_data")
            if length is not None and node >= length:
                continue
            keys.pgdats.append(kernel.read_u64(node_data + 8 * node))
        elif contig is not None and node == 0:
            keys.pgdats.append(contig)
        else:
            raise MissingVmcoreInfoKey("SYMBOL(node_data)", "excluding free pages")
    return keys


def _exclude_free_lists(
    kernel: KernelMemory,
    info: VmcoreInfo,
    dialect: PageDialect,
    bitmap2: Bitmap,
    mem_map: MemMap,
    max_mapnr: int,
    problems: list[str],
) -> int:
    """Clear the pages of every buddy free list; return how many bits were cleared.

    reference: makedumpfile _exclude_free_page / reset_bitmap_of_free_pages.
    makedumpfile gives up on a broken list ("The free list is broken."); here
    the entries validated so far stay excluded, the rest of that list is kept,
    and the list is named in ``problems``.
    """
    try:
        keys = _free_list_keys(kernel, info)
    except AddressError as exc:
        problems.append(f"free pages not excluded: the node data cannot be read ({exc})")
        return 0
    run_starts = [r.mem_map_vaddr for r in mem_map.runs]
    size = dialect.layout.size
    # [pages cleared, entries left]: a list can never hold more entries than pages
    # exist; kept in a list so that a walk that stops half way still counts
    walk = [0, max_mapnr + 1]
    for pgdat in keys.pgdats:
        try:
            nr_zones = int.from_bytes(kernel.read(pgdat + keys.nr_zones, 4), "little")
        except AddressError as exc:
            problems.append(f"free pages of node data {pgdat:#x} not excluded: {exc}")
            continue
        for zone_nr in range(min(nr_zones, 16)):
            zone = pgdat + keys.node_zones + zone_nr * keys.zone_size
            try:
                if kernel.read_u64(zone + keys.spanned_pages) == 0:
                    continue
            except AddressError as exc:
                problems.append(f"free pages of zone {zone:#x} not excluded: {exc}")
                continue
            for order in reversed(range(keys.nr_orders)):
                for mtype in range(keys.nr_types):
                    head = (zone + keys.free_area + keys.free_area_size * order
                            + keys.free_list + keys.list_head_size * mtype)
                    try:
                        _clear_free_list(kernel, keys, head, order, bitmap2, mem_map,
                                         run_starts, size, max_mapnr, walk)
                    except (AddressError, CorruptDumpError) as exc:
                        problems.append(
                            f"free list of zone {zone:#x} order {order} type {mtype} not "
                            f"(fully) excluded: {exc}"
                        )
    return walk[0]


def _clear_free_list(
    kernel: KernelMemory,
    keys: _FreeListKeys,
    head: int,
    order: int,
    bitmap2: Bitmap,
    mem_map: MemMap,
    run_starts: list[int],
    size: int,
    max_mapnr: int,
    walk: list[int],
) -> None:
    previous = head
    curr = kernel.read_u64(head + keys.next)
    while curr != head:
        walk[1] -= 1
        if walk[1] < 0:
            raise CorruptDumpError(f"free list at {head:#x} does not end (a loop)",
                                   field="zone.free_area")
        pfn = _page_to_pfn(mem_map, run_starts, size, curr - keys.lru)
        if kernel.read_u64(curr + keys.prev) != previous:
            raise CorruptDumpError(f"the free list is broken at {curr:#x} (list at {head:#x})",
                                   field="zone.free_area")
        lo, hi = pfn, min(pfn + (1 << order), max_mapnr)
        if lo < hi:
            bitmap2.clear_range(lo, hi)
            walk[0] += hi - lo
        previous = curr
        curr = kernel.read_u64(curr + keys.next)


def _page_to_pfn(mem_map: MemMap, run_starts: list[int], size: int, page: int) -> int:
    """pfn of a struct page address (reference: makedumpfile page_to_pfn)."""
    i = bisect.bisect_right(run_starts, page) - 1
    if i >= 0:
        run = mem_map.runs[i]
        index = (page - run.mem_map_vaddr) // size
        if index < run.nr_pages:
            return run.start_pfn + index
    raise CorruptDumpError(f"free list entry {page:#x} is not a struct page in mem_map",
                           field="zone.free_area")


# -- --mem-usage ---------------------------------------------------------------------------


def memory_usage(
    kernel: KernelMemory,
    info: VmcoreInfo,
    bitmap1: Bitmap,
    progress: ProgressCallback | None = None,
    *,
    mem_map: MemMap | None = None,
) -> MemoryUsage:
    """Per-class page counts as makedumpfile --mem-usage prints them.

    reference: makedumpfile show_mem_usage / print_mem_usage: dump level 31;
    after the mem_map scan the remaining dumpable pages are tested for zero
    content (exclude_zero_pages_cyclic). ``bitmap1`` is the 1st bitmap
    (pages present in the dump), sized by max_mapnr.
    """
    bitmap2 = bitmap1.copy()
    _exclude_nodata(kernel, bitmap2)
    scan = exclude_unnecessary_pages(kernel, info, DumpLevel(31), bitmap2, progress,
                                     mem_map=mem_map)
    zero = _exclude_zero_pages(kernel, bitmap2)
    c = scan.counts
    return MemoryUsage(
        total_pages=bitmap1.nr_bits,
        original_pages=bitmap1.count(),
        zero=zero,
        non_pri_cache=c.cache,
        pri_cache=c.cache_private,
        user=c.user,
        free=c.free,
        hwpoison=c.hwpoison,
        offline=c.offline,
    )


def _exclude_nodata(kernel: KernelMemory, bitmap: Bitmap) -> None:
    # reference: makedumpfile exclude_nodata_pages: pages wholly beyond p_filesz
    keep = Bitmap(bitmap.nr_bits)
    for lo, hi in data_pfn_ranges(kernel.phys, first_byte=False):
        keep.set_range(lo, hi)
    bitmap.bits &= keep.bits


def _exclude_zero_pages(kernel: KernelMemory, bitmap: Bitmap, chunk: int = 4096) -> int:
    """Clear and count dumpable pages whose content is all zero."""
    phys = kernel.phys
    page_size = phys.page_size
    words = page_size // 8
    nr_zero = 0
    for pfns in bitmap.iter_set_pfns(chunk):
        zero = np.zeros(pfns.size, dtype=np.bool_)
        # group consecutive pfns into runs and read each run once
        breaks = np.flatnonzero(np.diff(pfns) != 1) + 1
        for group in np.split(np.arange(pfns.size), breaks):
            first = int(pfns[group[0]])
            count = group.size
            paddr = first * page_size
            view = view_run(phys, paddr, count * page_size)
            try:
                data = (np.frombuffer(view, dtype="<u8") if view is not None
                        else np.frombuffer(phys.read(paddr, count * page_size), dtype="<u8"))
            except AddressError:
                continue  # not readable as a whole: leave these pages alone
            zero[group] = ~data.reshape(count, words).any(axis=1)
        if zero.any():
            lo = int(pfns[0])
            mask = np.zeros(int(pfns[-1]) - lo + 1, dtype=np.bool_)
            mask[pfns[zero] - lo] = True
            bitmap.clear_where(lo, mask)
            nr_zero += int(zero.sum())
    return nr_zero
