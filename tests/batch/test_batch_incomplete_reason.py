"""batch names why a dump came out incomplete, not "filled up" for every cause.

(A full output file system is tested for real in test_batch_local with RLIMIT_FSIZE.)
"""

from __future__ import annotations

import struct
from pathlib import Path

from cdbdump.batch.work import BatchOptions, run_one
from tests.builders import SyntheticKernel

PAGE = 4096


def _truncated_vmcore(tmp_path: Path) -> Path:
    """A vmcore whose last PT_LOAD runs 8 pages past the end of the file."""
    kernel = SyntheticKernel("6.1", seed=4, ram_size=32 << 20)
    vmcore = tmp_path / "in" / "vmcore"
    vmcore.parent.mkdir()
    kernel.write(vmcore)
    raw = vmcore.read_bytes()[:0x4000]
    e_phoff, = struct.unpack_from("<Q", raw, 0x20)
    e_phnum, = struct.unpack_from("<H", raw, 0x38)
    ends = [p_offset + filesz for p_type, _f, p_offset, _v, _p, filesz, _m, _a in
            (struct.unpack_from("<IIQQQQQQ", raw, e_phoff + 56 * i) for i in range(e_phnum))
            if p_type == 1]
    with vmcore.open("r+b") as f:
        f.truncate(max(ends) - 8 * PAGE)
    return vmcore


def test_unreadable_input_pages_are_named_as_such(tmp_path: Path) -> None:
    vmcore = _truncated_vmcore(tmp_path)
    out = tmp_path / "out" / "vmcore.kdump"
    out.parent.mkdir()
    outcome = run_one(vmcore, out, BatchOptions(dump_level=0))
    assert outcome.status == "error"
    assert outcome.error is not None
    assert "filled up" not in outcome.error
    assert "8 pages the PT_LOADs say are stored cannot be read" in outcome.error
    assert "past the end of the file" in outcome.error
    assert not out.exists()
