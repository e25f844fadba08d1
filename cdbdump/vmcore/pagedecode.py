"""Stored pages of a kdump-compressed file, read and decoded a batch at a time.

The reader's bulk path (reference: makedumpfile readpage_kdump_compressed, one
page at a time there): the data of a batch of page descriptors is read with a
few preads (one per stretch of nearby data), then decoded by cdbdump._pagebatch
in one call with the GIL released (zstd too when it was built with libzstd); zstd
otherwise by python-zstandard's multi-frame call (C, GIL released too); page by
page through cdbdump.codecs.decompress_page where neither is there, and to name a
page that fails. The caller has validated the descriptors; a page that fails to
decode natively is reported by its index, and the caller names it
(:class:`DecodeFailed`).
"""

from __future__ import annotations

import functools
from types import ModuleType

import numpy as np
import numpy.typing as npt

from cdbdump.codecs import decompress_page
from cdbdump.errors import InputReadError
from cdbdump.fileio import FileView
from cdbdump.formats.kdump import (
    DUMP_DH_COMPRESSED_LZO,
    DUMP_DH_COMPRESSED_SNAPPY,
    DUMP_DH_COMPRESSED_ZLIB,
    DUMP_DH_COMPRESSED_ZSTD,
)

__all__ = ("DecodeFailed", "decode_pages", "native_flags", "read_stored")

# Stored data this close together is read in one pread (the bytes between are read
# and dropped): a refilter skips the excluded pages' data, a few KiB each.
GAP_BYTES = 1 << 15

_FLAG_OF_NAME = {"zlib": DUMP_DH_COMPRESSED_ZLIB, "lzo": DUMP_DH_COMPRESSED_LZO,
                 "snappy": DUMP_DH_COMPRESSED_SNAPPY, "zstd": DUMP_DH_COMPRESSED_ZSTD}


class DecodeFailed(Exception):  # an internal signal: never leaves the reader
    """Page ``index`` of the batch did not decode to exactly one page."""

    def __init__(self, index: int) -> None:
        super().__init__(index)
        self.index = index


@functools.cache
def _native() -> ModuleType | None:
    try:
        from cdbdump import _pagebatch
    except ImportError:
        return None
    if not hasattr(_pagebatch, "decompress_pages"):
        return None  # an extension built from an older source
    return _pagebatch


@functools.cache
def native_flags() -> frozenset[int]:
    """page_desc flags cdbdump._pagebatch decodes (0: raw); empty without it."""
    module = _native()
    if module is None:
        return frozenset()
    return frozenset({0, *(_FLAG_OF_NAME[name] for name in module.CODECS)})


