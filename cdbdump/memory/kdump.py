"""kdump-compressed dumps as physical memory: one file, or the files of a --split set.

Dumpable pages whose data was written are DATA, decompressed on demand
through a small page cache (reference: makedumpfile readpage_kdump_compressed;
libkdumpfile diskdump.c diskdump_read_page); excluded, lost and absent pages
are ABSENT. A split set (makedumpfile --split) is several files with the
same bitmaps, each holding the page descriptors of its [start_pfn, end_pfn).
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Iterator, Sequence

import numpy as np
import numpy.typing as npt

from cdbdump.errors import CorruptDumpError
from cdbdump.memory.physical import Extent, ExtentKind, read_extents
from cdbdump.vmcore.kdumpfile import KdumpFile

__all__ = ("KdumpMemory",)

_CACHE_PAGES = 256  # decompressed pages kept (1 MiB of 4 KiB pages)
_WINDOW_PFNS = 1 << 18


class KdumpMemory:
    """The physical memory a kdump-compressed dump (or split set) holds."""

    def __init__(self, parts: Sequence[KdumpFile]) -> None:
        if not parts:
            raise ValueError("no dump files")
        self.parts = sorted(parts, key=lambda p: p.start_pfn)
        first = self.parts[0]
        for part in self.parts[1:]:
            if (part.max_mapnr, part.page_size) != (first.max_mapnr, first.page_size):
                raise CorruptDumpError(f"{part.file.path}: not of the same split set as "
                                       f"{first.file.path} (max_mapnr or block size differ)")
        for prev, part in zip(self.parts, self.parts[1:], strict=False):
            if part.start_pfn != prev.end_pfn:
                raise CorruptDumpError(
                    f"split set has a gap or overlap: {prev.file.path} ends at pfn "
                    f"{prev.end_pfn:#x}, {part.file.path} starts at {part.start_pfn:#x}")
        if first.start_pfn != 0 or self.parts[-1].end_pfn != first.max_mapnr:
            raise CorruptDumpError(
                f"split set covers pfns [{first.start_pfn:#x}, {self.parts[-1].end_pfn:#x}), "
                f"not [0, {first.max_mapnr:#x}): a file of the set is missing")
        self.page_size = first.page_size
        self.max_mapnr = first.max_mapnr
        self._shift = self.page_size.bit_length() - 1
        self._starts = [p.start_pfn for p in self.parts]
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._zero_offsets: dict[KdumpFile, int | None] = {}

    @property
    def header_file(self) -> KdumpFile:
        return self.parts[0]

    @property
    def end_paddr(self) -> int:
        return self.max_mapnr << self._shift

    def part_of(self, pfn: int) -> KdumpFile:
        return self.parts[max(0, bisect.bisect_right(self._starts, pfn) - 1)]

    def extents(self, paddr: int, size: int) -> Iterator[Extent]:
        """DATA where a page is dumpable and its data was written, else ABSENT."""
        end = paddr + size
        cur = paddr
        kind = ExtentKind.ABSENT
        for first, stored in self._stored_windows(paddr >> self._shift, -(-end >> self._shift)):
            change = np.flatnonzero(np.diff(stored)) + 1
            for i in (0, *change.tolist()):
                new = ExtentKind.DATA if stored[i] else ExtentKind.ABSENT
                at = max(paddr, (first + i) << self._shift)
                if new is not kind and at > cur:
                    yield Extent(cur, at - cur, kind)
                    cur = at
                kind = new
        if cur < end:
            yield Extent(cur, end - cur, kind)

    def stored_pfns(self, first: int, last: int) -> npt.NDArray[np.bool_]:
        """For pfns [first, last): dumpable and its data written (not lost)."""
        stored = np.zeros(max(0, last - first), dtype=np.bool_)
        for part in self.parts:
            lo, hi = max(first, part.start_pfn), min(last, part.end_pfn, self.max_mapnr)
            if lo < hi:
                stored[lo - first : hi - first] = part.stored_bools(lo, hi)
        return stored

    def _stored_windows(
        self, first: int, last: int
    ) -> Iterator[tuple[int, npt.NDArray[np.bool_]]]:
        for lo in range(first, last, _WINDOW_PFNS):
            stored = self.stored_pfns(lo, min(last, lo + _WINDOW_PFNS))
            if last - first > _WINDOW_PFNS:  # RSS: a long walk maps the whole page_desc table
                self.release(0, 0)
            yield lo, stored

    def data(self, extent: Extent) -> memoryview:
        first = extent.paddr >> self._shift
        last = (extent.end - 1) >> self._shift
        lo = extent.paddr - (first << self._shift)
        if first == last:
            return memoryview(self.read_page(first))[lo : lo + extent.size]
        out = np.empty((last + 1 - first) << self._shift, dtype=np.uint8)
        self.pages_into(np.arange(first, last + 1, dtype=np.int64), out)
        return out.data[lo : lo + extent.size]

    def pages_into(self, pfns: npt.NDArray[np.int64], out: npt.NDArray[np.uint8]) -> None:
        """Decode the pages of stored, ascending ``pfns`` into ``out``, a page each.

        The bulk read (a whole window at once; see KdumpFile.pages_into) the
        kdump writer asks for; NotInDumpError for a pfn not stored, the file's
        own errors for a bad page.
        """
        ps = self.page_size
        if len(self.parts) == 1:
            self.parts[0].pages_into(pfns, out)
            return
        cuts = np.searchsorted(pfns, self._starts[1:]).tolist()
        for part, lo, hi in zip(self.parts, [0, *cuts], [*cuts, int(pfns.size)], strict=True):
            if lo < hi:
                part.pages_into(pfns[lo:hi], out[lo * ps : hi * ps])

    def read_page(self, pfn: int) -> bytes:
        """One decompressed page; NotInDumpError if excluded or lost."""
        page = self._cache.get(pfn)
        if page is None:
            page = self.part_of(pfn).read_page(pfn)
            self._cache[pfn] = page
            if len(self._cache) > _CACHE_PAGES:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(pfn)
        return page

    def read(self, paddr: int, size: int) -> bytes:
        return read_extents(self, paddr, size)

    def present_pfn_ranges(self) -> Iterator[tuple[int, int]]:
        """Runs of the 1st bitmap (frames present in the dumped machine)."""
        return self.header_file.bitmap1.iter_runs()

    def known_zero_frames(self, pfns: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_] | None:
        """Frames stored as the dump's shared zero page (dump level bit 1): no decoding.

        reference: makedumpfile write_kdump_pages_and_bitmap_cyclic writes one raw
        zero page first in the data area and points every zero page at it.
        """
        zero: npt.NDArray[np.bool_] | None = None
        if not pfns.size:
            return None
        for part in self.parts:
            offset = self._zero_page_offset(part)
            if offset is None:
                continue
            if part.start_pfn <= int(pfns[0]) and int(pfns[-1]) < part.end_pfn:
                lo, hi = 0, int(pfns.size)  # all in this file (always: a single file)
            else:
                lo, hi = np.searchsorted(pfns, (part.start_pfn, part.end_pfn)).tolist()
            if lo == hi:
                continue
            mine = pfns[lo:hi]  # ascending
            bits = part.bitmap2.bits
            stored = ((bits[mine >> 3] >> (mine & 7).astype(np.uint8)) & 1).view(np.bool_)
            if stored.all():
                descs = part.page_descs(mine)
                hit = (descs["offset"] == offset) & (descs["flags"] == 0)
            else:
                descs = part.page_descs(mine[stored])
                hit = np.zeros(mine.size, dtype=np.bool_)
                hit[stored] = (descs["offset"] == offset) & (descs["flags"] == 0)
            if hit.any():
                if zero is None:
                    zero = np.zeros(pfns.size, dtype=np.bool_)
                zero[lo:hi] = hit
        return zero

    def _zero_page_offset(self, part: KdumpFile) -> int | None:
        if part not in self._zero_offsets:
            offset: int | None = None
            if part.dump_level is not None and part.dump_level & 1:
                at = part.offset_data
                if at + self.page_size <= part.file.size and not any(
                        part.file.view(at, self.page_size, "shared zero page")):
                    offset = at
            self._zero_offsets[part] = offset
        return self._zero_offsets[part]

    def release(self, paddr: int, size: int) -> None:
        for part in self.parts:
            part.file.drop_all()

    def release_all(self) -> None:
        self.release(0, 0)
        self._cache.clear()
