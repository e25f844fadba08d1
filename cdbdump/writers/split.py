"""--split: pfn ranges of about equal dumpable pages; --reassemble: split files
back into one kdump-compressed file.

Every split file has the whole headers and both bitmaps, its own pfn range in
the sub header (split = 1, start_pfn_64, end_pfn_64), and the descriptors and
data of that range only, laid out as if the descriptor table held every
dumpable page (writers/kdump.py ``split_range``).

reference: makedumpfile prepare_splitblock_table, get_num_dumpable_cyclic_withsplit,
calculate_end_pfn_by_splitblock, setup_splitting; store_splitting_info,
check_splitting_info, reassemble_kdump_header, reassemble_kdump_pages.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cdbdump.bitmap import WINDOW_BYTES, Bitmap
from cdbdump.errors import CorruptDumpError, InputError
from cdbdump.fileio import MappedFile
from cdbdump.formats.kdump import (
    DISK_DUMP_HEADER,
    DISK_DUMP_HEADER_STATUS_OFFSET,
    DISKDUMP_SIGNATURE,
    DUMP_DH_COMPRESSED_INCOMPLETE,
    KDUMP_SIGNATURE,
    KDUMP_SUB_HEADER,
    PAGE_DESC_DTYPE,
    DiskDumpHeader,
    KdumpSubHeader,
)
from cdbdump.writers.sink import OutputFile

__all__ = (
    "DEFAULT_SPLITBLOCK_BYTES",
    "ReassembleResult",
    "balanced_splitblock_pages",
    "reassemble",
    "split_ranges",
    "splitblock_pages",
)

DEFAULT_SPLITBLOCK_BYTES = 1 << 30  # makedumpfile DEFAULT_SPLITBLOCK_SIZE
_MIN_BLOCKS_PER_FILE = 16
_DESC_CHUNK = 1 << 16  # descriptors handled at a time
_COPY_BYTES = 8 << 20
_DUMP_LEVEL_ZERO = 1


def splitblock_pages(page_size: int, splitblock_bytes: int | None) -> int:
    """Pages per split block: --splitblock-size, else makedumpfile's 1 GiB
    (check_splitblock_size, prepare_splitblock_table). Kept even where it puts a
    whole small machine into the first file: the split files are makedumpfile's
    byte for byte; --splitblock-size spreads them."""
    if splitblock_bytes is None:
        return DEFAULT_SPLITBLOCK_BYTES // page_size
    if splitblock_bytes <= 0 or splitblock_bytes % page_size:
        raise InputError(f"--splitblock-size {splitblock_bytes >> 10} KiB is not a positive "
                         f"multiple of the page size ({page_size} bytes)")
    return splitblock_bytes // page_size


def balanced_splitblock_pages(max_mapnr: int, page_size: int, nr_files: int) -> int:
    """Pages per block for pieces that only cdbdump reassembles (batch --shards): the
    1 GiB block halved (a power of two, at least 8 pages) until every file can get
    about 16 blocks, so a small machine still splits evenly."""
    pages = DEFAULT_SPLITBLOCK_BYTES // page_size
    while pages > 8 and -(-max_mapnr // pages) < _MIN_BLOCKS_PER_FILE * nr_files:
        pages //= 2
    return pages


def split_ranges(bitmap2: Bitmap, nr_files: int, block_pages: int) -> list[tuple[int, int]]:
    """[start_pfn, end_pfn) of each split file, together covering [0, max_mapnr).

    Each file but the last takes whole blocks until it holds at least
    num_dumpable / nr_files dumpable pages (calculate_end_pfn_by_splitblock).
    """
    max_mapnr = bitmap2.nr_bits
    nr_blocks = -(-max_mapnr // block_pages) if max_mapnr else 0
    counts = np.array([bitmap2.count(b * block_pages, min(max_mapnr, (b + 1) * block_pages))
                       for b in range(nr_blocks)], dtype=np.int64) if block_pages % 8 else (
        _block_counts(bitmap2, block_pages, nr_blocks))
    cum = np.cumsum(counts)
    needed = int(cum[-1]) // nr_files if nr_blocks else 0
    ranges: list[tuple[int, int]] = []
    end = 0
    block = 0
    for _ in range(nr_files - 1):
        start = end
        if start >= max_mapnr:
            end = max_mapnr
        elif needed > 0:
            base = int(cum[block - 1]) if block else 0
            block = min(nr_blocks, int(np.searchsorted(cum, base + needed, side="left")) + 1)
            end = min(block * block_pages, max_mapnr)
        ranges.append((start, end))
    ranges.append((end, max_mapnr))
    return ranges


def _block_counts(bitmap2: Bitmap, block_pages: int, nr_blocks: int) -> npt.NDArray[np.int64]:
    """Set bits per block, a window of whole blocks at a time (no bitmap-sized temporary)."""
    block_bytes = block_pages // 8
    counts: npt.NDArray[np.int64] = np.zeros(nr_blocks, dtype=np.int64)
    step = max(1, WINDOW_BYTES // block_bytes) * block_bytes
    for lo, hi in bitmap2.windows(step=step):
        per_block = np.add.reduceat(np.bitwise_count(bitmap2.bits[lo:hi]),
                                    np.arange(0, hi - lo, block_bytes), dtype=np.int64)
        counts[lo // block_bytes : lo // block_bytes + per_block.size] = per_block
    return counts


# -- reassembly ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Piece:
    file: MappedFile
    header_raw: bytes
    header: DiskDumpHeader
    sub: KdumpSubHeader
    start_pfn: int
    end_pfn: int


@dataclass(slots=True)
class ReassembleResult:
    nr_pages: int = 0  # descriptors written
    nr_lost: int = 0  # descriptors that were lost (offset 0) in an incomplete piece
    incomplete: bool = False
    file_size: int = 0


def _open_piece(file: MappedFile) -> _Piece:
    raw = bytes(file.view(0, DISK_DUMP_HEADER.size, "disk_dump_header"))
    header = DiskDumpHeader(*DISK_DUMP_HEADER.unpack(raw))
    if header.signature not in (KDUMP_SIGNATURE, DISKDUMP_SIGNATURE):
        raise InputError(f"{file.path}: not a kdump-compressed file "
                         f"(signature {header.signature!r})")
    bs = header.block_size
    if bs < 512 or bs & (bs - 1):
        raise CorruptDumpError(f"block_size {bs:#x} is not a power of two >= 0x200",
                               file_offset=428, field=f"{file.path}: disk_dump_header")
    sub = KdumpSubHeader(*KDUMP_SUB_HEADER.unpack(
        file.view(bs, KDUMP_SUB_HEADER.size, "kdump_sub_header")))
    if header.header_version < 2 or not sub.split:
        raise InputError(f"{file.path}: not one file of a --split set (sub header split = "
                         f"{sub.split if header.header_version >= 2 else 'absent'})")
    if header.header_version >= 6:
        start, end = sub.start_pfn_64, sub.end_pfn_64
    else:
        start, end = sub.start_pfn, sub.end_pfn
    return _Piece(file, raw, header, sub, start, end)


def _max_mapnr(piece: _Piece) -> int:
    return piece.sub.max_mapnr_64 if piece.header.header_version >= 6 else piece.header.max_mapnr


def reassemble(paths: Sequence[str | os.PathLike[str]], out: OutputFile) -> ReassembleResult:
    """Write the one kdump file that the split files ``paths`` were cut from."""
    files: list[MappedFile] = []
    try:
        files.extend(MappedFile(path) for path in paths)  # closed below even on failure
        pieces = sorted((_open_piece(f) for f in files), key=lambda p: p.start_pfn)
        return _reassemble(pieces, out)
    finally:
        for f in files:
            f.close()


def _status_free(raw: bytes) -> bytes:
    s = DISK_DUMP_HEADER_STATUS_OFFSET
    status = int.from_bytes(raw[s : s + 4], "little") & ~DUMP_DH_COMPRESSED_INCOMPLETE
    return raw[:s] + status.to_bytes(4, "little") + raw[s + 4 :]


def _reassemble(pieces: list[_Piece], out: OutputFile) -> ReassembleResult:
    first = pieces[0]
    for p in pieces[1:]:
        # store_splitting_info: all pieces come from one dump (status may differ
        # in the INCOMPLETE bit only)
        if _status_free(p.header_raw) != _status_free(first.header_raw):
            raise InputError(f"{p.file.path}: its disk_dump_header differs from "
                             f"{first.file.path}'s: not pieces of one dump")
    max_mapnr = _max_mapnr(first)
    # check_splitting_info: the ranges cover [0, max_mapnr) without gaps
    expected = 0
    for p in pieces:
        if p.start_pfn != expected:
            raise InputError(f"no split file holds pfns {expected:#x}-{p.start_pfn:#x}")
        expected = p.end_pfn
    if expected != max_mapnr:
        raise InputError(f"no split file holds pfns {expected:#x}-{max_mapnr:#x}")
    result = ReassembleResult()
    header = next((p for p in pieces
                   if p.header.status & DUMP_DH_COMPRESSED_INCOMPLETE), pieces[-1])
    result.incomplete = bool(header.header.status & DUMP_DH_COMPRESSED_INCOMPLETE)
    h = first.header
    bs = h.block_size
    sub = first.sub._replace(split=0, start_pfn=0, end_pfn=0, start_pfn_64=0, end_pfn_64=0,
                             offset_eraseinfo=0, size_eraseinfo=0)
    out.pwrite(header.header_raw, 0)
    out.pwrite(KDUMP_SUB_HEADER.pack(*sub), bs)
    if first.sub.size_note:
        out.pwrite(first.file.view(first.sub.offset_note, first.sub.size_note, "ELF notes"),
                   first.sub.offset_note)
    offset_bitmap = (1 + h.sub_hdr_size) * bs
    len_bitmap = h.bitmap_blocks * bs
    bitmaps = first.file.view(offset_bitmap, len_bitmap, "bitmaps")
    out.pwrite(bitmaps, offset_bitmap)
    nbytes = (max_mapnr + 7) // 8
    if nbytes > len_bitmap // 2:
        raise CorruptDumpError(f"bitmap_blocks {h.bitmap_blocks} too small for max_mapnr "
                               f"{max_mapnr:#x}", file_offset=436,
                               field=f"{first.file.path}: disk_dump_header")
    bits2 = np.frombuffer(bitmaps, dtype=np.uint8)[len_bitmap // 2 : len_bitmap // 2 + nbytes]
    bitmap2 = Bitmap(max_mapnr, bits2.copy())
    if max_mapnr % 8:  # bits past max_mapnr are not pages
        bitmap2.bits[-1] &= (1 << (max_mapnr % 8)) - 1
    num_dumpable = bitmap2.count()
    offset_descs = offset_bitmap + len_bitmap
    data_new = offset_descs + num_dumpable * PAGE_DESC_DTYPE.itemsize
    exclude_zero = bool(first.sub.dump_level & _DUMP_LEVEL_ZERO)
    offset_zero = data_new  # the shared zero page opens every file's data area
    if exclude_zero:
        out.pwrite(bytes(bs), data_new)
        data_new += bs
    index = 0
    for p in pieces:
        nr = bitmap2.count(p.start_pfn, p.end_pfn)
        for lo in range(0, nr, _DESC_CHUNK):
            k = min(_DESC_CHUNK, nr - lo)
            at = offset_descs + lo * PAGE_DESC_DTYPE.itemsize
            descs = np.frombuffer(p.file.view(at, k * PAGE_DESC_DTYPE.itemsize, "page_desc"),
                                  dtype=PAGE_DESC_DTYPE).copy()
            data_new = _move_pages(p, descs, at, data_new, offset_zero, exclude_zero, out,
                                   result)
            out.pwrite(descs, offset_descs + index * PAGE_DESC_DTYPE.itemsize)
            index += k
    result.nr_pages = index
    erase_at = data_new
    erase_size = 0
    for p in pieces:
        if p.sub.size_eraseinfo:
            out.pwrite(p.file.view(p.sub.offset_eraseinfo, p.sub.size_eraseinfo, "eraseinfo"),
                       erase_at + erase_size)
            erase_size += p.sub.size_eraseinfo
    if erase_size:
        sub = sub._replace(offset_eraseinfo=erase_at, size_eraseinfo=erase_size)
        out.pwrite(KDUMP_SUB_HEADER.pack(*sub), bs)
    result.file_size = out.size
    return result


def _move_pages(
    piece: _Piece,
    descs: npt.NDArray[np.void],
    descs_at: int,
    data_new: int,
    offset_zero: int,
    exclude_zero: bool,
    out: OutputFile,
    result: ReassembleResult,
) -> int:
    """Copy the data of ``descs`` into ``out`` from data_new on; rewrite their offsets."""
    bs = piece.header.block_size
    offsets = descs["offset"]
    sizes = descs["size"].astype(np.int64)
    lost = offsets == 0  # an incomplete piece: descriptor never written
    zero = (offsets == offset_zero) & exclude_zero & ~lost
    moved = ~(lost | zero)
    bad = moved & ((sizes > bs) | (offsets < 0) | (offsets + sizes > piece.file.size))
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        raise CorruptDumpError(
            f"page_desc {{offset {int(offsets[j]):#x}, size {int(sizes[j]):#x}}} points "
            f"outside the file ({piece.file.size:#x} bytes)",
            file_offset=descs_at + j * PAGE_DESC_DTYPE.itemsize,
            field=f"{piece.file.path}: page_desc")
    result.nr_lost += int(lost.sum())
    idx = np.flatnonzero(moved)
    if idx.size:
        src = offsets[idx]
        size = sizes[idx]
        new = data_new + np.cumsum(size) - size
        # runs of data that are contiguous in the piece go out in one copy
        breaks = np.flatnonzero(src[1:] != src[:-1] + size[:-1]) + 1
        starts = np.concatenate(([0], breaks)).tolist()
        ends = np.concatenate((breaks, [idx.size])).tolist()
        for a, b in zip(starts, ends, strict=True):
            lo = int(src[a])
            length = int(src[b - 1] + size[b - 1]) - lo
            dest = int(new[a])
            for c in range(0, length, _COPY_BYTES):
                n = min(_COPY_BYTES, length - c)
                out.pwrite(piece.file.view(lo + c, n, "page data"), dest + c)
            piece.file.drop_range(lo, length)
        offsets[idx] = new
        data_new += int(size.sum())
    descs["offset"][zero] = offset_zero
    return data_new
