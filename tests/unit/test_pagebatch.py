"""The C batch compressor cdbdump._pagebatch against the codec libraries themselves.

Oracles: Python's zlib (compress2 level 1), python-lzo (liblzo2 lzo1x_1), libsnappy's
C API through ctypes (makedumpfile's snappy_compress) and python-zstandard (its own
bundled libzstd, level 1, content size, no checksum: what the Python path writes), with
makedumpfile's raw rule (write_kdump_page) applied in Python. The native path must give
those bytes for every thread count and chunking, and the same bytes as the Python path
where both use the same library (zlib, LZO) or, for zstd, the same level-1 frames.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import os
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import lzo
import numpy as np
import pytest
import zstandard

from cdbdump import _lzo
from cdbdump.codecs import Codec, decompress_page
from cdbdump.writers import compress
from cdbdump.writers.compress import PageCompressor, native_codecs
from tests.ci_gate import IN_CI

PS = 4096
NATIVE = [Codec.ZLIB, Codec.LZO, Codec.SNAPPY, Codec.ZSTD]
pagebatch = compress._pagebatch


def test_native_module_is_built_in_ci() -> None:
    """CI (and make venv, with the -dev packages of scripts/install-system-deps.sh)
    must compress through the C extension, with all four codecs."""
    if pagebatch is None:
        if IN_CI:
            pytest.fail("cdbdump._pagebatch was not built (compiler, zlib1g-dev?)")
        pytest.skip("cdbdump._pagebatch not built")
    assert set(native_codecs()) == set(NATIVE)
    for codec in NATIVE:
        with PageCompressor(codec, PS) as pc:
            assert pc.native


needs_native = pytest.mark.skipif(pagebatch is None, reason="cdbdump._pagebatch not built")


def _libsnappy() -> Callable[[bytes], bytes]:
    path = ctypes.util.find_library("snappy")
    if path is None:
        pytest.fail("libsnappy not found (Debian: libsnappy-dev)")
    lib = ctypes.CDLL(path)
    lib.snappy_max_compressed_length.restype = ctypes.c_size_t
    lib.snappy_max_compressed_length.argtypes = [ctypes.c_size_t]
    lib.snappy_compress.restype = ctypes.c_int
    lib.snappy_compress.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p,
                                    ctypes.POINTER(ctypes.c_size_t)]

    def snappy_compress(page: bytes) -> bytes:
        out = ctypes.create_string_buffer(lib.snappy_max_compressed_length(len(page)))
        size = ctypes.c_size_t(len(out))
        assert lib.snappy_compress(page, len(page), out, ctypes.byref(size)) == 0  # SNAPPY_OK
        return out.raw[: size.value]

    return snappy_compress


def _oracle(codec: Codec) -> Callable[[bytes], bytes]:
    if codec is Codec.ZLIB:
        return lambda page: zlib.compress(page, 1)
    if codec is Codec.LZO:
        return lambda page: lzo.compress(page, 1, False)
    if codec is Codec.ZSTD:
        # python-zstandard's bundled libzstd, not the host's that the C side links
        return zstandard.ZstdCompressor(level=1, write_content_size=True,
                                        write_checksum=False).compress
    return _libsnappy()


def _expected(codec: Codec, pages: list[bytes]) -> tuple[list[int], list[int], bytes]:
    """write_kdump_page's rule: the compressed form only when strictly smaller."""
    fn = _oracle(codec)
    stored = [c if len(c := fn(p)) < PS else p for p in pages]
    flags = [codec.flag if len(s) < PS else 0 for s in stored]
    return [len(s) for s in stored], flags, b"".join(stored)


