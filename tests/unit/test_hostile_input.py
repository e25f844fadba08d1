"""Hostile and absurd inputs: one line or a warning, never a traceback, never pages dropped
on a number the kernel cannot have; outputs refused before any memory is read."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from cdbdump.errors import UnsupportedError
from cdbdump.fileio import MappedFile
from cdbdump.mm.levels import DumpLevel
from cdbdump.pipeline import DumpOptions, dump
from cdbdump.report import DumpReport
from cdbdump.vmcore.kdumpfile import KdumpFile
from tests.builders import SyntheticKernel

ROOT = Path(__file__).resolve().parents[2]
Make = Callable[..., SyntheticKernel]


def _dump(kernel: SyntheticKernel, tmp_path: Path, level: int = 31) -> tuple[DumpReport,
                                                                             np.ndarray]:
    vmcore = tmp_path / "vmcore"
    kernel.write(vmcore)
    out = tmp_path / "out.kdump"
    report = dump(DumpOptions(vmcore=vmcore, dumpfile=out, dump_level=DumpLevel(level)))
    with MappedFile(out) as f:
        kd = KdumpFile.open(f)
        assert not kd.is_incomplete
        return report, kd.bitmap2.get_bools(0, kd.max_mapnr)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cdbdump", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=120, check=False)


@pytest.mark.parametrize("key", ["NUMBER(PAGE_OFFLINE_MAPCOUNT_VALUE)",
                                 "NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)"])
def test_absurd_page_type_keeps_pages_and_warns(tiny_kernel: Make, tmp_path: Path,
                                                key: str) -> None:
    kernel = tiny_kernel("6.1", seed=4, fresh=True, vmcoreinfo_overrides={key: -1})
    report, kept = _dump(kernel, tmp_path)
    expected = kernel.expected_dumpable(31)
    assert not (expected & ~kept).any()  # nothing the real answer keeps was dropped
    assert any(key in w for w in report.warnings)


def test_missing_pg_swapbacked_keeps_swapcache_only_pages(tiny_kernel: Make,
                                                          tmp_path: Path) -> None:
    kernel = tiny_kernel("6.1", seed=4, fresh=True, vmcoreinfo_drop=("NUMBER(PG_swapbacked)",))
    report, kept = _dump(kernel, tmp_path)
    assert not (kernel.expected_dumpable(31) & ~kept).any()
    assert any("PG_swapbacked" in w for w in report.warnings)


def test_size_page_minus_one_degrades(tiny_kernel: Make, tmp_path: Path) -> None:
    kernel = tiny_kernel("6.1", seed=4, fresh=True, vmcoreinfo_overrides={"SIZE(page)": -1})
    report, kept = _dump(kernel, tmp_path)
    assert report.levels_not_applied and "SIZE(page)" in report.levels_not_applied
    assert not (kernel.expected_dumpable(31) & ~kept).any()


@pytest.mark.parametrize(("key", "value", "warning"), [
    ("CRASHTIME", "99999999999999999999999", "CRASHTIME"),
    ("CRASHTIME", "-5", "CRASHTIME"),
    ("SYMBOL(init_uts_ns)", "zz", "init_uts_ns"),
    ("OFFSET(uts_namespace.name)", "xyz", "uts_namespace.name"),
])
def test_cosmetic_fields_degrade_with_a_warning(tiny_kernel: Make, tmp_path: Path, key: str,
                                                value: str, warning: str) -> None:
    kernel = tiny_kernel("6.1", seed=4, fresh=True, vmcoreinfo_overrides={key: value})
    report, kept = _dump(kernel, tmp_path)
    assert any(warning in w for w in report.warnings), report.warnings
    assert np.array_equal(kept, kernel.expected_dumpable(31))


def test_huge_phys_base_is_one_line(tiny_kernel: Make, tmp_path: Path) -> None:
    kernel = tiny_kernel("6.1", seed=4, fresh=True,
                         vmcoreinfo_overrides={"NUMBER(phys_base)": 10 ** 25})
    vmcore = tmp_path / "vmcore"
    kernel.write(vmcore)
    proc = _cli("-d", "31", str(vmcore), str(tmp_path / "out"))
    assert "Traceback" not in proc.stderr
    assert proc.returncode in (0, 1)


@pytest.mark.parametrize("page_size", [8192, 2048])
def test_pagesize_other_than_4096_is_refused(tiny_kernel: Make, tmp_path: Path,
                                             page_size: int) -> None:
    kernel = tiny_kernel("6.1", seed=4, fresh=True, vmcoreinfo_overrides={"PAGESIZE": page_size})
    vmcore = tmp_path / "vmcore"
    kernel.write(vmcore)
    with pytest.raises(UnsupportedError, match="PAGESIZE"):
        dump(DumpOptions(vmcore=vmcore, dumpfile=tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_fifo_input_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        f"cat /dev/zero | head -c 100000 | {sys.executable} -m cdbdump -d 31 /dev/stdin "
        f"{tmp_path / 'out'}", shell=True, cwd=ROOT, text=True, capture_output=True,
        timeout=120, check=False)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "pipe or FIFO" in proc.stderr


def test_report_json_is_created_like_the_dump(tiny_vmcore: Callable[..., tuple[
        SyntheticKernel, Path]], tmp_path: Path) -> None:
    _, vmcore = tiny_vmcore("6.1", seed=4)
    out, rj = tmp_path / "out", tmp_path / "r.json"
    old = os.umask(0)
    try:
        assert _cli("-d", "31", "--report-json", str(rj), str(vmcore), str(out)).returncode == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(rj.stat().st_mode) == 0o600
    # an existing report without -f: refused before reading memory, no dump made
    out.unlink()
    proc = _cli("-d", "31", "--report-json", str(rj), str(vmcore), str(out))
    assert proc.returncode == 1 and "already exists" in proc.stderr and not out.exists()
    # a symlink (to a passwd-like file) is never written through, even with -f
    victim = tmp_path / "passwd"
    victim.write_text("root:x:0:0\n")
    link = tmp_path / "link.json"
    link.symlink_to(victim)
    proc = _cli("-f", "-d", "31", "--report-json", str(link), str(vmcore), str(out))
    assert proc.returncode == 1 and "symbolic link" in proc.stderr
    assert victim.read_text() == "root:x:0:0\n"
    # the input itself, or the dump file, never
    for target in (vmcore, out):
        before = vmcore.stat().st_size
        proc = _cli("-f", "-d", "31", "--report-json", str(target), str(vmcore), str(out))
        assert proc.returncode == 1 and "same file" in proc.stderr
        assert vmcore.stat().st_size == before
    # -f overwrites a regular file
    assert _cli("-f", "-d", "31", "--report-json", str(rj), str(vmcore),
                str(out)).returncode == 0
