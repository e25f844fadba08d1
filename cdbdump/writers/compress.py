"""Per-page compression exactly as makedumpfile does it, in batches over both cores.

reference: makedumpfile write_kdump_pages_cyclic / write_kdump_page: every page
is compressed on its own with the one selected algorithm, and the compressed
form is kept only when it is strictly smaller than the page; otherwise the
page is stored raw (page_desc flags 0, size = page size).

* zlib: ``compress2(level Z_BEST_SPEED)``: zlib wrapper, window 15, memLevel 8
  (= ``zlib.compress(page, 1)``; identical bytes need the same zlib build).
* LZO: ``lzo1x_1_compress``, no header (backend choice: :mod:`cdbdump._lzo`).
* snappy: ``snappy_compress``, the raw (unframed) format.
* zstd: ``ZSTD_compressCCtx(level 1)`` with one reused context: content size in
  the frame header, no checksum, no dictionary id.

The third-party decompressors' exceptions are translated to CorruptDumpError in
:func:`decompress_page` and nowhere else.
"""

from __future__ import annotations

import enum
import importlib
import os
import threading
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import ModuleType, TracebackType
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt
import zstandard

from cdbdump import _lzo
from cdbdump.errors import CorruptDumpError, UnsupportedError
from cdbdump.formats.kdump import (
    DUMP_DH_COMPRESSED_LZO,
    DUMP_DH_COMPRESSED_SNAPPY,
    DUMP_DH_COMPRESSED_ZLIB,
    DUMP_DH_COMPRESSED_ZSTD,
)

__all__ = (
    "Codec",
    "CompressedPages",
    "PageCompressor",
    "codec_for_flags",
    "decompress_page",
    "require_codec",
)

# Anything with the buffer protocol (bytes, memoryview over an mmap, numpy array).
BufferLike: TypeAlias = Any
U32 = npt.NDArray[np.uint32]

# Batches smaller than this are compressed on the calling thread: handing a few
# pages to a pool costs more than it saves.
_MIN_PAGES_PER_THREAD = 64
_MAX_THREADS = 8
# Codecs worth a thread pool. All four libraries release the GIL, but LZO and
# snappy compress a 4 KiB page in ~3 us, about the cost of the Python call
# around it, so a second thread only adds contention (measured on 1 GiB of a
# real 6.1 vmcore: LZO 1.4 GB/s on one thread, no gain on two; zlib 98 -> 170 MB/s).
_POOLED = frozenset({"ZLIB", "ZSTD"})


class Codec(enum.Enum):
    """A page compression algorithm; the value is its disk_dump_header status bit."""

    NONE = 0
    ZLIB = DUMP_DH_COMPRESSED_ZLIB
    LZO = DUMP_DH_COMPRESSED_LZO
    SNAPPY = DUMP_DH_COMPRESSED_SNAPPY
    ZSTD = DUMP_DH_COMPRESSED_ZSTD

    @property
    def flag(self) -> int:
        """The header status bit and page_desc flags value (0 for NONE)."""
        return int(self.value)

    @property
    def label(self) -> str:
        """Lower-case name as makedumpfile -v prints it (zlib, lzo, snappy, zstd; none)."""
        return self.name.lower()

    @property
    def available(self) -> bool:
        """False when the optional PyPI package this codec needs is not installed."""
        try:
            _import_codec_module(self)
        except UnsupportedError:
            return False
        return True

    def check_available(self) -> None:
        """Raise UnsupportedError naming the missing PyPI package."""
        _import_codec_module(self)

    @property
    def makedumpfile_option(self) -> str:
        return {"NONE": "", "ZLIB": "-c", "LZO": "-l", "SNAPPY": "-p", "ZSTD": "-z"}[self.name]

    @property
    def pypi_package(self) -> str | None:
        """The optional PyPI package this codec needs (None: always available)."""
        return {"LZO": "python-lzo or lzallright", "SNAPPY": "cramjam"}.get(self.name)

    @property
    def _module_name(self) -> str | None:
        return {"SNAPPY": "cramjam"}.get(self.name)  # LZO: cdbdump._lzo chooses


