"""Per-page compression exactly as makedumpfile does it, in batches over both cores.

reference: makedumpfile write_kdump_pages_cyclic / write_kdump_page: every page
is compressed on its own with the one selected algorithm (cdbdump.codecs), and
the compressed form is kept only when it is strictly smaller than the page;
otherwise the page is stored raw (page_desc flags 0, size = page size).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cdbdump import _lzo
from cdbdump.closing import Closing
from cdbdump.codecs import BufferLike, Codec, PageFunction, zstd_compressor
from cdbdump.errors import OutputError

try:  # the optional C extension (setup.py); without it, one Python call per page
    from cdbdump import _pagebatch
except ImportError:
    _pagebatch = None  # type: ignore[assignment]

__all__ = ("CompressedPages", "PageCompressor", "PendingPages", "default_threads")

U32 = npt.NDArray[np.uint32]

# Batches smaller than this are compressed on the calling thread: handing a few
# pages to a pool costs more than it saves.
_MIN_PAGES_PER_THREAD = 64
_MAX_THREADS = 8
# Pages per call of the native compressor. Its output is one allocation of up to this
# many pages: small enough for malloc to reuse freed memory instead of mapping fresh
# pages for every call (page faults: 3.0 against 1.3 us per page with 8192), and what
# malloc keeps for reuse shows in the peak RSS (real 4 GiB vmcore, -l -d 0: 65 MiB
# with 256, 60 with 128, 55 with 64, 50 on the per-page Python path; CPU alike).
# The chunks of a window also spread over the threads (zero pages are faster than text).
_NATIVE_CHUNK_PAGES = 128


def native_codecs() -> frozenset[Codec]:
    """The codecs cdbdump._pagebatch compresses (none when it was not built)."""
    if _pagebatch is None:
        return frozenset()
    return frozenset(c for c in Codec if c.label in _pagebatch.CODECS)


def _native_usable(codec: Codec) -> bool:
    if codec not in native_codecs():
        return False
    # CDBDUMP_LZO=lzallright asks for lzallright's bytes; python-lzo's are liblzo's
    return codec is not Codec.LZO or os.environ.get(_lzo.ENV_BACKEND, "") in ("", "python-lzo")


def default_threads() -> int:
    """Compression threads when --num-threads is not given: the usable cores."""
    return min(len(os.sched_getaffinity(0)), _MAX_THREADS)


# -- compression -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CompressedPages:
    """The stored form of a batch of pages, in input order.

    ``parts`` concatenated are every page's stored bytes; page i starts at
    ``sizes[:i].sum()``. ``flags[i]`` is 0 where the page is raw. The native
    compressor's chunk outputs stay separate parts, so a writer can hand them to
    pwritev(2) without copying the whole payload once more to join them.
    """

    sizes: U32
    flags: U32
    parts: tuple[bytes | memoryview, ...]  # a memoryview only for uncompressed batches

    def __len__(self) -> int:
        return int(self.sizes.size)

    @property
    def nbytes(self) -> int:
        """Bytes of stored page data (every part)."""
        return sum(map(len, self.parts))

    @property
    def payload(self) -> bytes | memoryview:
        """The parts as one buffer (joined only when there are several)."""
        return self.parts[0] if len(self.parts) == 1 else b"".join(self.parts)


class PendingPages:
    """A batch being compressed on the pool (PageCompressor.submit_pages)."""

    __slots__ = ("_futures", "_pages")

    def __init__(self, pages: CompressedPages,
                 futures: Sequence[Future[list[bytes | memoryview]]] = ()) -> None:
        self._pages = pages  # sizes and flags filled in by the futures, parts by result()
        self._futures = futures

    def result(self) -> CompressedPages:
        """Wait for the batch; re-raises what its compression raised."""
        if self._futures:
            futures, self._futures = self._futures, ()
            parts = tuple(part for f in futures for part in f.result())
            self._pages = CompressedPages(self._pages.sizes, self._pages.flags, parts)
        return self._pages

    def abandon(self) -> None:
        """Drop the batch: its tasks not yet started never run, running ones finish
        (they read the pages), and errors are forgotten."""
        futures, self._futures = self._futures, ()
        for f in futures:
            f.cancel()
        wait(list(futures))


class PageCompressor(Closing):
    """Compresses batches of pages with one codec, using up to ``threads`` threads.

    Every codec goes through the C extension cdbdump._pagebatch when it was built
    with it (``native``, default: when available): one call per contiguous chunk of
    pages, the GIL released, the raw rule applied in C (liblzo2 lzo1x_1, zlib
    compress2 level 1, libsnappy, libzstd ZSTD_compressCCtx level 1 with one context
    per thread: makedumpfile's own calls). Without it zlib, LZO and snappy need one
    Python call per page, and zstd batches go through python-zstandard's
    ``multi_compress_to_buffer`` (all in C, no GIL, but threads and contexts made
    per call: ~6.5 us a page on the real 4 GiB vmcore) when the installed version
    has it. Either way a batch is cut into contiguous chunks on a pool (each thread
    owns its codec context). ``threads`` defaults to every core this process
    may run on (makedumpfile --num-threads); the output is the same for any number.
    """

    def __init__(self, codec: Codec, page_size: int, *, threads: int | None = None,
                 native: bool | None = None) -> None:
        self.codec = codec
        self.page_size = page_size
        self._page_function: PageFunction | None = (
            None if codec is Codec.NONE else codec.page_function()
        )
        if threads is None:
            threads = default_threads()
        self.threads = max(1, threads)
        self._pool: ThreadPoolExecutor | None = None
        usable = _native_usable(codec)
        if native and not usable:
            raise ValueError(f"cdbdump._pagebatch does not compress {codec.label} here")
        self.native = usable if native is None else native
        # python-zstandard is imported only when the native path does not do zstd
        self._zstd_multi = (codec is Codec.ZSTD and not self.native
                            and hasattr(zstd_compressor(), "multi_compress_to_buffer"))

    # -- batches --------------------------------------------------------------------------

    def compress_pages(
        self,
        pages: BufferLike | Sequence[BufferLike],
        select: npt.NDArray[np.bool_] | None = None,
        *,
        index: npt.NDArray[np.int64] | None = None,
    ) -> CompressedPages:
        """Compress a batch: N*page_size contiguous bytes, or a sequence of pages.

        With ``select`` (contiguous input only), only the pages where it is true
        are compressed and returned, in order. With ``index`` instead, the pages
        numbered there (in the batch, repeats allowed) are, in that order.
        """
        ps = self.page_size
        if isinstance(pages, Sequence) and not isinstance(pages, bytes | bytearray | memoryview):
            if select is not None or index is not None:
                raise ValueError("select and index need contiguous input")
            views = [memoryview(p).cast("B") for p in pages]
            if any(len(v) != ps for v in views):
                raise ValueError(f"every page must be {ps} bytes")
            return self._compress_views(views)
        flat = _flat_bytes(pages)
        nr_pages, chosen = self._batch_index(flat, select, index)
        if self.native and self.codec is not Codec.NONE:
            return self._compress_native(flat, chosen)
        index = np.arange(nr_pages, dtype=np.int64) if chosen is None else chosen
        if self.codec is Codec.NONE:
            return self._store_raw(flat, index)
        if self._zstd_multi and index.size >= _MIN_PAGES_PER_THREAD:
            return self._compress_zstd_multi(flat, index)
        views = [flat[i * ps : (i + 1) * ps] for i in index.tolist()]
        return self._compress_views(views)

    def _batch_index(
        self, flat: memoryview, select: npt.NDArray[np.bool_] | None,
        index: npt.NDArray[np.int64] | None,
    ) -> tuple[int, npt.NDArray[np.int64] | None]:
        """The batch's number of pages and the pages chosen by ``select`` or ``index``
        (None: every page, in order), checked against the batch."""
        if len(flat) % self.page_size:
            raise ValueError(f"batch of {len(flat)} bytes is not a whole number of pages")
        nr_pages = len(flat) // self.page_size
        if select is not None and index is not None:
            raise ValueError("give select or index, not both")
        if select is not None:
            if select.shape != (nr_pages,):
                raise ValueError(f"select has shape {select.shape}, batch has {nr_pages} pages")
            return nr_pages, np.flatnonzero(select)
        if index is not None:
            if index.size and (int(index.min()) < 0 or int(index.max()) >= nr_pages):
                raise ValueError(f"index out of range for a batch of {nr_pages} pages")
            return nr_pages, np.ascontiguousarray(index, dtype=np.int64)
        return nr_pages, None

    def out_size(self, nr_pages: int) -> int:
        """Bytes of the ``out`` buffer :meth:`submit_pages` needs for a batch of up to
        ``nr_pages`` pages (0: it takes none, its output is not native)."""
        if not self.native or _pagebatch is None or self.codec is Codec.NONE:
            return 0
        slack = _pagebatch.compress_slack(self.codec.flag, self.page_size)
        return nr_pages * self.page_size + self.threads * slack

    def submit_pages(
        self, pages: BufferLike, select: npt.NDArray[np.bool_] | None = None,
        *, index: npt.NDArray[np.int64] | None = None,
        out: npt.NDArray[np.uint8] | None = None, skip_zero: bool = False,
    ) -> PendingPages:
        """:meth:`compress_pages` of contiguous pages, started on the pool: the caller
        goes on (reads the next window) while they are compressed. ``pages`` (and
        ``out``) must stay untouched until :meth:`PendingPages.result` returned.

        With ``out`` (:meth:`out_size` bytes) the native compressor writes the
        stored pages there, a slice per thread, and the parts are views of it: no
        allocation per batch; with ``skip_zero`` too, all-zero pages are not stored
        (size 0, flags 0: makedumpfile is_zero_page, tested in C as each page is
        compressed). Without the native compressor the batch is compressed here and
        now (and ``skip_zero`` is refused)."""
        if skip_zero and (out is None or not self.out_size(0)):
            raise ValueError("skip_zero needs the native compressor and an out buffer")
        if not self.native or self.codec is Codec.NONE:
            return PendingPages(self.compress_pages(pages, select, index=index))
        flat = _flat_bytes(pages)
        ps = self.page_size
        nr_pages, index = self._batch_index(flat, select, index)
        n = nr_pages if index is None else int(index.size)
        sizes = np.empty(n, dtype=np.uint32)
        flags = np.empty(n, dtype=np.uint32)
        # one task per thread: the pool works through the next window's tasks while
        # the last of this one finish, so uneven slices cost no idle core
        nr_tasks = min(self.threads, max(1, n // _MIN_PAGES_PER_THREAD))
        bounds = [n * k // nr_tasks for k in range(nr_tasks + 1)]
        pool = self._get_pool()
        futures: list[Future[list[bytes | memoryview]]]
        if out is None:
            futures = [pool.submit(self._native_chunk, flat, index, bounds[k], bounds[k + 1],
                                   sizes, flags)
                       for k in range(nr_tasks) if bounds[k] < bounds[k + 1]]
        else:
            assert _pagebatch is not None  # self.native
            slack = _pagebatch.compress_slack(self.codec.flag, ps)
            if out.size < n * ps + nr_tasks * slack:
                raise ValueError(f"out has {out.size} bytes, a batch of {n} pages needs "
                                 f"{n * ps + nr_tasks * slack}")
            # task k stores its pages from bounds[k] pages and k slacks into out
            futures = [pool.submit(self._native_into, flat, index, bounds[k], bounds[k + 1],
                                   sizes, flags, out[bounds[k] * ps + k * slack :
                                                     bounds[k + 1] * ps + (k + 1) * slack],
                                   skip_zero)
                       for k in range(nr_tasks) if bounds[k] < bounds[k + 1]]
        return PendingPages(CompressedPages(sizes, flags, ()), futures)

    def _native_into(self, flat: memoryview, index: npt.NDArray[np.int64] | None, lo: int,
                     hi: int, sizes: U32, flags: U32, out: npt.NDArray[np.uint8],
                     skip_zero: bool) -> list[bytes | memoryview]:
        """Pages [lo, hi) of a batch (of ``index`` when given) stored into ``out``."""
        assert _pagebatch is not None  # self.native
        ps = self.page_size
        try:
            size = _pagebatch.compress_into(
                self.codec.flag, flat[lo * ps : hi * ps] if index is None else flat,
                None if index is None else index[lo:hi], ps, sizes[lo:hi], flags[lo:hi], out,
                skip_zero)
        except _pagebatch.error as exc:
            raise OutputError(f"{self.codec.label} compression failed: {exc}") from exc
        return [out.data[:size]]

    def _native_chunk(self, flat: memoryview, index: npt.NDArray[np.int64] | None, lo: int,
                      hi: int, sizes: U32, flags: U32) -> list[bytes | memoryview]:
        """Pages [lo, hi) of a batch (of ``index`` when given), in calls of at most
        _NATIVE_CHUNK_PAGES pages (their outputs are the parts)."""
        assert _pagebatch is not None  # self.native
        ps = self.page_size
        flag = self.codec.flag
        out: list[bytes | memoryview] = []
        for a in range(lo, hi, _NATIVE_CHUNK_PAGES):
            b = min(hi, a + _NATIVE_CHUNK_PAGES)
            try:
                out.append(_pagebatch.compress_pages(
                    flag, flat[a * ps : b * ps] if index is None else flat,
                    None if index is None else index[a:b], ps, sizes[a:b], flags[a:b]))
            except _pagebatch.error as exc:
                raise OutputError(f"{self.codec.label} compression failed: {exc}") from exc
        return out

    def _store_raw(self, flat: memoryview, index: npt.NDArray[np.int64]) -> CompressedPages:
        ps = self.page_size
        n = int(index.size)
        sizes = np.full(n, ps, dtype=np.uint32)
        flags = np.zeros(n, dtype=np.uint32)
        if n == len(flat) // ps and np.array_equal(index, np.arange(n)):
            return CompressedPages(sizes, flags, (flat,))
        rows = np.frombuffer(flat, dtype=np.uint8).reshape(-1, ps)
        return CompressedPages(sizes, flags, (rows[index].tobytes(),))

    def _compress_views(self, views: list[memoryview]) -> CompressedPages:
        fn = self._page_function
        if fn is None:
            raise ValueError("Codec.NONE stores pages raw")
        n = len(views)
        nr_threads = min(self.threads, max(1, n // _MIN_PAGES_PER_THREAD))
        if not self.codec.spec.pooled:
            nr_threads = 1
        if nr_threads <= 1:
            outs: list[BufferLike] = list(map(fn, views))
        else:
            step = -(-n // nr_threads)
            chunks = [views[i : i + step] for i in range(0, n, step)]
            pool = self._get_pool()
            outs = []
            for part in pool.map(lambda chunk: list(map(fn, chunk)), chunks):
                outs.extend(part)
        return self._assemble(outs, views.__getitem__)

    def _compress_native(
        self, flat: memoryview, index: npt.NDArray[np.int64] | None
    ) -> CompressedPages:
        """cdbdump._pagebatch on contiguous chunks: no Python object per page."""
        assert _pagebatch is not None  # self.native
        ps = self.page_size
        flag = self.codec.flag
        n = len(flat) // ps if index is None else int(index.size)
        sizes = np.empty(n, dtype=np.uint32)
        flags = np.empty(n, dtype=np.uint32)
        nr_threads = min(self.threads, max(1, n // _MIN_PAGES_PER_THREAD))
        nr_chunks = max(nr_threads, -(-n // _NATIVE_CHUNK_PAGES))
        bounds = [n * k // nr_chunks for k in range(nr_chunks + 1)]

        def chunk(k: int) -> bytes:
            lo, hi = bounds[k], bounds[k + 1]
            pages = flat[lo * ps : hi * ps] if index is None else flat
            part = None if index is None else index[lo:hi]
            try:
                out: bytes = _pagebatch.compress_pages(flag, pages, part, ps, sizes[lo:hi],
                                                       flags[lo:hi])
            except _pagebatch.error as exc:
                raise OutputError(f"{self.codec.label} compression failed: {exc}") from exc
            return out

        if nr_threads == 1:
            parts = tuple(map(chunk, range(nr_chunks)))
        else:  # chunks in parallel, kept in page order (not joined: no payload copy)
            parts = tuple(self._get_pool().map(chunk, range(nr_chunks)))
        return CompressedPages(sizes, flags, parts)

    def _compress_zstd_multi(
        self, flat: memoryview, index: npt.NDArray[np.int64]
    ) -> CompressedPages:
        ps = self.page_size
        segments = np.empty((index.size, 2), dtype=np.uint64)
        segments[:, 0] = index.astype(np.uint64) * np.uint64(ps)
        segments[:, 1] = ps
        import zstandard  # only zstd runs import it (start-up time)

        batch = zstandard.BufferWithSegments(flat, segments.tobytes())
        result = zstd_compressor().multi_compress_to_buffer(batch, threads=self.threads)
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
        return CompressedPages(sizes, flags, (b"".join(outs),))

    def _get_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="cdbdump-compress")
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def _flat_bytes(data: BufferLike) -> memoryview:
    view = memoryview(data)
    if not view.c_contiguous:
        raise ValueError("page batch must be C-contiguous")
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view
