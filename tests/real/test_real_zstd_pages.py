"""zstd on real kernel memory: cdbdump._pagebatch (the host's libzstd, makedumpfile's
ZSTD_compressCCtx level 1) against python-zstandard (its bundled libzstd, the Python
path's compressor) on every non-zero page of real Debian vmcores.

The whole-dump comparisons with makedumpfile 1.7.6 (test_real_readers.py) see the
pages a dump level keeps; this sees every page the guest had. The oracle is the
writer's fallback path: python-zstandard's multi_compress_to_buffer, one frame per
page, with makedumpfile's raw rule applied in Python (PageCompressor._assemble).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cdbdump.codecs import Codec
from cdbdump.fileio import MappedFile
from cdbdump.vmcore.elfcore import ElfCore
from cdbdump.writers.compress import PageCompressor, native_codecs
from tests.ci_gate import IN_CI

pytestmark = pytest.mark.real

PS = 4096
CHUNK_PAGES = 8192  # compared a chunk at a time (32 MiB of pages)


def _nonzero_page_chunks(elf_path: Path) -> list[np.ndarray]:
    """The vmcore's non-zero whole pages, CHUNK_PAGES at a time (copies)."""
    with MappedFile(elf_path) as f:
        loads = ElfCore.parse(f).loads
    data = np.memmap(elf_path, dtype=np.uint8, mode="r")
    chunks = []
    for load in loads:
        skip = -load.paddr % PS  # to the first whole page of the segment
        nr_pages = max(0, load.filesz - skip) // PS
        start = load.file_offset + skip
        for lo in range(0, nr_pages, CHUNK_PAGES):
            hi = min(nr_pages, lo + CHUNK_PAGES)
            rows = data[start + lo * PS : start + hi * PS].reshape(-1, PS)
            chunks.append(np.ascontiguousarray(rows[rows.any(axis=1)]))
    return [c for c in chunks if len(c)]


@pytest.mark.parametrize("vmcore", ["debian12-6.1-1g", "debian11-5.10-1g"], indirect=True)
def test_native_zstd_is_python_zstandard_on_real_pages(vmcore) -> None:  # type: ignore[no-untyped-def]
    if Codec.ZSTD not in native_codecs():
        if IN_CI:
            pytest.fail("cdbdump._pagebatch was built without zstd (libzstd-dev?)")
        pytest.skip("cdbdump._pagebatch was built without zstd")
    nr_pages = nr_raw = 0
    with (PageCompressor(Codec.ZSTD, PS, threads=2) as native,
          PageCompressor(Codec.ZSTD, PS, threads=2, native=False) as python):
        assert native.native and python._zstd_multi
        for rows in _nonzero_page_chunks(vmcore.raw):
            got, want = native.compress_pages(rows), python.compress_pages(rows)
            assert np.array_equal(got.sizes, want.sizes)
            assert np.array_equal(got.flags, want.flags)
            assert bytes(got.payload) == bytes(want.payload)
            nr_pages += len(rows)
            nr_raw += int((got.flags == 0).sum())
    assert nr_pages > 10_000 and 0 < nr_raw < nr_pages  # real memory, some incompressible
