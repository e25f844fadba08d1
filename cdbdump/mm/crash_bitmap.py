"""The -q path: the kernel-prepared exclusion bitmap of the crash dump bitmap RFC.

reference: the RFC's makedumpfile patch (create_dump_bitmap, create_2nd_bitmap):
read struct crash_dump_bitmap_info at SYMBOL(crash_dump_bitmap_info), check
its version, and AND the kernel bitmap with the 1st bitmap. We check more than
the RFC did (the bitmap must lie in the dump and cover max_mapnr) and work in
bounded windows instead of one 4 KiB page at a time through temporary files.

Every check that fails yields a one-line reason; the caller falls back to the
legacy mem_map scan with it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cdbdump.bitmap import Bitmap
from cdbdump.errors import NotInDumpError
from cdbdump.formats.crash_dump_bitmap import (
    CRASH_DUMP_BITMAP_INFO,
    CURRENT_BITMAP_INFO_VERSION,
    CrashDumpBitmapInfo,
)
from cdbdump.formats.x86_64 import START_KERNEL_MAP
from cdbdump.memory.physical import ElfMemory, PhysicalMemory, all_data, fill, view_run
from cdbdump.mm.counts import PageCounts
from cdbdump.mm.levels import DumpLevel
from cdbdump.vmcore.vmcoreinfo import VmcoreInfo

__all__ = (
    "KernelBitmap",
    "KernelBitmapRefused",
    "apply_kernel_bitmap",
    "probe_kernel_bitmap",
    "protected_pfn_ranges",
    "verify_kernel_bitmap",
)

SYMBOL_NAME = "crash_dump_bitmap_info"
# Cleared bits no counter accounts for: offline pages have no counter field in the
# RFC struct. More than this many (or 1/64 of max_mapnr) means the bitmap is not
# the one the counters describe.
_MIN_UNACCOUNTED_SLACK = 64
_SLICE_BYTES = 256 << 10  # kernel-bitmap bytes checked against the protected ranges at a time
_WINDOW_BYTES = 4 << 20  # 32 Mi pfns (128 GiB of RAM) per window


@dataclass(frozen=True, slots=True)
class KernelBitmap:
    """A crash_dump_bitmap_info that passed every check."""

    info_vaddr: int
    info_paddr: int
    info: CrashDumpBitmapInfo

    @property
    def counts(self) -> PageCounts:
        # The struct's counters feed the report (zero pages are counted while writing).
        return PageCounts(
            cache=self.info.cache_pages,
            cache_private=self.info.cache_private_pages,
            user=self.info.user_pages,
            free=self.info.free_pages,
            hwpoison=self.info.hwpoison_pages,
        )


@dataclass(frozen=True, slots=True)
class KernelBitmapRefused:
    """Why the kernel bitmap cannot be used (one line, for the fallback message)."""

    reason: str


def probe_kernel_bitmap(
    phys: PhysicalMemory,
    vmcoreinfo: VmcoreInfo | None,
    phys_base: int | None,
    max_mapnr: int,
    level: DumpLevel,
) -> KernelBitmap | KernelBitmapRefused:
    """Locate and validate the kernel's crash dump bitmap."""
    if vmcoreinfo is None:
        return KernelBitmapRefused("the vmcore has no VMCOREINFO note")
    vaddr = vmcoreinfo.get_symbol(SYMBOL_NAME)
    if vaddr is None:
        return KernelBitmapRefused(f"VMCOREINFO has no SYMBOL({SYMBOL_NAME})")
    if vaddr < START_KERNEL_MAP:
        return KernelBitmapRefused(
            f"SYMBOL({SYMBOL_NAME})={vaddr:#x} is not a kernel-image address "
            f"(below __START_KERNEL_map {START_KERNEL_MAP:#x})"
        )
    if phys_base is None:
        return KernelBitmapRefused("NUMBER(phys_base) is missing, cannot place the kernel image")
    # The symbol is a kernel-image address with KASLR already applied, so its
    # physical address is vaddr - __START_KERNEL_map + phys_base (makedumpfile
    # __pa / get_phys_base_x86_64; phys_base is signed and often negative).
    paddr = vaddr - START_KERNEL_MAP + phys_base
    try:
        raw = phys.read(paddr, CRASH_DUMP_BITMAP_INFO.size)
    except NotInDumpError:
        return KernelBitmapRefused(
            f"crash_dump_bitmap_info at {vaddr:#x} (paddr {paddr:#x}) is not in the dump"
        )
    info = CrashDumpBitmapInfo._make(CRASH_DUMP_BITMAP_INFO.unpack(raw))
    where = f"crash_dump_bitmap_info at {vaddr:#x}"
    if info.version != CURRENT_BITMAP_INFO_VERSION:
        return KernelBitmapRefused(
            f"{where} has version {info.version}, expected {CURRENT_BITMAP_INFO_VERSION}"
        )
    if info.bitmap == 0 or info.bitmap_size == 0:
        return KernelBitmapRefused(
            f"{where} is empty (bitmap={info.bitmap:#x}, bitmap_size={info.bitmap_size})"
        )
    if info.bitmap % phys.page_size:
        # the RFC allocates the bitmap in whole pages (alloc_bootmem_pages)
        return KernelBitmapRefused(
            f"{where}: bitmap paddr {info.bitmap:#x} is not page-aligned"
        )
    needed = (max_mapnr + 7) // 8
    if info.bitmap_size < needed:
        return KernelBitmapRefused(
            f"{where}: bitmap_size {info.bitmap_size} bytes covers "
            f"{info.bitmap_size * 8} frames, max_mapnr is {max_mapnr} (needs {needed} bytes)"
        )
    if not all_data(phys, info.bitmap, needed):
        return KernelBitmapRefused(
            f"{where}: bitmap at paddr {info.bitmap:#x} (+{needed:#x}) is not in the dump"
        )
    counters = (
        ("cache_pages", info.cache_pages, DumpLevel.CACHE | DumpLevel.CACHE_PRI),
        ("cache_private_pages", info.cache_private_pages, DumpLevel.CACHE_PRI),
        ("user_pages", info.user_pages, DumpLevel.USER),
        ("free_pages", info.free_pages, DumpLevel.FREE),
        ("hwpoison_pages", info.hwpoison_pages, None),
    )
    for name, value, needs in counters:
        if value > max_mapnr:
            return KernelBitmapRefused(
                f"{where}: {name}={value} exceeds max_mapnr {max_mapnr} (implausible)"
            )
        # The kernel filtered with its own dump level; if it dropped a class this
        # run's -d keeps, using its bitmap would exclude more than asked.
        if needs is not None and value and not level & needs:
            return KernelBitmapRefused(
                f"{where}: the kernel excluded {value} {name.replace('_', ' ')} that "
                f"-d {int(level)} keeps"
            )
    return KernelBitmap(vaddr, paddr, info)


