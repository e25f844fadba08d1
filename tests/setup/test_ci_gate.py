"""Under CI every skip fails (tests/ci_gate.py); outside CI a skip is a skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import ci_gate

REPO = Path(__file__).resolve().parents[2]
PROBE = '''
import pytest

from tests import ci_gate
pytest.importorskip("{module}")

def test_skips():
    pytest.skip("no such component")

@pytest.mark.skipif(True, reason="marked")
def test_marked():
    pass

@pytest.mark.xfail(reason="known", strict=True)
def test_xfail():
    assert False

def test_passes():
    pass
'''


def _run(tmp_path: Path, ci: str | None, module: str = "os") -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_probe.py").write_text(PROBE.format(module=module))
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.ci_gate", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), str(tmp_path / "test_probe.py")],
        capture_output=True, text=True, cwd=tmp_path, env=env, check=False, timeout=120)


def test_every_skip_fails_in_ci(tmp_path: Path) -> None:
    proc = _run(tmp_path, "true")
    assert proc.returncode == 1, proc.stdout
    # the skip in the test body fails the test; the skipif mark fails its setup
    assert "1 failed, 1 passed, 1 xfailed, 1 error" in proc.stdout, proc.stdout
    assert "where nothing may be skipped: Skipped: no such component" in proc.stdout
    module = _run(tmp_path, "true", module="cdbdump_no_such_module")
    assert module.returncode != 0 and "1 error" in module.stdout, module.stdout


def test_skips_are_skips_outside_ci(tmp_path: Path) -> None:
    proc = _run(tmp_path, None)
    assert proc.returncode == 0, proc.stdout
    assert "1 passed, 2 skipped, 1 xfailed" in proc.stdout, proc.stdout


@pytest.mark.parametrize(("value", "in_ci"), [
    ("true", True), ("TRUE", True), ("1", True), ("yes", True), (" true\n", True),
    (None, False), ("", False), ("false", False), ("0", False), ("no", False),
])
def test_one_rule_for_in_ci(value: str | None, in_ci: bool) -> None:
    assert ci_gate.in_ci({} if value is None else {"CI": value}) is in_ci


def test_strict_markers_are_on() -> None:
    text = (REPO / "pyproject.toml").read_text()
    assert "--strict-markers" in text
