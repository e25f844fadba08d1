"""The kdump writer's I/O shortcuts give the bytes of the plain path.

- the native compressor's chunk outputs go to the file with one pwritev(2), not
  joined first: a sink without pwritev (the joined write) must give the same file;
- with zero pages kept (-d without bit 1), pages in holes of a sparse input are
  not read but compressed from one zero page: a sparse input must give the file
  of the same input written densely.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cdbdump.codecs import Codec
from cdbdump.errors import OutputNoSpaceError
from cdbdump.writers.compress import PageCompressor
from cdbdump.writers.kdump import write_kdump
from cdbdump.writers.sink import OutputFile, create_output
from tests.oracles import (
    ElfLoad,
    KdumpInputs,
    kdump_inputs,
    make_notes,
    make_vmcoreinfo,
    pfn_pattern_pages,
    write_elf_vmcore,
)

PS = 4096
FIRST_PFN = 16
NR_PAGES = 900
ZERO_RUNS = ((100, 400), (401, 402), (700, 770))  # pfn ranges of zero pages
RANDOM_PFNS = (50, 450, 451, 800)  # incompressible: stored raw


def _pages() -> dict[int, bytes]:
    pages = pfn_pattern_pages(range(FIRST_PFN, FIRST_PFN + NR_PAGES))
    for lo, hi in ZERO_RUNS:
        for pfn in range(lo, hi):
            pages[pfn] = bytes(PS)
    rng = np.random.default_rng(9)
    for pfn in RANDOM_PFNS:
        pages[pfn] = rng.integers(0, 256, PS, dtype=np.uint8).tobytes()
    return pages


def _sparse_copy(dense: Path, sparse: Path) -> None:
    """The same bytes with every all-zero 4 KiB file block left a hole."""
    data = dense.read_bytes()
    with sparse.open("wb") as f:
        for off in range(0, len(data), PS):
            block = data[off : off + PS]
            if block.count(0) != len(block):
                f.seek(off)
                f.write(block)
        f.truncate(len(data))


@pytest.fixture(scope="module")
def vmcores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    tmp = tmp_path_factory.mktemp("iopath")
    pages = _pages()
    notes, _ = make_notes(make_vmcoreinfo(), nr_cpus=2)
    data = b"".join(pages[p] for p in range(FIRST_PFN, FIRST_PFN + NR_PAGES))
    dense = tmp / "dense.elf"
    write_elf_vmcore(dense, [ElfLoad(FIRST_PFN * PS, data)], notes, phoff=192)
    sparse = tmp / "sparse.elf"
    _sparse_copy(dense, sparse)
    yield dense, sparse


def _write(path: Path, inputs: KdumpInputs, codec: Codec, *, plain_sink: bool = False,
           exclude_zero: bool = False, **kwargs: Any) -> bytes:
    bitmap2 = inputs.bitmap1.copy()
    bitmap2.clear_range(300, 310)  # excluded pages inside a hole, and a gap in the runs
    bitmap2.clear_range(600, 601)
    with create_output(path, force=True) as out:
        sink: Any = _JoinedSink(out) if plain_sink else out
        write_kdump(sink, inputs.meta, inputs.bitmap1, bitmap2, inputs.memory, codec,
                    exclude_zero, **kwargs)
    return path.read_bytes()


class _JoinedSink:
    """An OutputFile seen without pwritev (and writeback hints): every write joined."""

    def __init__(self, out: OutputFile) -> None:
        self.out = out

    @property
    def size(self) -> int:
        return self.out.size

    def pwrite(self, data: Any, file_offset: int) -> None:
        self.out.pwrite(data, file_offset)


@pytest.mark.parametrize("exclude_zero", [False, True])
@pytest.mark.parametrize("codec", list(Codec))
def test_pwritev_and_holes_give_the_plain_bytes(
    tmp_path: Path, vmcores: tuple[Path, Path], codec: Codec, exclude_zero: bool
) -> None:
    """With zero pages excluded, the native compressor finds them itself (size 0) in
    the pages read; the other codecs get them from a numpy test."""
    dense, sparse = vmcores
    d_in = kdump_inputs(dense, max_mapnr=1024)
    s_in = kdump_inputs(sparse, max_mapnr=1024)
    try:
        # the sparse input really has holes the writer can skip, the dense one none
        pfns = np.arange(FIRST_PFN, FIRST_PFN + NR_PAGES, dtype=np.int64)
        assert d_in.memory.known_zero_frames(pfns) is None
        in_hole = s_in.memory.known_zero_frames(pfns)
        assert in_hole is not None and int(in_hole.sum()) >= 300
        ref = _write(tmp_path / "ref", d_in, codec, plain_sink=True, threads=1,
                     exclude_zero=exclude_zero)
        # windows of 257 and 385 pages: 3 and 4 native chunks of 128 pages or fewer
        for window, threads in [(3, 2), (257, 2), (385, 2), (1 << 16, 2)]:
            for name, inputs in (("dense", d_in), ("sparse", s_in)):
                got = _write(tmp_path / f"{name}-{window}", inputs, codec,
                             window_pages=window, threads=threads, exclude_zero=exclude_zero)
                assert got == ref, (name, window, threads)
    finally:
        d_in.close()
        s_in.close()


def test_native_chunks_stay_separate_parts() -> None:
    pages = b"".join(pfn_pattern_pages(range(300)).values())
    for codec in (Codec.LZO, Codec.ZLIB, Codec.SNAPPY):
        with PageCompressor(codec, PS, threads=2) as pc:
            if not pc.native:
                continue
            packed = pc.compress_pages(pages)
            assert len(packed.parts) == 3  # 300 pages in chunks of at most 128
            assert packed.nbytes == int(packed.sizes.sum()) == len(packed.payload)


def test_compress_with_index_repeats_pages() -> None:
    pages = pfn_pattern_pages(range(4))
    batch = b"".join(pages.values()) + bytes(PS)
    order = np.array([4, 0, 4, 4, 2, 3, 4], dtype=np.int64)
    for codec in Codec:
        with PageCompressor(codec, PS, threads=2) as pc:
            want = pc.compress_pages(b"".join(batch[i * PS : (i + 1) * PS]
                                              for i in order.tolist()))
            got = pc.compress_pages(batch, index=order)
            assert got.payload == want.payload, codec
            assert got.sizes.tolist() == want.sizes.tolist(), codec
            assert got.flags.tolist() == want.flags.tolist(), codec


@pytest.mark.parametrize("limit", [None, 0, 5, 4096 + 7, 3 * 4096])
def test_pwritev_ends_like_pwrite_of_the_joined_parts(tmp_path: Path, limit: int | None) -> None:
    parts = (b"a" * 4096, b"b" * 3, b"c" * 4096 + b"d")
    joined = b"".join(parts)
    outcomes = []
    for name in ("v", "j"):
        path = tmp_path / name
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        out = OutputFile(str(path), fd, limit=limit)
        try:
            if name == "v":
                out.pwritev(parts, 10)
            else:
                out.pwrite(joined, 10)
            written = len(joined)
        except OutputNoSpaceError as exc:
            written = exc.written
            assert (exc.file_offset, exc.requested) == (10, len(joined))
        finally:
            out.close()
        outcomes.append((written, out.size, out.bytes_written, path.read_bytes()))
    assert outcomes[0] == outcomes[1]
