"""The makedumpfile personality's messages, progress and exit codes."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cdbdump.mdcli import Messages, Progress, main
from cdbdump.mdopts import DEFAULT_MSG_LEVEL, ML_COMMON, ML_PROGRESS

REPO = Path(__file__).resolve().parents[2]


def _messages(level: int = DEFAULT_MSG_LEVEL, to_stderr: bool = False) -> Messages:
    return Messages(level=level, to_stderr=to_stderr, stdout=io.StringIO(),
                    stderr=io.StringIO())


def test_messages_follow_flag_strerr_message() -> None:
    plain = _messages()
    plain.msg("saved")
    assert plain.stdout.getvalue() == "saved\n" and plain.stderr.getvalue() == ""
    flat = _messages(to_stderr=True)
    flat.msg("saved")
    assert flat.stdout.getvalue() == "" and flat.stderr.getvalue() == "saved\n"


def test_message_level_bits_gate_each_class() -> None:
    quiet = _messages(level=ML_PROGRESS)
    quiet.msg("common")
    quiet.debug("debug")
    quiet.report("report")
    quiet.error("error")
    assert quiet.stdout.getvalue() == "" and quiet.stderr.getvalue() == ""


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_redraws_at_most_once_a_second_and_always_at_100() -> None:
    messages = _messages()
    clock = _Clock()
    progress = Progress(messages, clock)
    progress("Copying data", 0, 1000)
    progress("Copying data", 100, 1000)  # same second: not drawn
    clock.now += 1.0
    progress("Copying data", 500, 1000)
    progress("Copying data", 1000, 1000)  # 100 % is always drawn
    lines = messages.stderr.getvalue().split("\r")[1:]
    assert len(lines) == 3
    assert lines[0].startswith("Copying data" + " " * 38 + ": [  0.0 %] /")
    assert lines[1].startswith(f"{'Copying data':<50}: [ 50.0 %] |")
    assert lines[1].endswith("eta: 1s")
    assert lines[2].startswith(f"{'Copying data':<50}: [100.0 %] \\")


def test_progress_off_without_bit_1() -> None:
    messages = _messages(level=ML_COMMON)
    Progress(messages, _Clock())("Copying data", 1, 1)
    assert messages.stderr.getvalue() == ""


def _run(*args: str, name: str = "makedumpfile") -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    code = f"import sys; sys.argv[0] = {name!r}; from cdbdump.cli import main; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=env, timeout=60, check=False)


def test_invoked_as_makedumpfile_version_and_usage_errors() -> None:
    version = _run("-v")
    assert version.returncode == 0
    assert version.stdout.startswith("makedumpfile: version 1.7.")
    assert "zstd\tenabled" in version.stdout
    bad = _run("--no-such-option", "a", "b")
    assert bad.returncode == 1  # makedumpfile's, not click's 2
    assert "Commandline parameter is invalid." in bad.stdout
    assert "Traceback" not in bad.stderr


def test_check_params_needs_no_input(tmp_path: Path) -> None:
    ok = _run("--check-params", "-l", "--message-level", "7", "-d", "31",
              str(tmp_path / "missing-vmcore"), str(tmp_path / "dumpfile"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert not (tmp_path / "dumpfile").exists()
    assert _run("--check-params", "-E", "-c", "v", "d").returncode == 1


def test_as_makedumpfile_flag_and_flatten_usage_error_on_stderr() -> None:
    bad = _run("--as-makedumpfile", "-F", "a", "b", name="cdbdump")
    assert bad.returncode == 1
    assert bad.stdout == ""  # -F: stdout is for dump data only
    assert "Commandline parameter is invalid." in bad.stderr


def test_notices_for_tuning_knobs_go_to_stderr(tmp_path: Path) -> None:
    run = _run("--check-params", "-b", "8", "--non-mmap", "v", "d")
    assert run.returncode == 0
    assert run.stderr.count("has no effect here") == 2


@pytest.mark.parametrize("argv", [["-h"], ["--help"]])
def test_help_lists_every_option(argv: list[str]) -> None:
    out = io.StringIO()
    sys_stdout, sys.stdout = sys.stdout, out
    try:
        assert main(argv) == 0
    finally:
        sys.stdout = sys_stdout
    assert "--num-threads" in out.getvalue() and "--dump-dmesg" in out.getvalue()