def _import_codec_module(codec: Codec) -> ModuleType | None:
    if codec is Codec.LZO:
        _lzo.backend()  # UnsupportedError naming what to install
        return _lzo
    name = codec._module_name
    if name is None:
        return None
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        extra = codec.name.lower()
        raise UnsupportedError(
            f"{codec.name} compression ({codec.makedumpfile_option}) needs the PyPI package "
            f"{codec.pypi_package} (pip install 'cdbdump[{extra}]')"
        ) from exc


def require_codec(codec: Codec) -> None:
    """Raise UnsupportedError naming the missing PyPI package if ``codec`` cannot run."""
    _import_codec_module(codec)


def codec_for_flags(flags: int) -> Codec:
    """The codec a page_desc ``flags`` value names (0 = raw); CorruptDumpError if none."""
    for codec in Codec:
        if codec.flag == flags:
            return codec
    raise CorruptDumpError(f"page_desc flags {flags:#x} name no known compression")


# -- compression -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CompressedPages:
    """The stored form of a batch of pages, in input order.

    ``payload`` is the concatenation of every page's stored bytes; page i
    starts at ``sizes[:i].sum()``. ``flags[i]`` is 0 where the page is raw.
    """

    sizes: U32
    flags: U32
    payload: bytes | memoryview  # a memoryview only for uncompressed batches (no copy)

    def __len__(self) -> int:
        return int(self.sizes.size)


