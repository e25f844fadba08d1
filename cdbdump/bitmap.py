"""Page-frame bitmaps in makedumpfile's layout: bit for pfn N is byte N>>3, bit N&7.

reference: makedumpfile is_on / set_bitmap_buffer (makedumpfile.h). On little
endian this equals the kernel's unsigned-long bitmaps, so kernel bitmaps can
be combined byte-wise.

A bitmap lives in anonymous memory, or (:meth:`Bitmap.in_file`) in a shared
mapping of its final place in the output file: then every bulk operation walks
it in windows of :data:`WINDOW_BYTES` (:meth:`Bitmap.windows`, the one seam
for "iterate the pfn space in windows") and drops the window's pages from the
mapping after it, so the process holds a window, not the bitmap (32 MiB per TiB
of RAM), whatever the machine size. The pages stay in the page cache, which
writes them back and reclaims them like any written file data (makedumpfile's
cyclic mode keeps a window in memory and writes it out; here the kernel does
the writing, and the bits are read back from the file, not computed twice).

Outputs that have no place for the bitmaps (a -F stream, an ELF file, a --split
set) get them in a scratch file (:meth:`Bitmap.scratch`): unlinked, 0600, in the
output's directory or $TMPDIR, mapped and walked the same way.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = ("WINDOW_BYTES", "Bitmap")

U8 = npt.NDArray[np.uint8]
WINDOW_BYTES = 1 << 17  # bitmap bytes per window: 1 Mi pfns (4 GiB of RAM), 1 MiB unpacked


class Bitmap:
    """A packed, LSB-first bitmap over [0, nr_bits) pfns."""

    __slots__ = ("_map", "bits", "home", "nr_bits")  # an in-file one is unmapped when freed

    def __init__(self, nr_bits: int, bits: U8 | None = None) -> None:
        self.nr_bits = nr_bits
        nbytes = (nr_bits + 7) // 8
        if bits is None:
            bits = np.zeros(nbytes, dtype=np.uint8)
        elif bits.shape != (nbytes,) or bits.dtype != np.uint8:
            raise ValueError(f"bitmap of {nr_bits} bits needs {nbytes} uint8, got {bits.shape}")
        self.bits = bits
        self.home: tuple[int, int] | None = None  # (fd, file_offset) of an in-file bitmap
        self._map: mmap.mmap | None = None

    @classmethod
    def in_file(cls, fd: int, file_offset: int, nr_bits: int) -> Bitmap:
        """A bitmap stored at ``file_offset`` of the open file ``fd`` (read/write).

        The bytes must be allocated already (posix_fallocate): a store into a
        hole that the file system cannot fill would be a SIGBUS, not an error.
        """
        nbytes = (nr_bits + 7) // 8
        skew = file_offset % mmap.ALLOCATIONGRANULARITY
        mapping = mmap.mmap(fd, max(1, skew + nbytes), flags=mmap.MAP_SHARED,
                            prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=file_offset - skew)
        bitmap = cls(nr_bits, np.frombuffer(mapping, dtype=np.uint8, count=nbytes, offset=skew))
        bitmap.home = (fd, file_offset)
        bitmap._map = mapping
        return bitmap

    @classmethod
    def scratch(cls, nr_bits: int, count: int, directory: Path | None = None) -> list[Bitmap]:
        """``count`` empty bitmaps in an unlinked scratch file (0600) in ``directory``
        ($TMPDIR when None), each page aligned; its blocks are allocated up front.

        Raises OSError when the file cannot be made or allocated (the caller keeps
        the bitmaps in memory then). The mappings keep the file; it goes with them.
        """
        import tempfile  # only for bitmaps past the in-memory limit: 3 ms of start-up

        nbytes = -(-((nr_bits + 7) // 8) // mmap.ALLOCATIONGRANULARITY) * mmap.ALLOCATIONGRANULARITY
        with tempfile.TemporaryFile(dir=directory) as file:  # O_TMPFILE where it can
            fd = file.fileno()
            os.fchmod(fd, 0o600)
            os.posix_fallocate(fd, 0, max(1, count * nbytes))
            bitmaps = [cls.in_file(fd, i * nbytes, nr_bits) for i in range(count)]
        for bitmap in bitmaps:
            bitmap.home = None  # the fd is closed (mmap holds its own): never an output's
        return bitmaps

    def release(self) -> None:
        """Drop an in-file bitmap's pages from this process (they stay in the page
        cache, written back by the kernel); nothing for a bitmap in memory."""
        if self._map is not None:
            self._map.madvise(mmap.MADV_DONTNEED)

    def windows(self, first_byte: int = 0, end_byte: int | None = None,
                step: int = WINDOW_BYTES) -> Iterator[tuple[int, int]]:
        """[lo, hi) byte ranges of ``step`` bytes over [first_byte, end_byte); the
        pages of an in-file bitmap are released after each."""
        end_byte = self.bits.size if end_byte is None else min(end_byte, self.bits.size)
        for lo in range(first_byte, end_byte, step):
            yield lo, min(end_byte, lo + step)
            self.release()

    def copy(self) -> Bitmap:
        return Bitmap(self.nr_bits, self.bits.copy())

    def assign(self, other: Bitmap) -> None:
        """self = other, window by window."""
        self._check_size(other)
        for lo, hi in self.windows():
            self.bits[lo:hi] = other.bits[lo:hi]
            other.release()

    def intersect(self, other: Bitmap) -> None:
        """self &= other, window by window."""
        self._check_size(other)
        for lo, hi in self.windows():
            self.bits[lo:hi] &= other.bits[lo:hi]
            other.release()

    def union(self, other: Bitmap) -> None:
        """self |= other, window by window."""
        self._check_size(other)
        for lo, hi in self.windows():
            self.bits[lo:hi] |= other.bits[lo:hi]
            other.release()

    def subtract(self, other: Bitmap) -> None:
        """self &= ~other, window by window."""
        self._check_size(other)
        for lo, hi in self.windows():
            self.bits[lo:hi] &= ~other.bits[lo:hi]
            other.release()

    def _check_size(self, other: Bitmap) -> None:
        if other.nr_bits != self.nr_bits:
            raise ValueError("bitmaps of different sizes")

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
            for lo, hi in self.windows(first_full, last_full):
                self.bits[lo:hi] = 0xFF if value else 0
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
            return self._popcount(0, self.bits.size)
        first_byte, last_byte = (start + 7) >> 3, end >> 3
        if first_byte >= last_byte:
            return int(self.get_bools(start, end).sum())
        # whole bytes by popcount, the partial bytes at both ends bit by bit
        middle = self._popcount(first_byte, last_byte)
        return (middle + int(self.get_bools(start, first_byte * 8).sum())
                + int(self.get_bools(last_byte * 8, end).sum()))

    def _popcount(self, first_byte: int, end_byte: int) -> int:
        return sum(int(np.bitwise_count(self.bits[lo:hi]).sum(dtype=np.int64))
                   for lo, hi in self.windows(first_byte, end_byte))

    def iter_set_pfns(self, window: int = 1 << 20) -> Iterator[npt.NDArray[np.int64]]:
        """Yield the set pfns in ascending order, a bounded window at a time."""
        for start in range(0, self.nr_bits, window):
            bools = self.get_bools(start, start + window)
            self.release()
            idx = np.flatnonzero(bools).astype(np.int64, copy=False)
            if idx.size:
                idx += start
                yield idx

    def iter_runs(self, window: int = 1 << 20) -> Iterator[tuple[int, int]]:
        """[start, end) of every run of set bits, ascending."""
        open_start: list[int] = []  # a run still open at the end of the last window
        for lo in range(0, self.nr_bits, window):
            bools = self.get_bools(lo, min(self.nr_bits, lo + window)).astype(np.int8)
            self.release()
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