def read_stored(
    file: FileView, offsets: npt.NDArray[np.int64], sizes: npt.NDArray[np.uint32], what: str
) -> tuple[memoryview | npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """(buffer, where each page's data starts in it) for pages at file ``offsets``.

    Every [offset, offset+size) must lie inside the file. A read error names the
    offset of the first page (in file order) that cannot be read, as reading the
    pages one by one would.
    """
    order = np.argsort(offsets, kind="stable")
    starts = offsets[order]
    ends = np.maximum.accumulate(starts + sizes[order].astype(np.int64))
    breaks = np.flatnonzero(starts[1:] > ends[:-1] + GAP_BYTES) + 1
    first = np.concatenate(([0], breaks))
    last = np.concatenate((breaks - 1, [starts.size - 1]))
    run_starts, run_ends = starts[first], ends[last]
    run_sizes = run_ends - run_starts
    if run_starts.size == 1:
        base = np.zeros(1, dtype=np.int64)
        data: memoryview | npt.NDArray[np.uint8] = _read_run(
            file, int(run_starts[0]), int(run_sizes[0]), None, starts, sizes[order], what)
    else:
        base = np.concatenate(([0], np.cumsum(run_sizes[:-1])))
        data = np.empty(int(run_sizes.sum()), dtype=np.uint8)
        for lo, size, at in zip(run_starts.tolist(), run_sizes.tolist(), base.tolist(),
                                strict=True):
            _read_run(file, lo, size, data[at : at + size], starts, sizes[order], what)
    run_of = np.repeat(np.arange(run_starts.size), last - first + 1)
    rel = np.empty(offsets.size, dtype=np.int64)
    rel[order] = base[run_of] + starts - run_starts[run_of]
    return data, rel


def _read_run(
    file: FileView, file_offset: int, size: int, out: npt.NDArray[np.uint8] | None,
    starts: npt.NDArray[np.int64], sizes: npt.NDArray[np.uint32], what: str,
) -> memoryview:
    try:
        view = file.view(file_offset, size, what)
    except InputReadError:
        # the error path: the first unreadable page names the offset
        for i in range(int(np.searchsorted(starts, file_offset)), starts.size):
            if int(starts[i]) >= file_offset + size:
                break
            file.view(int(starts[i]), int(sizes[i]), what)
        raise
    if out is not None:
        out[:] = np.frombuffer(view, dtype=np.uint8)
    return view


def decode_pages(
    data: memoryview | npt.NDArray[np.uint8],
    rel: npt.NDArray[np.int64],
    sizes: npt.NDArray[np.uint32],
    flags: npt.NDArray[np.uint32],
    file_offsets: npt.NDArray[np.int64],
    out: npt.NDArray[np.uint8],
    page_size: int,
) -> None:
    """Decode page i (data[rel[i]:][:sizes[i]], page_desc flags[i]) into out row i.

    Pages the native decoder cannot handle go through decompress_page, which
    raises its own CorruptDumpError naming the page's file offset; a page the
    native decoder rejects raises DecodeFailed with its index (the first such).
    """
    n = int(rel.size)
    rows = out[: n * page_size].reshape(n, page_size)
    native = native_flags()
    if native:  # flags are one codec bit or 0 here (checked by the caller)
        mine = (flags & ~np.uint32(sum(native))) == 0
        others = np.flatnonzero(~mine)
    else:
        mine = np.zeros(n, dtype=np.bool_)
        others = np.arange(n)
    failed = -1
    module = _native()
    if module is not None and others.size == 0:
        failed = _native_call(module, data, rel, sizes, flags, rows, page_size)
    elif module is not None and others.size < n:
        idx = np.flatnonzero(mine)
        part = np.empty((idx.size, page_size), dtype=np.uint8)
        at = _native_call(module, data, rel[idx], sizes[idx], flags[idx], part, page_size)
        good = idx.size if at < 0 else at
        rows[idx[:good]] = part[:good]
        failed = -1 if at < 0 else int(idx[at])
    if others.size and 0 <= failed:
        others = others[others < failed]
    zstd = others[flags[others] == DUMP_DH_COMPRESSED_ZSTD]
    if zstd.size > 1 and _zstd_batch(data, rel[zstd], sizes[zstd], rows, zstd, page_size):
        others = others[flags[others] != DUMP_DH_COMPRESSED_ZSTD]
    if others.size:
        flat = data if isinstance(data, memoryview) else data.data
        for i in others.tolist():
            if 0 <= failed < i:
                break
            lo = int(rel[i])
            rows[i] = np.frombuffer(
                decompress_page(int(flags[i]), flat[lo : lo + int(sizes[i])], page_size,
                                file_offset=int(file_offsets[i])),
                dtype=np.uint8)
    if failed >= 0:
        raise DecodeFailed(failed)


def _zstd_batch(
    data: memoryview | npt.NDArray[np.uint8], rel: npt.NDArray[np.int64],
    sizes: npt.NDArray[np.uint32], rows: npt.NDArray[np.uint8], index: npt.NDArray[np.int64],
    page_size: int,
) -> bool:
    """zstd pages into rows[index] with ZstdDecompressor.multi_decompress_to_buffer (C, the
    GIL released; every frame must give exactly one page). False when that call is not
    there or a page fails: the caller decodes page by page and names the bad one."""
    import zstandard  # only a zstd dump gets here

    dctx = zstandard.ZstdDecompressor()
    multi = getattr(dctx, "multi_decompress_to_buffer", None)
    segments_type = getattr(zstandard, "BufferWithSegments", None)
    if multi is None or segments_type is None:  # the cffi backend
        return False
    segments = np.empty((rel.size, 2), dtype=np.uint64)
    segments[:, 0] = rel
    segments[:, 1] = sizes
    try:
        frames = segments_type(data, segments.tobytes())
        pages = multi(frames, decompressed_sizes=np.full(rel.size, page_size,
                                                        dtype=np.uint64).tobytes())
    except zstandard.ZstdError:
        return False
    joined = b"".join([pages[i] for i in range(rel.size)])
    if len(joined) != rel.size * page_size:
        return False
    rows[index] = np.frombuffer(joined, dtype=np.uint8).reshape(rel.size, page_size)
    return True


def _native_call(
    module: ModuleType, data: memoryview | npt.NDArray[np.uint8], rel: npt.NDArray[np.int64],
    sizes: npt.NDArray[np.uint32], flags: npt.NDArray[np.uint32],
    rows: npt.NDArray[np.uint8], page_size: int,
) -> int:
    failed: int = module.decompress_pages(
        data, np.ascontiguousarray(rel, dtype=np.int64),
        np.ascontiguousarray(sizes, dtype=np.uint32),
        np.ascontiguousarray(flags, dtype=np.uint32), page_size, rows)
    return failed