def apply_kernel_bitmap(
    phys: PhysicalMemory, kernel: KernelBitmap, bitmap2: Bitmap, *,
    window_bytes: int | None = None,
) -> None:
    """bitmap2 &= kernel bitmap, in bounded windows (bits past max_mapnr stay clear).

    ``window_bytes`` (default _WINDOW_BYTES) is for tests of the window loop.
    """
    window_bytes = window_bytes or _WINDOW_BYTES
    nbytes = bitmap2.bits.size
    buf = np.empty(min(window_bytes, nbytes), dtype=np.uint8)
    for off in range(0, nbytes, window_bytes):
        n = min(window_bytes, nbytes - off)
        window = _read_window(phys, kernel.info.bitmap + off, buf[:n])
        np.bitwise_and(bitmap2.bits[off : off + n], window, out=bitmap2.bits[off : off + n])
        bitmap2.release()
    tail_bits = bitmap2.nr_bits & 7
    if tail_bits:
        bitmap2.bits[-1] &= (1 << tail_bits) - 1


def protected_pfn_ranges(
    phys: PhysicalMemory,
    vmcoreinfo: VmcoreInfo,
    phys_base: int,
    kernel_bitmap: KernelBitmap,
    max_mapnr: int,
    mem_map_pages: Iterable[tuple[int, int]] = (),
    vmcoreinfo_note: tuple[int, int] | None = None,
) -> list[tuple[int, int, str]]:
    """[start_pfn, end_pfn) ranges the kernel bitmap must keep, with what they hold.

    What the dump itself proves to be kernel data: the pages of the kernel-image
    SYMBOLs in VMCOREINFO (text, data, the top-level page table), the struct and
    the bitmap themselves, the pages holding struct pages (``mem_map_pages``),
    and the VMCOREINFO note's own pages (``vmcoreinfo_note``: paddr, size).
    """
    shift = phys.page_size.bit_length() - 1
    ranges: list[tuple[int, int, str]] = []
    # the page of every kernel-image symbol VMCOREINFO names (_stext, init_uts_ns,
    # the top-level page table, ...): live data, never free. Not the span between
    # them: the freed __init sections lie there and a kernel may exclude them.
    for key, vaddr in _symbols(vmcoreinfo):
        paddr = vaddr - START_KERNEL_MAP + phys_base
        if vaddr >= START_KERNEL_MAP and paddr >= 0:
            ranges.append((paddr >> shift, (paddr >> shift) + 1, f"the kernel image ({key})"))
    info_pfn = kernel_bitmap.info_paddr >> shift
    ranges.append((info_pfn, info_pfn + 1, "crash_dump_bitmap_info itself"))
    needed = (max_mapnr + 7) // 8
    bm = kernel_bitmap.info.bitmap
    ranges.append((bm >> shift, ((bm + needed - 1) >> shift) + 1, "the bitmap itself"))
    ranges.extend((lo, hi, "mem_map (struct pages)") for lo, hi in mem_map_pages)
    if vmcoreinfo_note is not None:
        paddr, size = vmcoreinfo_note
        ranges.append((paddr >> shift, ((paddr + max(size, 1) - 1) >> shift) + 1,
                       "the VMCOREINFO note"))
    return [(max(0, lo), min(hi, max_mapnr), what) for lo, hi, what in ranges
            if lo < max_mapnr and hi > 0]


