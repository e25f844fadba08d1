"""`cdbdump --dump-dmesg VMCORE LOGFILE` and `cdbdump -F --dump-dmesg VMCORE` (stdout)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.builders import SyntheticKernel
from tests.builders.printk import Record, RingBuilder

MakeVmcore = Callable[..., tuple[SyntheticKernel, Path]]


def _run(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "cdbdump", *args], capture_output=True,
                          check=False, timeout=120)


@pytest.fixture(scope="module")
def ring_vmcore(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Record]]:
    kernel = SyntheticKernel("6.1", seed=11, catalog=False)
    ring = RingBuilder(count_bits=4, size_bits=10)
    for i in range(30):  # more than 16 descriptors: the log wrapped (one warning)
        ring.add(b"boot message %d" % i, 1_000_000_007 * i, 100 + i)
    ring.install(kernel)
    path = tmp_path_factory.mktemp("dmesg") / "ring.elf"
    kernel.write(path)
    return path, ring.expected()


def test_logfile(ring_vmcore: tuple[Path, list[Record]], tmp_path: Path) -> None:
    vmcore, expected = ring_vmcore
    log = tmp_path / "dmesg.txt"
    proc = _run("--dump-dmesg", str(vmcore), str(log))
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    lines = log.read_bytes().splitlines()
    assert len(lines) == len(expected) == 16
    for line, record in zip(lines, expected, strict=True):
        assert line.startswith(b"[") and line.endswith(b"] " + record.text)
        assert b"[    T%d] " % record.caller_id in line  # 3 digits, width 8
    # one rule for text: every message on stderr, stdout carries only data
    assert proc.stdout == b""
    lines = proc.stderr.decode().splitlines()
    assert lines[-2:] == [f"The dmesg log is saved to {log}.", "cdbdump Completed."]
    warnings = [ln for ln in lines if ln.startswith("cdbdump: warning:")]
    assert len(warnings) == 1 and len(lines) == 3
    assert warnings[0].startswith("cdbdump: warning: printk ringbuffer: the log starts at")


def test_stdout_with_F(ring_vmcore: tuple[Path, list[Record]], tmp_path: Path) -> None:
    vmcore, _ = ring_vmcore
    log = tmp_path / "dmesg.txt"
    assert _run("--dump-dmesg", str(vmcore), str(log)).returncode == 0
    proc = _run("-F", "--dump-dmesg", str(vmcore))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == log.read_bytes()  # the log and nothing else
    assert b"The dmesg log is saved to STDOUT." in proc.stderr
    quiet = _run("-F", "--message-level", "0", "--dump-dmesg", str(vmcore))
    assert quiet.stdout == proc.stdout and quiet.stderr == b""


def test_existing_logfile_needs_f(ring_vmcore: tuple[Path, list[Record]], tmp_path: Path) -> None:
    vmcore, _ = ring_vmcore
    log = tmp_path / "dmesg.txt"
    log.write_bytes(b"keep me")
    proc = _run("--dump-dmesg", str(vmcore), str(log))
    assert proc.returncode == 1
    assert b"already exists (use -f to overwrite)" in proc.stderr
    assert b"Traceback" not in proc.stderr
    assert log.read_bytes() == b"keep me"
    assert _run("-f", "--dump-dmesg", str(vmcore), str(log)).returncode == 0
    assert log.read_bytes().startswith(b"[")
    link = tmp_path / "link"
    link.symlink_to(log)
    proc = _run("-f", "--dump-dmesg", str(vmcore), str(link))
    assert proc.returncode == 1 and b"symbolic link" in proc.stderr
    assert _run("--dump-dmesg", str(vmcore), str(vmcore)).returncode == 1  # its own input


def test_no_log_is_one_line(tiny_vmcore: MakeVmcore, tmp_path: Path) -> None:
    _, vmcore = tiny_vmcore("6.1", seed=5)  # SYMBOL(prb) holds a NULL pointer
    log = tmp_path / "dmesg.txt"
    proc = _run("--dump-dmesg", str(vmcore), str(log))
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.decode().splitlines() if "error" in line]
    assert len(errors) == 1
    assert errors[0].startswith(f"cdbdump: error: {vmcore}: cannot read the kernel log: ")
    assert b"Traceback" not in proc.stderr
    assert not log.exists() and not os.path.lexists(log)


@pytest.mark.parametrize("args", [["-F", "--dump-dmesg", "V", "L"], ["--dump-dmesg", "V"],
                                  ["-F", "V", "L"], ["--dump-dmesg", "--mem-usage", "V", "L"]])
def test_usage_errors(args: list[str]) -> None:
    proc = _run(*args)
    assert proc.returncode == 2
    assert b"Error:" in proc.stderr


def test_from_kdump_and_flattened_inputs(ring_vmcore: tuple[Path, list[Record]],
                                         tmp_path: Path) -> None:
    # the same log read through the kdump-compressed container:
    # the ring's pages are kernel data, kept at -d 31
    vmcore, _expected = ring_vmcore
    from_elf, from_kdump = tmp_path / "elf.txt", tmp_path / "kdump.txt"
    assert _run("--dump-dmesg", str(vmcore), str(from_elf)).returncode == 0
    dump = tmp_path / "d31.kdump"
    assert _run("-d", "31", str(vmcore), str(dump)).returncode == 0
    proc = _run("--dump-dmesg", str(dump), str(from_kdump))
    assert proc.returncode == 0, proc.stderr
    assert from_kdump.read_bytes() == from_elf.read_bytes()