@functools.cache
def _boundary_pages(codec: Codec) -> list[bytes]:
    """Pages whose compressed size is just under, at and just over the page size:
    k random bytes and a repeated pattern (either order), k searched for each size.

    zstd cannot reach PS - 1 or PS: libzstd keeps a compressed block only when it
    saves ZSTD_minGain, (size >> 6) + 2 bytes, else it writes the block raw, so a
    page's frame (10 bytes of headers and block header) is at most
    PS - (PS >> 6) - 3 + 10 bytes (kept) or PS + 10 (stored raw): both edges here."""
    fn = _oracle(codec)
    if codec is Codec.ZSTD:
        wanted = required = {PS - (PS >> 6) - 3 + 10, PS + 10}
    else:
        wanted, required = {PS - 2, PS - 1, PS, PS + 1}, {PS - 1, PS}
    noise = np.random.default_rng(99).integers(0, 256, PS, dtype=np.uint8).tobytes()
    found: dict[int, bytes] = {}
    for fill in (b"\0", b"ab", b"xyz"):
        for k in range(PS // 2, PS + 1):
            for page in (noise[:k] + (fill * PS)[: PS - k], (fill * PS)[: PS - k] + noise[:k]):
                size = len(fn(page))
                if size in wanted:
                    found.setdefault(size, page)
    assert required <= set(found), sorted(found)  # the rule is really exercised
    return list(found.values())


def _pages(codec: Codec, count: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    text = b"".join(b"struct page %d slab\0\0\0\0" % i for i in range(400))
    kinds = [
        lambda i: bytes(PS),  # zero page
        lambda i: rng.integers(0, 256, PS, dtype=np.uint8).tobytes(),  # raw
        lambda i: text[i % 97 : i % 97 + PS],
        lambda i: rng.integers(0, 4, PS, dtype=np.uint8).tobytes(),
        lambda i: bytes([i % 256]) * PS,
        lambda i: bytes(PS - 1) + b"\1",  # not a zero page (the C side caches zero pages)
        lambda i: b"\1" + bytes(PS - 1),
    ]
    pages = [kinds[int(rng.integers(0, len(kinds)))](i) for i in range(count)]
    edge = _boundary_pages(codec)
    for j in range(0, count, 7):
        pages[j] = edge[j % len(edge)]
    return pages


@needs_native
@pytest.mark.parametrize("threads", [1, 2, 3, 8])
@pytest.mark.parametrize("codec", NATIVE)
@pytest.mark.parametrize("count", [1, 63, 129, 700])
def test_native_bytes_are_the_libraries_bytes(codec: Codec, threads: int, count: int) -> None:
    pages = _pages(codec, count, seed=count)
    sizes, flags, payload = _expected(codec, pages)
    with PageCompressor(codec, PS, threads=threads) as pc:
        assert pc.native
        got = pc.compress_pages(b"".join(pages))
    assert got.sizes.tolist() == sizes
    assert got.flags.tolist() == flags
    assert bytes(got.payload) == payload
    assert count == 1 or (0 in flags and codec.flag in flags)


@needs_native
@pytest.mark.parametrize("threads", [1, 2, 3, 8])
@pytest.mark.parametrize("codec", NATIVE)
def test_native_select_odd_chunks(codec: Codec, threads: int) -> None:
    pages = _pages(codec, 517, seed=5)
    rng = np.random.default_rng(threads)
    select = rng.random(len(pages)) < 0.6
    select[:3] = [True, False, True]
    sizes, flags, payload = _expected(codec, [p for p, s in zip(pages, select, strict=True)
                                              if s])
    with PageCompressor(codec, PS, threads=threads) as pc:
        got = pc.compress_pages(np.frombuffer(b"".join(pages), dtype=np.uint8), select)
        one = pc.compress_pages(np.frombuffer(b"".join(pages), dtype=np.uint8),
                                np.arange(len(pages)) == 4)
        none = pc.compress_pages(np.frombuffer(b"".join(pages), dtype=np.uint8),
                                 np.zeros(len(pages), dtype=np.bool_))
        empty = pc.compress_pages(b"")
    assert (len(none), bytes(none.payload), len(empty), bytes(empty.payload)) == (0, b"", 0, b"")
    assert (got.sizes.tolist(), got.flags.tolist(), bytes(got.payload)) == (sizes, flags,
                                                                            payload)
    assert bytes(one.payload) == _expected(codec, [pages[4]])[2]
    ends = np.cumsum(got.sizes, dtype=np.int64)
    kept = [p for p, s in zip(pages, select, strict=True) if s]
    for i in range(0, len(kept), 37):  # every codec's decompressor reads them back
        stored = bytes(got.payload)[int(ends[i] - got.sizes[i]) : int(ends[i])]
        assert decompress_page(int(got.flags[i]), stored, PS) == kept[i]


@needs_native
@pytest.mark.parametrize("codec", [Codec.ZLIB, Codec.LZO, Codec.ZSTD])
def test_native_equals_python_path(codec: Codec, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_lzo.ENV_BACKEND, "python-lzo")
    data = b"".join(_pages(codec, 300, seed=3))
    with (PageCompressor(codec, PS, threads=2, native=True) as fast,
          PageCompressor(codec, PS, threads=2, native=False) as slow):
        a, b = fast.compress_pages(data), slow.compress_pages(data)
        assert slow._zstd_multi == (codec is Codec.ZSTD)  # zstd: multi_compress_to_buffer
    assert bytes(a.payload) == bytes(b.payload)
    assert (a.sizes.tolist(), a.flags.tolist()) == (b.sizes.tolist(), b.flags.tolist())


@needs_native
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_native_zstd_contexts_are_reused_without_changing_bytes(threads: int) -> None:
    """Each thread keeps its ZSTD_CCtx from batch to batch, whatever it compressed
    before (other pages, other chunk sizes): the bytes stay python-zstandard's."""
    pages = _pages(Codec.ZSTD, 1000, seed=17)
    data = np.frombuffer(b"".join(pages), dtype=np.uint8)
    rng = np.random.default_rng(threads)
    seen: set[int] = set()
    with PageCompressor(Codec.ZSTD, PS, threads=threads) as pc:
        for count in (700, 1, 129, 64, 399, 1000):
            index = rng.integers(0, len(pages), count, dtype=np.int64)
            got = pc.compress_pages(data, index=index)
            sizes, flags, payload = _expected(Codec.ZSTD, [pages[i] for i in index.tolist()])
            assert (got.sizes.tolist(), got.flags.tolist()) == (sizes, flags)
            assert bytes(got.payload) == payload
            seen.update(flags)
    assert seen == {0, Codec.ZSTD.flag}


@needs_native
def test_lzallright_forced_keeps_the_python_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_lzo.ENV_BACKEND, "lzallright")
    with PageCompressor(Codec.LZO, PS) as pc:
        assert not pc.native
    with pytest.raises(ValueError, match="lzo"):
        PageCompressor(Codec.LZO, PS, native=True)
    with PageCompressor(Codec.ZSTD, PS) as pc:  # the backend choice is LZO's alone
        assert pc.native


@needs_native
def test_bad_arguments_are_exceptions() -> None:
    data = np.zeros(4 * PS, dtype=np.uint8)
    sizes, flags = np.empty(2, np.uint32), np.empty(2, np.uint32)
    idx = np.array([0, 3], dtype=np.int64)
    assert len(pagebatch.compress_pages(0x2, data, idx, PS, sizes, flags)) == sizes.sum()
    with pytest.raises(IndexError):
        pagebatch.compress_pages(0x2, data, np.array([0, 4], np.int64), PS, sizes, flags)
    with pytest.raises(IndexError):
        pagebatch.compress_pages(0x2, data, np.array([-1, 0], np.int64), PS, sizes, flags)
    with pytest.raises(ValueError, match="items"):
        pagebatch.compress_pages(0x2, data, idx, PS, np.empty(3, np.uint32), flags)
    with pytest.raises(ValueError, match="4-byte integers"):
        pagebatch.compress_pages(0x2, data, idx, PS, np.empty(2, np.uint64), flags)
    with pytest.raises(ValueError, match="8-byte"):
        pagebatch.compress_pages(0x2, data, idx.astype(np.int32), PS, sizes, flags)
    with pytest.raises(ValueError, match="8-byte integers"):
        pagebatch.compress_pages(0x2, data, idx.astype(np.float64), PS, sizes, flags)
    with pytest.raises(ValueError, match="whole number"):
        pagebatch.compress_pages(0x2, data[:-1], None, PS, sizes, flags)
    with pytest.raises(ValueError, match="page size"):
        pagebatch.compress_pages(0x2, data, idx, 0, sizes, flags)
    with pytest.raises(ValueError, match="not built"):
        pagebatch.compress_pages(0x40, data, idx, PS, sizes, flags)  # no such codec
    with pytest.raises((BufferError, ValueError), match="contiguous"):
        pagebatch.compress_pages(0x2, data.reshape(4, PS)[:, ::2], None, PS // 2, sizes, flags)
    with pytest.raises(BufferError, match="not writable"):
        pagebatch.compress_pages(0x2, data, idx, PS, b"\0" * 8, flags)


@needs_native
def test_without_the_module_the_python_path_gives_the_same_bytes(tmp_path: Path) -> None:
    """What a build without a compiler runs: cdbdump._pagebatch not importable."""
    codecs = (Codec.ZLIB, Codec.LZO, Codec.ZSTD)
    pages = {codec: _pages(codec, 150, seed=11) for codec in codecs}
    for codec, batch in pages.items():
        (tmp_path / codec.label).write_bytes(b"".join(batch))
    code = (
        "import sys, hashlib; sys.modules['cdbdump._pagebatch'] = None\n"
        "from pathlib import Path\n"
        "from cdbdump.codecs import Codec\n"
        "from cdbdump.writers.compress import PageCompressor, native_codecs\n"
        "assert not native_codecs()\n"
        "for codec in (Codec.ZLIB, Codec.LZO, Codec.ZSTD):\n"
        "    with PageCompressor(codec, 4096, threads=2) as pc:\n"
        "        got = pc.compress_pages(Path(sys.argv[1], codec.label).read_bytes())\n"
        "    print(hashlib.sha256(bytes(got.payload) + got.sizes.tobytes()"
        " + got.flags.tobytes()).hexdigest())\n"
    )
    env = {**os.environ, _lzo.ENV_BACKEND: "python-lzo"}
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                          text=True, env=env, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    want = []
    for codec, batch in pages.items():
        with PageCompressor(codec, PS, threads=2) as pc:
            assert pc.native
            got = pc.compress_pages(b"".join(batch))
        want.append(hashlib.sha256(bytes(got.payload) + got.sizes.tobytes()
                                   + got.flags.tobytes()).hexdigest())
    assert proc.stdout.split() == want
