"""Page-frame bitmaps in makedumpfile's layout: bit for pfn N is byte N>>3, bit N&7.

reference: makedumpfile is_on / set_bitmap_buffer (makedumpfile.h). On little
endian this equals the kernel's unsigned-long bitmaps, so kernel bitmaps can
be combined byte-wise.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

__all__ = ("Bitmap",)

U8 = npt.NDArray[np.uint8]


class Bitmap:
    """A packed, LSB-first bitmap over [0, nr_bits) pfns."""

    __slots__ = ("bits", "nr_bits")

    def __init__(self, nr_bits: int, bits: U8 | None = None) -> None:
        self.nr_bits = nr_bits
        nbytes = (nr_bits + 7) // 8
        if bits is None:
            bits = np.zeros(nbytes, dtype=np.uint8)
        elif bits.shape != (nbytes,) or bits.dtype != np.uint8:
            raise ValueError(f"bitmap of {nr_bits} bits needs {nbytes} uint8, got {bits.shape}")
        self.bits = bits

    def copy(self) -> Bitmap:
        return Bitmap(self.nr_bits, self.bits.copy())

    # -- ranges -------------------------------------------------------------------

    def set_range(self, start: int, end: int) -> None:
        self._fill(start, end, True)

    def clear_range(self, start: int, end: int) -> None:
        self._fill(start, end, False)

    def _fill(self, start: int, end: int, value: bool) -> None:
        start = max(0, start)
        end = min(end, self.nr_bits)
        if start >= end:
            return
        first_full = (start + 7) // 8
        last_full = end // 8
        if first_full < last_full:
            self.bits[first_full:last_full] = 0xFF if value else 0
            head = range(start, first_full * 8)
            tail = range(last_full * 8, end)
        else:
            head = range(start, end)
            tail = range(0)
        for pfn in (*head, *tail):  # at most 14 bits
            mask = 1 << (pfn & 7)
            if value:
                self.bits[pfn >> 3] |= mask
            else:
                self.bits[pfn >> 3] &= ~mask & 0xFF

    # -- bulk access over windows ----------------------------------------------------

    def get_bools(self, start: int, end: int) -> npt.NDArray[np.bool_]:
        """Bits [start, end) as booleans (start need not be byte aligned)."""
        end = min(end, self.nr_bits)
        if start >= end:
            return np.zeros(0, dtype=np.bool_)
        b0 = start >> 3
        b1 = (end + 7) >> 3
        unpacked = np.unpackbits(self.bits[b0:b1], bitorder="little").view(np.bool_)
        lo = start - b0 * 8
        return unpacked[lo : lo + (end - start)]

    def clear_where(self, start: int, mask: npt.NDArray[np.bool_]) -> None:
        """Clear bit start+i wherever mask[i] is true."""
        if not mask.any():
            return
        end = min(start + mask.size, self.nr_bits)
        mask = mask[: end - start]
        keep = self.get_bools(start, end) & ~mask
        self.put_bools(start, keep)

    def put_bools(self, start: int, values: npt.NDArray[np.bool_]) -> None:
        """Overwrite bits [start, start + len(values))."""
        end = min(start + values.size, self.nr_bits)
        if start >= end:
            return
        values = values[: end - start]
        b0 = start >> 3
        b1 = (end + 7) >> 3
        unpacked = np.unpackbits(self.bits[b0:b1], bitorder="little").view(np.bool_)
        lo = start - b0 * 8
        unpacked[lo : lo + values.size] = values
        self.bits[b0:b1] = np.packbits(unpacked, bitorder="little")

    def count(self, start: int = 0, end: int | None = None) -> int:
        end = self.nr_bits if end is None else min(end, self.nr_bits)
        if start == 0 and end == self.nr_bits:
            # bits past nr_bits are kept zero, so a byte popcount is exact
            return int(np.bitwise_count(self.bits).sum(dtype=np.int64))
        first_byte, last_byte = (start + 7) >> 3, end >> 3
        if first_byte >= last_byte:
            return int(self.get_bools(start, end).sum())
        # whole bytes by popcount, the partial bytes at both ends bit by bit
        middle = int(np.bitwise_count(self.bits[first_byte:last_byte]).sum(dtype=np.int64))
        return (middle + int(self.get_bools(start, first_byte * 8).sum())
                + int(self.get_bools(last_byte * 8, end).sum()))

    def iter_set_pfns(self, window: int = 1 << 20) -> Iterator[npt.NDArray[np.int64]]:
        """Yield the set pfns in ascending order, a bounded window at a time."""
        for start in range(0, self.nr_bits, window):
            bools = self.get_bools(start, start + window)
            idx = np.flatnonzero(bools).astype(np.int64, copy=False)
            if idx.size:
                idx += start
                yield idx

    def iter_runs(self, window: int = 1 << 20) -> Iterator[tuple[int, int]]:
        """[start, end) of every run of set bits, ascending."""
        open_start: list[int] = []  # a run still open at the end of the last window
        for lo in range(0, self.nr_bits, window):
            bools = self.get_bools(lo, min(self.nr_bits, lo + window)).astype(np.int8)
            edges = np.diff(bools, prepend=np.int8(1 if open_start else 0))
            starts = open_start + (np.flatnonzero(edges == 1) + lo).tolist()
            ends = (np.flatnonzero(edges == -1) + lo).tolist()
            yield from zip(starts, ends, strict=False)
            open_start = starts[len(ends):]
        if open_start:
            yield open_start[0], self.nr_bits

    def __and__(self, other: Bitmap) -> Bitmap:
        if other.nr_bits != self.nr_bits:
            raise ValueError("bitmaps of different sizes")
        return Bitmap(self.nr_bits, self.bits & other.bits)