def _symbols(vmcoreinfo: VmcoreInfo) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for key, raw in vmcoreinfo.entries.items():
        if key.startswith("SYMBOL("):
            try:
                out.append((key, int(raw, 16)))
            except ValueError:
                continue
    return out


def verify_kernel_bitmap(
    phys: PhysicalMemory,
    kernel: KernelBitmap,
    max_mapnr: int,
    protected: Iterable[tuple[int, int, str]],
) -> KernelBitmapRefused | None:
    """Check the bitmap's content against what the dump proves; None when it passes.

    * every protected frame is kept (a bitmap shifted, complemented or cleared over
      the kernel would drop kernel data);
    * the frames it clears are those its counters count: not fewer, and not more
      than a small slack (offline pages are cleared with no counter; zero pages
      are not its job at all).
    """
    where = f"crash_dump_bitmap_info at {kernel.info_vaddr:#x}"
    base = kernel.info.bitmap
    ranges = sorted((lo, hi, what) for lo, hi, what in protected if lo < hi)
    merged = _merge([(lo, hi) for lo, hi, _ in ranges])
    lo_arr = np.array([lo for lo, _ in merged], dtype=np.int64)
    hi_arr = np.array([hi for _, hi in merged], dtype=np.int64)
    nbytes = (max_mapnr + 7) // 8
    nr_kept = 0
    buf = np.empty(min(_WINDOW_BYTES, nbytes), dtype=np.uint8)
    for off in range(0, nbytes, _WINDOW_BYTES):
        n = min(_WINDOW_BYTES, nbytes - off)
        window = _read_window(phys, base + off, buf[:n])
        if off + n == nbytes and max_mapnr & 7:  # bits past max_mapnr do not count
            window = window.copy()
            window[-1] &= (1 << (max_mapnr & 7)) - 1
        nr_kept += int(np.bitwise_count(window).sum())
        bad = _first_cleared(window, off * 8, lo_arr, hi_arr)
        if bad is not None:
            what = next(w for lo, hi, w in ranges if lo <= bad < hi)
            return KernelBitmapRefused(
                f"{where}: the bitmap excludes pfn {bad:#x}, part of {what}"
            )
    nr_cleared = max_mapnr - nr_kept
    counted = kernel.counts.total
    slack = max(_MIN_UNACCOUNTED_SLACK, max_mapnr // 64)
    if nr_cleared < counted or nr_cleared > counted + slack:
        return KernelBitmapRefused(
            f"{where}: the bitmap clears {nr_cleared} of {max_mapnr} frames but its "
            f"counters account for {counted}"
        )
    return None


def _read_window(
    phys: PhysicalMemory, paddr: int, buf: npt.NDArray[np.uint8]
) -> npt.NDArray[np.uint8]:
    """The kernel bitmap's bytes at ``paddr``: zero-copy when the container hands them
    out, else read into ``buf`` (reused: no window-sized allocation per window).
    probe_kernel_bitmap proved every byte is stored (all_data)."""
    if not isinstance(phys, ElfMemory):
        view = view_run(phys, paddr, buf.size)
        if view is not None:
            return np.frombuffer(view, dtype=np.uint8)
    if fill(phys, paddr, buf):
        raise NotInDumpError(paddr, buf.size)
    return buf


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(spans):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _first_cleared(
    window: npt.NDArray[np.uint8], pfn0: int, lo: npt.NDArray[np.int64], hi: npt.NDArray[np.int64]
) -> int | None:
    """The first pfn of the sorted disjoint [lo, hi) ranges whose bit is clear in
    ``window`` (the kernel bitmap from ``pfn0``, a multiple of 8), a slice at a time:
    whole bytes inside a range must be 0xff (a running count of the others), the
    partial first and last bytes must have the range's bits set."""
    for b0 in range(0, window.size, _SLICE_BYTES):
        part = window[b0 : b0 + _SLICE_BYTES]
        p0 = pfn0 + b0 * 8
        p1 = p0 + part.size * 8
        a = int(np.searchsorted(hi, p0, side="right"))
        b = int(np.searchsorted(lo, p1, side="left"))
        if a >= b:
            continue
        rlo = np.maximum(lo[a:b], p0) - p0
        rhi = np.minimum(hi[a:b], p1) - p0
        first_byte, last_byte = rlo >> 3, (rhi - 1) >> 3
        head = (0xFF << (rlo & 7)) & 0xFF
        tail = (1 << (((rhi - 1) & 7) + 1)) - 1
        head = np.where(first_byte == last_byte, head & tail, head)
        ok = (part[first_byte] & head) == head
        ok &= (first_byte == last_byte) | ((part[last_byte] & tail) == tail)
        not_full = np.concatenate(([0], np.cumsum(part != 0xFF, dtype=np.int64)))
        ok &= not_full[np.maximum(last_byte, first_byte + 1)] - not_full[first_byte + 1] == 0
        if not ok.all():
            k = int(np.argmin(ok))
            start, stop, byte = int(rlo[k]), int(rhi[k]), int(first_byte[k])
            bits = np.unpackbits(part[byte : int(last_byte[k]) + 1], bitorder="little")
            return p0 + start + int(np.argmin(bits[start - byte * 8 : stop - byte * 8]))
    return None


def mem_map_page_ranges(
    run_arrays: Callable[[int, int], tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64],
                                           npt.NDArray[np.int64]]],
    runs: Iterable[tuple[int, int, int]], struct_size: int, page_size: int,
) -> list[tuple[int, int]]:
    """pfn ranges of every page holding struct pages, merged.

    ``runs`` are (start_pfn, end_pfn, mem_map_vaddr); ``run_arrays(vstart, vend)``
    gives the mapped (vaddr, paddr, size) runs of a kernel virtual range as arrays
    (pages not provable from the dump are skipped). vmemmap is mapped by 2 MiB
    pages, whose frames are scattered: thousands of runs per TiB, so numpy.
    """
    spans = _merge([(vaddr, vaddr + (end - start) * struct_size)
                    for start, end, vaddr in runs if end > start])
    los: list[npt.NDArray[np.int64]] = []
    his: list[npt.NDArray[np.int64]] = []
    for vstart, vend in spans:
        _vaddr, paddr, size = run_arrays(vstart, vend)
        los.append(paddr // page_size)
        his.append(-(-(paddr + size) // page_size))
    if not los:
        return []
    lo, hi = np.concatenate(los), np.concatenate(his)
    order = np.lexsort((hi, lo))
    lo, hi = lo[order], hi[order]
    reach = np.maximum.accumulate(hi)  # the end of everything before, as _merge keeps it
    first = np.concatenate(([True], lo[1:] > reach[:-1]))
    starts = np.flatnonzero(first)
    ends = np.append(starts[1:], lo.size) - 1
    return list(zip(lo[starts].tolist(), reach[ends].tolist(), strict=True))
