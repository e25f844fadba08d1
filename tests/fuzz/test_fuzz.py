"""The short form of ``make fuzz``: a few hundred mutated vmcores, both modes, no findings."""

from __future__ import annotations

import os
from pathlib import Path

from tests.fuzz.fuzz import fuzz, render

SHORT_INPUTS = int(os.environ.get("CDBDUMP_FUZZ_SHORT", "150"))


def test_short_fuzz_run_finds_nothing(tmp_path: Path) -> None:
    stats = fuzz(SHORT_INPUTS, seed=20261204, workdir=tmp_path, log=lambda _line: None)
    summary = render(stats)
    assert sum(stats.inputs.values()) == SHORT_INPUTS
    assert len(stats.inputs) >= 8, summary  # most categories drawn
    assert stats.nr_findings == 0, summary
