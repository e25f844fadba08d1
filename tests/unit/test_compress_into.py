"""Pages compressed on the pool into a caller's buffer (PageCompressor.submit_pages with
``out``, cdbdump._pagebatch.compress_into) give the bytes of compress_pages.

compress_pages is checked against the codec libraries themselves in test_pagebatch;
here every thread count cuts a batch into slices stored back to back in one buffer,
with incompressible pages at the slice ends (each needs the slack past its slice to be
compressed in place before it is stored raw).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from cdbdump.codecs import Codec
from cdbdump.writers import compress
from cdbdump.writers.compress import CompressedPages, PageCompressor, native_codecs

PS = 4096
pagebatch = compress._pagebatch
NATIVE = sorted(native_codecs(), key=lambda c: c.flag)
needs_native = pytest.mark.skipif(pagebatch is None, reason="cdbdump._pagebatch not built")


def _pages(count: int, seed: int) -> npt.NDArray[np.uint8]:
    rng = np.random.default_rng(seed)
    pages = np.zeros((count, PS), dtype=np.uint8)
    kinds = rng.integers(0, 4, count)
    for i, kind in enumerate(kinds.tolist()):
        if kind == 1:  # incompressible: stored raw
            pages[i] = rng.integers(0, 256, PS, dtype=np.uint8)
        elif kind == 2:
            pages[i] = rng.integers(0, 4, PS, dtype=np.uint8)
        elif kind == 3:
            pages[i, : PS // 3] = i % 251
    pages[::5] = rng.integers(0, 256, (len(pages[::5]), PS), dtype=np.uint8)
    pages[-1] = rng.integers(0, 256, PS, dtype=np.uint8)
    return pages.reshape(-1)


def _same(a: CompressedPages, b: CompressedPages) -> None:
    assert a.sizes.tolist() == b.sizes.tolist()
    assert a.flags.tolist() == b.flags.tolist()
    assert bytes(a.payload) == bytes(b.payload)
    assert a.nbytes == b.nbytes == int(a.sizes.sum())


@needs_native
@pytest.mark.parametrize("codec", NATIVE)
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("count", [1, 63, 64, 129, 517])
def test_submitted_into_a_buffer_equals_compress_pages(codec: Codec, threads: int,
                                                       count: int) -> None:
    data = _pages(count, seed=count + threads)
    rng = np.random.default_rng(threads)
    select = rng.random(count) < 0.7
    index = rng.integers(0, count, count + 5).astype(np.int64)  # repeats, any order
    with PageCompressor(codec, PS, threads=threads) as pc:
        assert pc.native and pc.out_size(count) >= count * PS
        out = np.full(pc.out_size(count), 0xEE, dtype=np.uint8)
        _same(pc.submit_pages(data, out=out).result(), pc.compress_pages(data))
        _same(pc.submit_pages(data, select, out=out).result(), pc.compress_pages(data, select))
        big = np.empty(pc.out_size(index.size), dtype=np.uint8)
        _same(pc.submit_pages(data, index=index, out=big).result(),
              pc.compress_pages(data, index=index))
        none = pc.submit_pages(data, np.zeros(count, dtype=np.bool_), out=out).result()
        assert (len(none), none.nbytes) == (0, 0)


@needs_native
@pytest.mark.parametrize("codec", NATIVE)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_skip_zero_leaves_zero_pages_out(codec: Codec, threads: int) -> None:
    """The zero test in C is makedumpfile's is_zero_page: a page with one non-zero
    byte anywhere is stored."""
    pages = _pages(300, seed=threads).reshape(300, PS)
    pages[10:40] = 0
    pages[100, PS - 1] = 1
    pages[101, 0] = 1
    pages[102, PS // 2] = 0x80
    pages[103] = 0
    data = pages.reshape(-1)
    nonzero = pages.any(axis=1)
    with PageCompressor(codec, PS, threads=threads) as pc:
        out = np.empty(pc.out_size(300), dtype=np.uint8)
        got = pc.submit_pages(data, out=out, skip_zero=True).result()
        kept = pc.compress_pages(data, nonzero)
    assert got.sizes[~nonzero].tolist() == [0] * int((~nonzero).sum())
    assert got.flags[~nonzero].tolist() == [0] * int((~nonzero).sum())
    assert got.sizes[nonzero].tolist() == kept.sizes.tolist()
    assert got.flags[nonzero].tolist() == kept.flags.tolist()
    assert bytes(got.payload) == bytes(kept.payload)


@needs_native
@pytest.mark.parametrize("codec", NATIVE)
def test_batches_in_flight_keep_their_own_buffers(codec: Codec) -> None:
    """Several batches on the pool at once (the writer's windows in flight), collected
    in order afterwards."""
    batches = [_pages(300, seed=s) for s in range(5)]
    with PageCompressor(codec, PS, threads=2) as pc:
        outs = [np.empty(pc.out_size(300), dtype=np.uint8) for _ in batches]
        pending = [pc.submit_pages(b, out=o) for b, o in zip(batches, outs, strict=True)]
        for b, p in zip(batches, pending, strict=True):
            _same(p.result(), pc.compress_pages(b))
        dropped = pc.submit_pages(batches[0], out=outs[0])
        dropped.abandon()  # its tasks never run or have finished: the buffers are free
        _same(pc.submit_pages(batches[1], out=outs[0]).result(), pc.compress_pages(batches[1]))


@needs_native
def test_a_short_buffer_is_refused() -> None:
    data = _pages(10, seed=1)
    slack = pagebatch.compress_slack(Codec.LZO.flag, PS)
    assert slack > 0  # lzo1x_1 may write past a page before the raw rule applies
    sizes, flags = np.empty(10, np.uint32), np.empty(10, np.uint32)
    with pytest.raises(ValueError, match="may need"):
        pagebatch.compress_into(Codec.LZO.flag, data, None, PS, sizes, flags,
                                np.empty(10 * PS + slack - 1, dtype=np.uint8))
    with pytest.raises(BufferError):  # read-only
        pagebatch.compress_into(Codec.LZO.flag, data, None, PS, sizes, flags,
                                bytes(10 * PS + slack))
    with PageCompressor(Codec.LZO, PS, threads=2) as pc:
        with pytest.raises(ValueError, match="out has"):
            pc.submit_pages(data, out=np.empty(10 * PS, dtype=np.uint8))
        with pytest.raises(ValueError, match="skip_zero"):
            pc.submit_pages(data, skip_zero=True)
    with PageCompressor(Codec.NONE, PS) as raw:
        assert raw.out_size(10) == 0
        assert bytes(raw.submit_pages(data).result().payload) == data.tobytes()
