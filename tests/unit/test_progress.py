"""The progress bar appears on a terminal, and nothing of the kind without one."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from collections.abc import Callable
from pathlib import Path

from tests.builders import SyntheticKernel

MakeVmcore = Callable[..., tuple[SyntheticKernel, Path]]


def _run_on_terminal(args: list[str]) -> tuple[int, str]:
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "cdbdump", *args], stdin=terminal,
                            stdout=terminal, stderr=terminal)
    os.close(terminal)
    chunks = []
    while True:
        try:
            data = os.read(controller, 65536)
        except OSError:  # EIO once the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(controller)
    return proc.wait(), b"".join(chunks).decode(errors="replace")


def test_bar_on_a_terminal(tiny_vmcore: MakeVmcore, tmp_path: Path) -> None:
    _, vmcore = tiny_vmcore("6.1", seed=5)
    code, output = _run_on_terminal(["-d", "31", str(vmcore), str(tmp_path / "o")])
    assert code == 0
    assert "Copying data" in output
    assert "Excluding unnecessary pages" in output


def test_no_bar_without_a_terminal(tiny_vmcore: MakeVmcore, tmp_path: Path) -> None:
    _, vmcore = tiny_vmcore("6.1", seed=5)
    proc = subprocess.run([sys.executable, "-m", "cdbdump", "-d", "31", str(vmcore),
                           str(tmp_path / "o")], capture_output=True, text=True, check=False)
    assert proc.returncode == 0
    assert "Copying data" not in proc.stderr and "\r" not in proc.stderr
