"""-q: the RFC kernel bitmap is used when sound, and every refusal falls back with a reason."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cdbdump.codecs import Codec
from cdbdump.fileio import MappedFile
from cdbdump.mm.levels import DumpLevel
from cdbdump.pipeline import DumpOptions, dump
from cdbdump.report import PathTaken
from cdbdump.vmcore.kdumpfile import KdumpFile
from tests.builders import SyntheticKernel

MakeVmcore = Callable[..., tuple[SyntheticKernel, Path]]


def _dump(vmcore: Path, out: Path, level: int, *, q: bool) -> tuple[Any, np.ndarray]:
    report = dump(
        DumpOptions(vmcore=vmcore, dumpfile=out, dump_level=DumpLevel(level), codec=Codec.ZSTD,
                    use_kernel_bitmap=q)
    )
    with MappedFile(out) as f:
        kdump = KdumpFile.open(f)
        bits = kdump.bitmap2.get_bools(0, kdump.max_mapnr).copy()
    return report, bits


@pytest.mark.parametrize("dialect", ["5.10", "6.1", "6.12", "7.1"])
def test_kernel_bitmap_is_used_and_matches_the_scan(
    tiny_vmcore: MakeVmcore, tmp_path: Path, dialect: str
) -> None:
    # a machine without makedumpfile's corner cases: there the kernel's view and the
    # mem_map scan agree page for page, so both paths must give the same dump
    kernel, vmcore = tiny_vmcore(dialect, seed=7, crash_dump_bitmap=31, catalog=False)
    q_report, q_bits = _dump(vmcore, tmp_path / "q.kdump", 31, q=True)
    l_report, l_bits = _dump(vmcore, tmp_path / "legacy.kdump", 31, q=False)
    assert q_report.path_taken is PathTaken.BITMAP
    assert l_report.path_taken is PathTaken.LEGACY
    assert q_report.fallback_reason is None
    expected = kernel.first_bitmap() & kernel.expected_kernel_bitmap()[: kernel.max_mapnr]
    assert np.array_equal(q_bits, expected)
    assert np.array_equal(q_bits, l_bits)
    assert (tmp_path / "q.kdump").read_bytes() == (tmp_path / "legacy.kdump").read_bytes()
    # the report's counters come from the struct the kernel filled
    values = kernel.crash_dump_bitmap_info_values()
    assert q_report.counts.free == values["free_pages"]
    assert q_report.counts.user == values["user_pages"]
    assert q_report.counts.zero == l_report.counts.zero > 0


def _break(**fields: int) -> dict[str, Any]:
    return {"crash_dump_bitmap": 31, "crash_dump_bitmap_info": fields}


@pytest.mark.parametrize(
    ("kwargs", "level", "reason"),
    [
        ({}, 31, "VMCOREINFO has no SYMBOL(crash_dump_bitmap_info)"),
        (_break(version=2), 31, "has version 2, expected 1"),
        (_break(bitmap=0), 31, "is empty (bitmap=0x0"),
        (_break(bitmap_size=0), 31, "is empty"),
        (_break(bitmap_size=16), 31, "bitmap_size 16 bytes covers 128 frames"),
        (_break(bitmap=0x7FFF_0000_0000), 31, "is not in the dump"),
        (_break(free_pages=1 << 60), 31, "free_pages=1152921504606846976 exceeds max_mapnr"),
        ({"crash_dump_bitmap": 31}, 1, "the kernel excluded"),
        (
            {
                "crash_dump_bitmap": 31,
                "vmcoreinfo_overrides": {"SYMBOL(crash_dump_bitmap_info)": 0xFFFF_8880_0000_1000},
            },
            31,
            "is not a kernel-image address",
        ),
        (
            {
                "crash_dump_bitmap": 31,
                "vmcoreinfo_overrides": {"SYMBOL(crash_dump_bitmap_info)": 0xFFFF_FFFF_BF00_0000},
            },
            31,
            "is not in the dump",
        ),
    ],
    ids=[
        "no-symbol", "version", "null-bitmap", "zero-size", "too-short", "bitmap-outside",
        "implausible-counter", "level-mismatch", "not-kernel-image", "struct-outside",
    ],
)
def test_every_refusal_falls_back_to_the_scan(
    tiny_vmcore: MakeVmcore, tmp_path: Path, kwargs: dict[str, Any], level: int, reason: str
) -> None:
    kernel, vmcore = tiny_vmcore("6.1", seed=11, **kwargs)
    report, bits = _dump(vmcore, tmp_path / "q.kdump", level, q=True)
    assert report.path_taken is PathTaken.FALLBACK
    assert report.fallback_reason is not None
    assert reason in report.fallback_reason
    assert "\n" not in report.fallback_reason
    # the fallback is the legacy scan: the dump is makedumpfile's at that level
    assert np.array_equal(bits, kernel.expected_dumpable(level))
    assert report.counts.free == kernel.expected_counts(level).free


def test_without_q_the_kernel_bitmap_is_ignored(tiny_vmcore: MakeVmcore, tmp_path: Path) -> None:
    kernel, vmcore = tiny_vmcore("6.1", seed=11, crash_dump_bitmap=31)
    report, bits = _dump(vmcore, tmp_path / "d.kdump", 31, q=False)
    assert report.path_taken is PathTaken.LEGACY
    assert np.array_equal(bits, kernel.expected_dumpable(31))


def test_refiltering_a_kdump_input_uses_its_kernel_bitmap(
    tiny_vmcore: MakeVmcore, tmp_path: Path
) -> None:
    # the -d 0 dump still holds the kernel's bitmap pages, so -q on it takes the
    # kernel's bitmap and gives the very bytes of -q on the ELF vmcore
    _kernel, vmcore = tiny_vmcore("6.1", seed=7, crash_dump_bitmap=31, catalog=False)
    _dump(vmcore, tmp_path / "d0.kdump", 0, q=False)
    direct, _ = _dump(vmcore, tmp_path / "q.kdump", 31, q=True)
    refilter, _ = _dump(tmp_path / "d0.kdump", tmp_path / "rq.kdump", 31, q=True)
    assert direct.path_taken is refilter.path_taken is PathTaken.BITMAP
    assert (tmp_path / "rq.kdump").read_bytes() == (tmp_path / "q.kdump").read_bytes()