class PageCompressor:
    """Compresses batches of pages with one codec, using up to ``threads`` threads.

    zstd batches go through python-zstandard's ``multi_compress_to_buffer``
    (all in C, no GIL, no per-page Python objects on input) when the installed
    version has it: on 1 GiB of a real vmcore it beat a thread pool of
    per-page ``compress`` calls (1.6 vs 1.36 GB/s on two cores). zlib needs one
    Python call per page and runs on a small thread pool (zlib releases the GIL;
    each thread owns its context); LZO and snappy stay on the calling thread
    (see _POOLED).
    """

    def __init__(self, codec: Codec, page_size: int, *, threads: int | None = None) -> None:
        self.codec = codec
        self.page_size = page_size
        self._module = _import_codec_module(codec)
        if threads is None:
            threads = min(len(os.sched_getaffinity(0)), _MAX_THREADS)
        self.threads = max(1, threads)
        self._local = threading.local()
        self._zstd_multi = codec is Codec.ZSTD and hasattr(
            zstandard.ZstdCompressor, "multi_compress_to_buffer"
        )
        self._pool: ThreadPoolExecutor | None = None

    # -- per-codec single-page functions (each thread gets its own zstd context) --------

    def _zstd_compressor(self) -> Any:
        cctx = getattr(self._local, "cctx", None)
        if cctx is None:
            cctx = _new_zstd_compressor()
            self._local.cctx = cctx
        return cctx

    def _page_function(self) -> Callable[[BufferLike], BufferLike]:
        codec = self.codec
        if codec is Codec.ZLIB:
            return _zlib_page
        if codec is Codec.LZO:
            return _lzo.backend().compress
        if codec is Codec.SNAPPY:
            return self._module.snappy.compress_raw  # type: ignore[union-attr,no-any-return]
        if codec is Codec.ZSTD:
            return lambda page: self._zstd_compressor().compress(page)
        raise UnsupportedError(f"no page function for {codec.name}")

    # -- batches --------------------------------------------------------------------------

    def compress_pages(
        self,
        pages: BufferLike | Sequence[BufferLike],
        select: npt.NDArray[np.bool_] | None = None,
    ) -> CompressedPages:
        """Compress a batch: N*page_size contiguous bytes, or a sequence of pages.

        With ``select`` (contiguous input only), only the pages where it is true
        are compressed and returned, in order.
        """
        ps = self.page_size
        if isinstance(pages, Sequence) and not isinstance(pages, bytes | bytearray | memoryview):
            if select is not None:
                raise ValueError("select needs contiguous input")
            views = [memoryview(p).cast("B") for p in pages]
            if any(len(v) != ps for v in views):
                raise ValueError(f"every page must be {ps} bytes")
            return self._compress_views(views)
        flat = _flat_bytes(pages)
        if len(flat) % ps:
            raise ValueError(f"batch of {len(flat)} bytes is not a whole number of pages")
        nr_pages = len(flat) // ps
        if select is None:
            index = np.arange(nr_pages, dtype=np.int64)
        else:
            if select.shape != (nr_pages,):
                raise ValueError(f"select has shape {select.shape}, batch has {nr_pages} pages")
            index = np.flatnonzero(select)
        if self.codec is Codec.NONE:
            return self._store_raw(flat, index)
        if self._zstd_multi and index.size >= _MIN_PAGES_PER_THREAD:
            return self._compress_zstd_multi(flat, index)
        views = [flat[i * ps : (i + 1) * ps] for i in index.tolist()]
        return self._compress_views(views)

    def _store_raw(self, flat: memoryview, index: npt.NDArray[np.int64]) -> CompressedPages:
        ps = self.page_size
        n = int(index.size)
        sizes = np.full(n, ps, dtype=np.uint32)
        flags = np.zeros(n, dtype=np.uint32)
        if n == len(flat) // ps:
            return CompressedPages(sizes, flags, flat)
        rows = np.frombuffer(flat, dtype=np.uint8).reshape(-1, ps)
        return CompressedPages(sizes, flags, rows[index].tobytes())

    def _compress_views(self, views: list[memoryview]) -> CompressedPages:
        fn = self._page_function()
        n = len(views)
        if self.codec is Codec.LZO:
            # python-lzo parses its input with "s#", which refuses memoryviews
            lzo_fn = fn
            fn = lambda page: lzo_fn(bytes(page))  # noqa: E731
        nr_threads = min(self.threads, max(1, n // _MIN_PAGES_PER_THREAD))
        if self.codec.name not in _POOLED:
            nr_threads = 1
        if nr_threads <= 1:
            outs: list[BufferLike] = [fn(v) for v in views]
        else:
            step = -(-n // nr_threads)
            chunks = [views[i : i + step] for i in range(0, n, step)]
            pool = self._get_pool()
            outs = []
            for part in pool.map(lambda chunk: [fn(v) for v in chunk], chunks):
                outs.extend(part)
        return self._assemble(outs, views.__getitem__)

    def _compress_zstd_multi(
        self, flat: memoryview, index: npt.NDArray[np.int64]
    ) -> CompressedPages:
        ps = self.page_size
        segments = np.empty((index.size, 2), dtype=np.uint64)
        segments[:, 0] = index.astype(np.uint64) * np.uint64(ps)
        segments[:, 1] = ps
        batch = zstandard.BufferWithSegments(flat, segments.tobytes())
        result = self._zstd_compressor().multi_compress_to_buffer(batch, threads=self.threads)
        outs = [result[i] for i in range(len(result))]

        def page(i: int) -> memoryview:
            start = int(index[i]) * ps
            return flat[start : start + ps]

        return self._assemble(outs, page)

    def _assemble(
        self, outs: list[BufferLike], page: Callable[[int], memoryview]
    ) -> CompressedPages:
        """Keep each compressed page only if strictly smaller than the page."""
        ps = self.page_size
        n = len(outs)
        sizes = np.fromiter(map(len, outs), dtype=np.uint32, count=n)
        raw = sizes >= ps
        flags = np.full(n, self.codec.flag, dtype=np.uint32)
        if raw.any():
            for i in np.flatnonzero(raw).tolist():
                outs[i] = page(i)
            sizes[raw] = ps
            flags[raw] = 0
        return CompressedPages(sizes, flags, b"".join(outs))

    def _get_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="cdbdump-compress")
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> PageCompressor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _zlib_page(page: BufferLike) -> bytes:
    return zlib.compress(page, 1)  # Z_BEST_SPEED, like makedumpfile's compress2()


def _new_zstd_compressor() -> Any:
    # ZSTD_compressCCtx(ctx, ..., 1): level 1, content size written, no checksum
    return zstandard.ZstdCompressor(
        level=1, write_content_size=True, write_checksum=False, write_dict_id=False
    )


def _flat_bytes(data: BufferLike) -> memoryview:
    view = memoryview(data)
    if not view.c_contiguous:
        raise ValueError("page batch must be C-contiguous")
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


# -- decompression (the reader's one choke point for codec errors) -----------------------


def decompress_page(
    flags: int, data: BufferLike, page_size: int, *, file_offset: int | None = None
) -> bytes:
    """Decompress one stored page, never producing more than ``page_size`` bytes.

    Any codec failure, or output that is not exactly ``page_size`` bytes, is
    a CorruptDumpError at ``file_offset`` (the page data's offset in the dump).
    """
    codec = codec_for_flags(flags)
    if codec is Codec.NONE:
        if len(data) != page_size:
            raise CorruptDumpError(
                f"raw page has size {len(data):#x}, page size is {page_size:#x}",
                file_offset=file_offset,
                field="page data",
            )
        return bytes(data)
    module = _import_codec_module(codec)
    try:
        out = _DECOMPRESSORS[codec](module, data, page_size)
    except _codec_errors(module) as exc:
        raise _bad_page(codec, file_offset, str(exc)) from exc
    if len(out) != page_size:
        raise _bad_page(codec, file_offset, f"decompressed to {len(out):#x} bytes")
    return out


def _codec_errors(module: ModuleType | None) -> tuple[type[BaseException], ...]:
    """What the decompressors raise on bad input: python-lzo's ``lzo.error`` and
    cramjam's ``DecompressionError`` come from the optional modules themselves."""
    errors: list[type[BaseException]] = [
        zlib.error, zstandard.ZstdError, ValueError, OverflowError
    ]
    for name in ("error", "DecompressionError"):
        exc_type = getattr(module, name, None)
        if isinstance(exc_type, type) and issubclass(exc_type, BaseException):
            errors.append(exc_type)
    return tuple(errors)


def _bad_page(codec: Codec, file_offset: int | None, detail: str) -> CorruptDumpError:
    return CorruptDumpError(
        f"{codec.name} page does not decompress to one page: {detail}",
        file_offset=file_offset,
        field="page data",
    )


def _zlib_decompress(_module: ModuleType | None, data: BufferLike, page_size: int) -> bytes:
    dobj = zlib.decompressobj()
    out = dobj.decompress(data, page_size)
    if not dobj.eof or dobj.unconsumed_tail:
        raise ValueError("zlib stream longer than a page or truncated")
    return out


def _lzo_decompress(module: ModuleType | None, data: BufferLike, page_size: int) -> bytes:
    assert module is not None
    out: bytes = module.decompress(bytes(data), page_size)
    return out


def _snappy_decompress(module: ModuleType | None, data: BufferLike, page_size: int) -> bytes:
    assert module is not None
    # The raw format starts with the uncompressed length as a varint: check it
    # before letting the library allocate anything.
    length = _snappy_length(bytes(data[:10]))
    if length != page_size:
        raise ValueError(f"snappy header says {length:#x} bytes")
    return bytes(module.snappy.decompress_raw(bytes(data)))


def _snappy_length(head: bytes) -> int:
    value = 0
    for shift, byte in zip(range(0, 35, 7), head, strict=False):
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value
    raise ValueError("bad snappy length varint")


def _zstd_decompress(_module: ModuleType | None, data: BufferLike, page_size: int) -> bytes:
    size = zstandard.frame_content_size(data)
    if size > page_size:
        # python-zstandard sizes its output by the frame header and ignores
        # max_output_size when the header has a content size.
        raise ValueError(f"zstd frame declares {size:#x} bytes")
    dctx = getattr(_ZSTD_LOCAL, "dctx", None)
    if dctx is None:
        dctx = _ZSTD_LOCAL.dctx = zstandard.ZstdDecompressor()
    out: bytes = dctx.decompress(data, max_output_size=page_size)
    return out


_ZSTD_LOCAL = threading.local()


_DECOMPRESSORS: dict[Codec, Callable[[ModuleType | None, BufferLike, int], bytes]] = {
    Codec.ZLIB: _zlib_decompress,
    Codec.LZO: _lzo_decompress,
    Codec.SNAPPY: _snappy_decompress,
    Codec.ZSTD: _zstd_decompress,
}
