"""Physical memory as the PT_LOAD segments of a vmcore present it.

Overlapping PT_LOADs (the kernel-text LOAD that kexec adds over the direct-map
LOAD on x86_64) are resolved once into disjoint pieces, so every lookup is a
bisect. Bytes in ``p_memsz`` beyond ``p_filesz`` read as zero (ELF with holes);
addresses outside every segment raise NotInDumpError.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cdbdump.errors import NotInDumpError
from cdbdump.fileio import MappedFile
from cdbdump.vmcore.elfcore import LoadSegment

__all__ = ("PhysicalMemory", "Piece")


@dataclass(frozen=True, slots=True)
class Piece:
    """A disjoint physical range [paddr, mem_end); file-backed up to file_end."""

    paddr: int
    mem_end: int  # p_paddr + p_memsz (clipped to the piece)
    file_end: int  # paddr up to which the bytes are in the file
    file_offset: int  # file offset of paddr (meaningful when file_end > paddr)


class PhysicalMemory:
    """Reads physical addresses from a mapped vmcore file."""

    def __init__(self, file: MappedFile, loads: Iterable[LoadSegment], page_size: int) -> None:
        self.file = file
        self.page_size = page_size
        self.pieces = _disjoint_pieces(loads)
        self._starts = [p.paddr for p in self.pieces]
        self._piece_paddr = np.array(self._starts, dtype=np.int64)
        self._piece_file_end = np.array([p.file_end for p in self.pieces], dtype=np.int64)
        self._piece_file_offset = np.array([p.file_offset for p in self.pieces], dtype=np.int64)

    # -- lookups ------------------------------------------------------------------

    def _piece_at(self, paddr: int) -> Piece | None:
        i = bisect.bisect_right(self._starts, paddr) - 1
        if i >= 0 and paddr < self.pieces[i].mem_end:
            return self.pieces[i]
        return None

    def read(self, paddr: int, size: int) -> bytes:
        """Read ``size`` bytes at ``paddr``, across segments if needed."""
        piece = self._piece_at(paddr)
        if piece is not None and paddr + size <= piece.file_end:
            off = piece.file_offset + (paddr - piece.paddr)
            return bytes(self.file.view(off, size, "PT_LOAD data"))
        out = bytearray()
        cur = paddr
        end = paddr + size
        while cur < end:
            piece = self._piece_at(cur)
            if piece is None:
                raise NotInDumpError(cur, end - cur)
            stop = min(end, piece.mem_end)
            if cur < piece.file_end:
                n = min(stop, piece.file_end) - cur
                off = piece.file_offset + (cur - piece.paddr)
                out += self.file.view(off, n, "PT_LOAD data")
                cur += n
            if cur < stop:
                out += bytes(stop - cur)  # p_filesz < p_memsz: zero-filled tail
                cur = stop
        return bytes(out)

    def read_frames(self, pfn: int, count: int) -> bytes:
        """Whole page frames; bytes outside every segment read as zero.

        For writers: a frame the 1st bitmap holds may be only partly covered (a
        PT_LOAD ending mid-page), and its missing tail is dumped as zeros.
        """
        paddr = pfn * self.page_size
        size = count * self.page_size
        view = self.view_run(paddr, size)
        if view is not None:
            return bytes(view)
        out = bytearray(size)
        i = max(0, bisect.bisect_right(self._starts, paddr) - 1)
        end = paddr + size
        while i < len(self.pieces) and self.pieces[i].paddr < end:
            piece = self.pieces[i]
            lo = max(paddr, piece.paddr)
            hi = min(end, piece.file_end)
            if lo < hi:
                off = piece.file_offset + (lo - piece.paddr)
                out[lo - paddr : hi - paddr] = self.file.view(off, hi - lo, "PT_LOAD data")
            i += 1
        return bytes(out)

    def in_file_holes(self, pfns: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_] | None:
        """True for frames whose bytes all lie in holes of a sparse input file.

        Such frames read as zero without touching the file. None when the input
        has no holes (the common /proc/vmcore case), so callers skip the test.
        """
        extents = self.file.data_extents()
        if extents is None or pfns.size == 0:
            return None
        data_starts, data_ends = extents
        paddr = pfns.astype(np.int64) * self.page_size
        piece = np.searchsorted(self._piece_paddr, paddr, side="right") - 1
        piece = np.maximum(piece, 0)
        whole = (paddr >= self._piece_paddr[piece]) & (
            paddr + self.page_size <= self._piece_file_end[piece]
        )
        offset = self._piece_file_offset[piece] + (paddr - self._piece_paddr[piece])
        # the first data extent ending after the page start must begin after its end
        nxt = np.searchsorted(data_ends, offset, side="right")
        clear_of_data = np.ones(pfns.size, dtype=np.bool_)
        inside = nxt < data_starts.size
        clear_of_data[inside] = data_starts[nxt[inside]] >= offset[inside] + self.page_size
        result: npt.NDArray[np.bool_] = whole & clear_of_data
        return result

    def file_span(self, first_pfn: int, last_pfn: int) -> tuple[int, int]:
        """[lo, hi) of the file offsets that frames first_pfn..last_pfn can occupy."""
        paddr_lo = first_pfn * self.page_size
        paddr_hi = (last_pfn + 1) * self.page_size
        lo = hi = -1
        i = max(0, bisect.bisect_right(self._starts, paddr_lo) - 1)
        while i < len(self.pieces) and self.pieces[i].paddr < paddr_hi:
            piece = self.pieces[i]
            i += 1
            start = max(paddr_lo, piece.paddr)
            end = min(paddr_hi, piece.file_end)
            if start >= end:
                continue
            off_lo = piece.file_offset + (start - piece.paddr)
            off_hi = piece.file_offset + (end - piece.paddr)
            lo = off_lo if lo < 0 else min(lo, off_lo)
            hi = max(hi, off_hi)
        return (lo, hi) if lo >= 0 else (0, 0)

    def read_u64(self, paddr: int) -> int:
        return int.from_bytes(self.read(paddr, 8), "little")

    def view_run(self, paddr: int, size: int) -> memoryview | None:
        """Zero-copy view of [paddr, paddr+size) if it lies in one file-backed piece."""
        piece = self._piece_at(paddr)
        if piece is None or paddr + size > piece.file_end:
            return None
        return self.file.view(piece.file_offset + (paddr - piece.paddr), size, "PT_LOAD data")

    # -- page-frame views (the 1st bitmap and the no-data pages) --------------------

    def present_pfn_ranges(self) -> Iterator[tuple[int, int]]:
        """[start_pfn, end_pfn) of every page with any byte in a segment's p_memsz.

        A segment ending mid-page counts its last page (makedumpfile >= 1.7.6
        dumps it with the missing tail zero-filled); ranges may touch or overlap.
        """
        shift = self.page_size.bit_length() - 1
        for p in self.pieces:
            yield p.paddr >> shift, (p.mem_end + self.page_size - 1) >> shift

    def filebacked_pfn_ranges(self) -> Iterator[tuple[int, int]]:
        """[start_pfn, end_pfn) of pages with at least one byte in the file.

        Pages wholly beyond p_filesz hold no data (makedumpfile exclude_nodata_pages).
        """
        shift = self.page_size.bit_length() - 1
        for p in self.pieces:
            if p.file_end > p.paddr:
                yield p.paddr >> shift, (p.file_end + self.page_size - 1) >> shift

    @property
    def end_paddr(self) -> int:
        return max((p.mem_end for p in self.pieces), default=0)


def _disjoint_pieces(loads: Iterable[LoadSegment]) -> list[Piece]:
    """Cut the PT_LOADs into disjoint pieces by a sweep in paddr order.

    Where segments overlap (kexec's kernel-text LOAD inside a direct-map LOAD)
    both hold the same memory, so the first one in paddr order keeps the range.
    """
    pieces: list[Piece] = []
    covered_end = -1
    for seg in sorted(loads, key=lambda s: (s.paddr, s.index)):
        seg_end = seg.paddr + seg.memsz
        lo = max(seg.paddr, covered_end)
        if lo < seg_end:
            file_end = min(max(seg.paddr + seg.filesz, lo), seg_end)
            pieces.append(Piece(lo, seg_end, file_end, seg.file_offset + (lo - seg.paddr)))
        covered_end = max(covered_end, seg_end)
    return pieces
