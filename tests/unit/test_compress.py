"""Per-page codecs: makedumpfile's exact settings, the raw rule, batches, bounded decompression."""

from __future__ import annotations

import builtins
import zlib
from typing import Any

import cramjam
import lzo
import numpy as np
import pytest
import zstandard

from cdbdump import codecs
from cdbdump.codecs import Codec, codec_for_flags, decompress_page
from cdbdump.errors import CorruptDumpError, UnsupportedError
from cdbdump.writers.compress import PageCompressor

PS = 4096
RNG = np.random.default_rng(20240601)


def _text_page(seed: int) -> bytes:
    words = [b"kernel", b"page", b"struct", b"\0\0\0\0", b"0xffff8880", b"slab"]
    out = b"".join(words[(seed * 7 + i * 13) % len(words)] for i in range(2000))
    return out[:PS]


def _random_page() -> bytes:
    return RNG.integers(0, 256, PS, dtype=np.uint8).tobytes()


def _batch() -> list[bytes]:
    return [_text_page(1), _random_page(), bytes(PS), b"\xaa" * PS, _text_page(2),
            _random_page()]


# -- codec identity ------------------------------------------------------------------------


def test_codec_flags_are_makedumpfile_status_bits() -> None:
    # diskdump_mod.h DUMP_DH_COMPRESSED_*: zlib 0x1, lzo 0x2, snappy 0x4, zstd 0x20, none 0
    assert [c.flag for c in Codec] == [0, 0x1, 0x2, 0x4, 0x20]
    for codec in Codec:
        assert codec_for_flags(codec.flag) is codec
    with pytest.raises(CorruptDumpError):
        codec_for_flags(0x8)


def test_each_codec_produces_makedumpfile_bytes() -> None:
    page = _text_page(3)
    expected = {
        Codec.ZLIB: zlib.compress(page, 1),  # compress2(Z_BEST_SPEED)
        Codec.LZO: lzo.compress(page, 1, False),  # lzo1x_1, no python-lzo header
        Codec.SNAPPY: bytes(cramjam.snappy.compress_raw(page)),  # raw, unframed
        Codec.ZSTD: zstandard.ZstdCompressor(level=1).compress(page),
    }
    for codec, want in expected.items():
        with PageCompressor(codec, PS, threads=1) as pc:
            got = pc.compress_pages(page)
        assert got.payload == want, codec
        assert got.flags.tolist() == [codec.flag]
        assert got.sizes.tolist() == [len(want)]


def test_zlib_stream_has_zlib_wrapper_level_1() -> None:
    with PageCompressor(Codec.ZLIB, PS, threads=1) as pc:
        out = pc.compress_pages(_text_page(4)).payload
    assert out[0] == 0x78 and out[1] == 0x01  # CMF deflate/32K window, FLEVEL 0 (fastest)


def test_zstd_frame_has_content_size_and_no_checksum() -> None:
    with PageCompressor(Codec.ZSTD, PS, threads=1) as pc:
        out = pc.compress_pages(_text_page(5)).payload
    assert out[:4] == b"\x28\xb5\x2f\xfd"
    params = zstandard.get_frame_parameters(out)
    assert params.content_size == PS
    assert not params.has_checksum
    assert params.dict_id == 0


def test_snappy_is_raw_not_framed() -> None:
    with PageCompressor(Codec.SNAPPY, PS, threads=1) as pc:
        out = pc.compress_pages(_text_page(6)).payload
    assert out[:2] == b"\x80\x20"  # varint 4096: the raw format starts with the length
    assert not out.startswith(b"\xff\x06\x00\x00sNaPpY")


# -- the raw rule ------------------------------------------------------------------------


@pytest.mark.parametrize("codec", [Codec.ZLIB, Codec.LZO, Codec.SNAPPY, Codec.ZSTD])
def test_incompressible_page_is_stored_raw(codec: Codec) -> None:
    page = _random_page()
    with PageCompressor(codec, PS, threads=1) as pc:
        got = pc.compress_pages(page)
    assert got.flags.tolist() == [0]
    assert got.sizes.tolist() == [PS]
    assert got.payload == page


