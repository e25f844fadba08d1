"""Flattened (makedumpfile -F) input: the index reproduces the rearranged file."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from cdbdump.errors import CorruptDumpError, TruncatedDumpError
from cdbdump.fileio import MappedFile
from cdbdump.formats.flattened import MAKEDUMPFILE_SIGNATURE, MAX_SIZE_MDF_HEADER
from cdbdump.vmcore.flattened import FlattenedFile

RNG = np.random.default_rng(7)


def _flatten(path: Path, records: list[tuple[int, bytes]], *, end: bool = True) -> None:
    head = struct.pack(">16sqq", MAKEDUMPFILE_SIGNATURE, 1, 1).ljust(MAX_SIZE_MDF_HEADER, b"\0")
    body = b"".join(struct.pack(">qq", off, len(data)) + data for off, data in records)
    path.write_bytes(head + body + (struct.pack(">qq", -1, -1) if end else b""))


def _rearranged(records: list[tuple[int, bytes]]) -> bytes:
    size = max(off + len(data) for off, data in records)
    out = bytearray(size)
    for off, data in records:  # what makedumpfile -R does: later records win
        out[off : off + len(data)] = data
    return bytes(out)


@pytest.mark.parametrize("overlap", [False, True])
def test_views_equal_the_rearranged_file(tmp_path: Path, overlap: bool) -> None:
    blob = RNG.integers(0, 256, 40000, dtype=np.uint8).tobytes()
    cuts = sorted(RNG.choice(np.arange(1, 40000), 30, replace=False).tolist())
    chunks = [(lo, blob[lo:hi]) for lo, hi in zip([0, *cuts], [*cuts, 40000], strict=True)]
    records = [chunks[i] for i in RNG.permutation(len(chunks))]
    records = [r for r in records if r[0] != cuts[5]]  # a hole: reads as zero
    if overlap:
        records.append((1000, b"\xee" * 5000))
        records.append((3000, b"\x11" * 100))
    path = tmp_path / "flat"
    _flatten(path, records)
    want = _rearranged(records)
    with FlattenedFile(MappedFile(path)) as flat:
        assert flat.size == len(want)
        for lo, n in [(0, len(want)), (999, 5002), (cuts[5] - 3, 10), (39990, 10), (5, 0)]:
            assert bytes(flat.view(lo, n)) == want[lo : lo + n]
        with pytest.raises(TruncatedDumpError):
            flat.view(len(want) - 1, 2)


def test_bad_streams(tmp_path: Path) -> None:
    path = tmp_path / "flat"
    _flatten(path, [(0, b"abc")], end=False)
    with pytest.raises(TruncatedDumpError, match="flattened data header"):
        FlattenedFile(MappedFile(path))
    _flatten(path, [(-5, b"abc")])
    with pytest.raises(CorruptDumpError, match="impossible"):
        FlattenedFile(MappedFile(path))
    _flatten(path, [(0, b"abc" * 10)])
    path.write_bytes(path.read_bytes()[:MAX_SIZE_MDF_HEADER + 20])
    with pytest.raises(TruncatedDumpError, match="record data"):
        FlattenedFile(MappedFile(path))
