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

from dataclasses import dataclass

import numpy as np

from cdbdump.bitmap import Bitmap
from cdbdump.errors import NotInDumpError
from cdbdump.formats.crash_dump_bitmap import (
    CRASH_DUMP_BITMAP_INFO,
    CURRENT_BITMAP_INFO_VERSION,
    CrashDumpBitmapInfo,
)
from cdbdump.formats.x86_64 import START_KERNEL_MAP
from cdbdump.memory.physical import PhysicalMemory, all_data, view_run
from cdbdump.mm.counts import PageCounts
from cdbdump.mm.levels import DumpLevel
from cdbdump.vmcore.vmcoreinfo import VmcoreInfo

__all__ = ("KernelBitmap", "KernelBitmapRefused", "apply_kernel_bitmap", "probe_kernel_bitmap")

SYMBOL_NAME = "crash_dump_bitmap_info"
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
    for off in range(0, nbytes, window_bytes):
        n = min(window_bytes, nbytes - off)
        view = view_run(phys, kernel.info.bitmap + off, n)
        window = (
            np.frombuffer(view, dtype=np.uint8)
            if view is not None
            else np.frombuffer(phys.read(kernel.info.bitmap + off, n), dtype=np.uint8)
        )
        np.bitwise_and(bitmap2.bits[off : off + n], window, out=bitmap2.bits[off : off + n])
    tail_bits = bitmap2.nr_bits & 7
    if tail_bits:
        bitmap2.bits[-1] &= (1 << tail_bits) - 1