@pytest.mark.parametrize("delta", [-1, 0, 1])
def test_compressed_form_kept_only_when_strictly_smaller(
    monkeypatch: pytest.MonkeyPatch, delta: int
) -> None:
    # a fake codec whose output is page_size + delta bytes (the Python path; the
    # native one's rule: tests/unit/test_pagebatch.py)
    fake = b"\x01" * (PS + delta)
    page = _text_page(7)
    with PageCompressor(Codec.ZLIB, PS, threads=1, native=False) as pc:
        monkeypatch.setattr(pc, "_page_function", lambda page: fake)
        got = pc.compress_pages(page)
    if delta < 0:
        assert (got.flags.tolist(), got.payload) == ([Codec.ZLIB.flag], fake)
    else:
        assert (got.flags.tolist(), got.payload) == ([0], page)


def test_none_codec_stores_every_page_raw() -> None:
    pages = _batch()
    with PageCompressor(Codec.NONE, PS) as pc:
        got = pc.compress_pages(b"".join(pages))
    assert bytes(got.payload) == b"".join(pages)
    assert got.flags.tolist() == [0] * len(pages)
    assert got.sizes.tolist() == [PS] * len(pages)


# -- batches -------------------------------------------------------------------------------


def _split(result: Any) -> list[bytes]:
    ends = np.cumsum(result.sizes)
    starts = ends - result.sizes
    payload = bytes(result.payload)
    return [payload[s:e] for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]


@pytest.mark.parametrize("codec", list(Codec))
def test_batch_equals_page_by_page_and_round_trips(codec: Codec) -> None:
    pages = _batch() * 30  # 180 pages: enough to use the thread pool / zstd multi path
    with PageCompressor(codec, PS, threads=2) as pc:
        batch = pc.compress_pages(b"".join(pages))
        singles = [pc.compress_pages(p) for p in pages]
    assert batch.sizes.tolist() == [int(s.sizes[0]) for s in singles]
    assert batch.flags.tolist() == [int(s.flags[0]) for s in singles]
    assert bytes(batch.payload) == b"".join(bytes(s.payload) for s in singles)
    for stored, flags, page in zip(_split(batch), batch.flags.tolist(), pages, strict=True):
        assert decompress_page(flags, stored, PS) == page


@pytest.mark.parametrize("threads", [2, 3, 5])
@pytest.mark.parametrize("codec", list(Codec))
def test_threads_do_not_change_output(codec: Codec, threads: int) -> None:
    data = b"".join(_batch() * 70)  # 420 pages: every thread gets a chunk of >= 64
    with (PageCompressor(codec, PS, threads=1) as one,
          PageCompressor(codec, PS, threads=threads) as many):
        a = one.compress_pages(data)
        b = many.compress_pages(data)
        assert many._pool is not None or codec in (Codec.NONE, Codec.ZSTD)  # pool really used
    assert bytes(a.payload) == bytes(b.payload)
    assert a.sizes.tolist() == b.sizes.tolist()
    assert a.flags.tolist() == b.flags.tolist()


def test_select_compresses_only_selected_pages() -> None:
    pages = _batch() * 20
    select = np.array([i % 3 != 0 for i in range(len(pages))])
    with PageCompressor(Codec.ZSTD, PS) as pc:
        picked = pc.compress_pages(np.frombuffer(b"".join(pages), dtype=np.uint8), select)
        want = pc.compress_pages([p for p, s in zip(pages, select, strict=True) if s])
    assert bytes(picked.payload) == bytes(want.payload)
    assert len(picked) == int(select.sum())


def test_batch_rejects_partial_pages() -> None:
    with PageCompressor(Codec.ZLIB, PS) as pc, pytest.raises(ValueError, match="whole number"):
        pc.compress_pages(b"x" * (PS + 1))


