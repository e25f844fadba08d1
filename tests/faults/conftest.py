"""Fixtures that mount what the fault tests need: a FUSE file with faults, a small tmpfs.

Both need root and /dev/fuse (CI runs as root); without them the tests skip,
and under CI=true a skip fails the run (tests/real's rule).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"fault tests cannot run under CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def fuse_ready() -> None:
    if not Path("/dev/fuse").exists():
        _unavailable("/dev/fuse is missing")
    if shutil.which("fusermount3") is None:
        _unavailable("fusermount3 missing (apt install fuse3)")
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as exc:
        _unavailable(f"mfusepy unusable: {exc}")


class FaultyMount:
    """A running tests.faults.fusefile process serving ``backing`` as ``path``."""

    def __init__(self, backing: Path, mountpoint: Path, args: list[str]) -> None:
        self.mountpoint = mountpoint
        self.path = mountpoint / "vmcore"
        mountpoint.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.faults.fusefile", str(backing), str(mountpoint), *args],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while not self.path.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                out = self.proc.stdout.read().decode() if self.proc.stdout else ""
                self.stop()
                _unavailable(f"FUSE mount failed: {out[-500:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], check=False,
                       capture_output=True)
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def faulty_mount(fuse_ready: None, tmp_path: Path) -> Iterator[Callable[..., FaultyMount]]:
    mounts: list[FaultyMount] = []

    def make(backing: Path, *args: str) -> FaultyMount:
        m = FaultyMount(backing, tmp_path / f"mnt{len(mounts)}", list(args))
        mounts.append(m)
        return m

    yield make
    for m in mounts:
        m.stop()


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    mounted: list[Path] = []

    def make(size: int) -> Path:
        where = tmp_path / f"tmpfs{len(mounted)}"
        where.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                               str(where)], capture_output=True, text=True, check=False)
        if proc.returncode:
            _unavailable(f"cannot mount a tmpfs: {proc.stderr.strip()}")
        mounted.append(where)
        return where

    yield make
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)
