"""zstd in cdbdump._pagebatch.decompress_pages (the reader's batch decoder).

reference: makedumpfile readpage_kdump_compressed: ZSTD_decompress into one page, and
the page is good only when exactly page_size bytes came out. The oracle is
cdbdump.codecs.decompress_page (the per-page path: python-zstandard and its own,
newer, libzstd): frames it writes decode natively; what it accepts, the native
decoder accepts with the same bytes (the reader names a page the native decoder
rejects through the per-page path). The other way round only on frames damaged
mid-block, where newer libzstd notices more corruption (no checksum in these frames).
"""

from __future__ import annotations

import numpy as np
import pytest
import zstandard

from cdbdump.codecs import Codec, decompress_page
from cdbdump.errors import CorruptDumpError
from cdbdump.vmcore import pagedecode
from cdbdump.writers import compress
from cdbdump.writers.compress import PageCompressor

PS = 4096
ZSTD = Codec.ZSTD.flag
pagebatch = compress._pagebatch

pytestmark = pytest.mark.skipif(
    pagebatch is None or "zstd" not in pagebatch.CODECS, reason="no native zstd"
)  # CI builds it: test_pagebatch.py::test_native_module_is_built_in_ci


def _decode(stored: list[bytes], flags: list[int]) -> tuple[int, bytes]:
    data = np.frombuffer(b"".join(stored) or b"\0", dtype=np.uint8)
    sizes = np.array([len(s) for s in stored], dtype=np.uint32)
    offsets = np.concatenate(([0], np.cumsum(sizes, dtype=np.int64)[:-1])).astype(np.int64)
    out = np.zeros(len(stored) * PS, dtype=np.uint8)
    failed = pagebatch.decompress_pages(data, offsets, sizes,
                                        np.array(flags, dtype=np.uint32), PS, out)
    return failed, out.tobytes()


def _pages(count: int) -> list[bytes]:
    rng = np.random.default_rng(count)
    text = b"".join(b"task_struct %d comm\0" % i for i in range(500))
    kinds = [lambda i: bytes(PS), lambda i: rng.integers(0, 256, PS, np.uint8).tobytes(),
             lambda i: text[i % 61 : i % 61 + PS], lambda i: bytes([i % 251]) * PS,
             lambda i: rng.integers(0, 3, PS, np.uint8).tobytes()]
    return [kinds[i % len(kinds)](i) for i in range(count)]


def test_native_zstd_round_trip_and_python_zstandard_frames() -> None:
    pages = _pages(300)
    with PageCompressor(Codec.ZSTD, PS, threads=2) as pc:
        got = pc.compress_pages(b"".join(pages))
    ends = np.cumsum(got.sizes, dtype=np.int64)
    payload = bytes(got.payload)
    stored = [payload[int(e - s) : int(e)] for e, s in zip(ends, got.sizes, strict=True)]
    assert {0, ZSTD} <= set(got.flags.tolist())  # raw pages in the batch too
    assert _decode(stored, got.flags.tolist()) == (-1, b"".join(pages))
    # frames without a content size (another writer's choice) decode the same
    bare = zstandard.ZstdCompressor(level=3, write_content_size=False)
    small = [p for p in pages[:40] if len(bare.compress(p)) < PS]  # stored ones only
    assert len(small) >= 20
    assert _decode([bare.compress(p) for p in small], [ZSTD] * len(small)) == (
        -1, b"".join(small))


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (zstandard.ZstdCompressor(level=1).compress(bytes(PS + 1)), "larger than a page"),
        (zstandard.ZstdCompressor(level=1).compress(bytes(PS - 1)), "shorter than a page"),
        (zstandard.ZstdCompressor(level=1, write_content_size=False).compress(bytes(2 * PS)),
         "no content size, too long"),
        (zstandard.ZstdCompressor(level=1).compress(b"x" * PS)[:-3], "truncated"),
        (b"\x28\xb5\x2f\xfd" + bytes(20), "garbage after the magic"),
        (b"not zstd at all", "no magic"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_bad_zstd_page_is_reported_by_index_like_the_python_path(bad: bytes, why: str) -> None:
    good = zstandard.ZstdCompressor(level=1).compress(b"ok" * (PS // 2))
    failed, out = _decode([good, good, bad, good], [ZSTD] * 4)
    assert failed == 2, why
    assert out[: 2 * PS] == b"ok" * PS  # the pages before it were decoded
    with pytest.raises(CorruptDumpError):
        decompress_page(ZSTD, bad, PS)


def test_reader_decodes_zstd_natively() -> None:
    assert ZSTD in pagedecode.native_flags()


def test_native_accepts_what_the_per_page_path_accepts_on_damaged_frames() -> None:
    rng = np.random.default_rng(1)
    text = b"".join(b"task_struct %d comm\0" % i for i in range(500))
    compressor = zstandard.ZstdCompressor(level=1)
    forms = [compressor.compress(p) for p in (text[:PS], bytes(range(256)) * 16,
                                              rng.integers(0, 4, PS, np.uint8).tobytes())]
    cases = []
    for form in forms:
        cases += [form + b"\0", form + b"garbage", form + form]  # more after the frame
        for _ in range(600):
            damaged = bytearray(form)
            damaged[int(rng.integers(len(damaged)))] ^= 1 << int(rng.integers(8))
            cases.append(bytes(damaged))
    both_reject = only_newer_rejects = 0
    for data in cases:
        try:
            want: bytes | None = decompress_page(ZSTD, data, PS, file_offset=0)
        except CorruptDumpError:
            want = None
        failed, got = _decode([data], [ZSTD])
        if want is not None:
            assert (failed, got) == (-1, want), data.hex()
        elif failed == 0:
            both_reject += 1
        else:
            only_newer_rejects += 1
    # the damage is noticed, by both nearly always
    assert both_reject > 10 * only_newer_rejects + len(cases) // 10