def test_zstd_without_multi_compress_uses_the_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"".join(_batch() * 30)
    with PageCompressor(Codec.ZSTD, PS, threads=2, native=False) as multi:
        assert multi._zstd_multi
        want = multi.compress_pages(data)
    with PageCompressor(Codec.ZSTD, PS, threads=2, native=False) as pool:
        pool._zstd_multi = False
        got = pool.compress_pages(data)
        assert pool._pool is not None
    assert bytes(got.payload) == bytes(want.payload)


# -- availability --------------------------------------------------------------------------


@pytest.mark.parametrize(("codec", "module", "package"),
                         [(Codec.SNAPPY, "cramjam", "cramjam")])  # LZO: test_lzo.py
def test_missing_optional_module_names_the_pypi_package(
    monkeypatch: pytest.MonkeyPatch, codec: Codec, module: str, package: str
) -> None:
    real_import = builtins.__import__

    def fake_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == module:
            raise ImportError(f"No module named {module!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(codecs.importlib, "import_module",
                        lambda name: fake_import(name))
    with pytest.raises(UnsupportedError, match=package) as info:
        codec.check_available()
    assert codec.makedumpfile_option in str(info.value)
    Codec.ZLIB.check_available()  # zlib and zstd are always there
    Codec.ZSTD.check_available()


# -- decompression -------------------------------------------------------------------------


@pytest.mark.parametrize("codec", [Codec.ZLIB, Codec.LZO, Codec.SNAPPY, Codec.ZSTD])
def test_garbage_is_corrupt_dump_error_with_offset(codec: Codec) -> None:
    with pytest.raises(CorruptDumpError) as info:
        decompress_page(codec.flag, b"\x13\x37garbage" * 5, PS, file_offset=0x1234)
    assert info.value.file_offset == 0x1234


@pytest.mark.parametrize("codec", [Codec.ZLIB, Codec.LZO, Codec.SNAPPY, Codec.ZSTD])
def test_output_is_bounded_to_one_page(codec: Codec) -> None:
    two_pages = _text_page(8) * 2
    stored = {
        Codec.ZLIB: zlib.compress(two_pages, 1),
        Codec.LZO: lzo.compress(two_pages, 1, False),
        Codec.SNAPPY: bytes(cramjam.snappy.compress_raw(two_pages)),
        Codec.ZSTD: zstandard.ZstdCompressor(level=1).compress(two_pages),
    }[codec]
    with pytest.raises(CorruptDumpError):
        decompress_page(codec.flag, stored, PS)


def test_zstd_without_content_size_is_bounded() -> None:
    stored = zstandard.ZstdCompressor(level=1, write_content_size=False).compress(bytes(3 * PS))
    with pytest.raises(CorruptDumpError):
        decompress_page(Codec.ZSTD.flag, stored, PS)


@pytest.mark.parametrize("codec", [Codec.ZLIB, Codec.ZSTD, Codec.SNAPPY])
def test_short_output_is_corrupt(codec: Codec) -> None:
    half = _text_page(9)[: PS // 2]
    stored = {
        Codec.ZLIB: zlib.compress(half, 1),
        Codec.SNAPPY: bytes(cramjam.snappy.compress_raw(half)),
        Codec.ZSTD: zstandard.ZstdCompressor(level=1).compress(half),
    }[codec]
    with pytest.raises(CorruptDumpError, match="decompress"):
        decompress_page(codec.flag, stored, PS)


def test_raw_page_must_be_exactly_one_page() -> None:
    assert decompress_page(0, b"\x05" * PS, PS) == b"\x05" * PS
    with pytest.raises(CorruptDumpError, match="raw page"):
        decompress_page(0, b"\x05" * (PS - 1), PS, file_offset=99)


def test_labels_and_availability() -> None:
    assert [c.label for c in Codec] == ["none", "zlib", "lzo", "snappy", "zstd"]
    assert all(c.available for c in Codec)  # the dev venv has python-lzo and cramjam
    Codec.LZO.check_available()
