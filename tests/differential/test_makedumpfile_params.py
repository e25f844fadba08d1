"""Command lines makedumpfile refuses before it opens a file: the personality prints
the same lines to the same stream and exits with the same code.

Checked against the system's makedumpfile (1.7.2 on Debian 12). Among them, -e
(exclude unused vmemmap) without --work-dir, which check_param_for_creating_dumpfile
refuses for a dump, --dump-dmesg and --mem-usage alike; an earlier check of the same
function wins over it. Nothing is read: the file names need not exist.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from cdbdump.mdcli import main
from tests.oracles import MAKEDUMPFILE, oracle_unavailable

pytestmark = pytest.mark.oracle

COMMAND_LINES = [
    "-e -d 31 vmcore dumpfile",
    "-e -l -d 31 --check-params vmcore dumpfile",  # no "makedumpfile Failed." then
    "-e -F -c -d 31 vmcore",  # -F: every line on stderr
    "-d 31 -e --message-level 0 vmcore dumpfile",  # and nothing at message level 0
    "-e --dump-dmesg vmcore logfile",
    "-e --mem-usage vmcore",
    "-e -E -c -d 31 vmcore dumpfile",  # -c with -E is refused first, silently
    "-e --num-threads 2 --split -d 31 vmcore dump1 dump2",
    "-e -d 31 vmcore",
    "--split -d 31 vmcore dump1",  # the arity errors end the same way
    "-d 32 vmcore dumpfile",
]


@pytest.mark.parametrize("line", COMMAND_LINES)
def test_refused_as_makedumpfile_refuses(line: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    if not Path(MAKEDUMPFILE).exists():
        oracle_unavailable("makedumpfile is not installed")
    theirs = subprocess.run([MAKEDUMPFILE, *line.split()], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, check=False)
    assert theirs.returncode == 1, theirs
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        code = main(line.split())
    finally:
        os.chdir(cwd)
    ours = capsys.readouterr()
    assert (code, ours.out, ours.err) == (theirs.returncode, theirs.stdout, theirs.stderr)
    assert not list(tmp_path.iterdir())  # neither wrote anything


def test_e_with_work_dir_passes_the_check(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    line = ["-e", "--work-dir", str(tmp_path), "--check-params", "-d", "31", "vmcore", "dump"]
    if not Path(MAKEDUMPFILE).exists():
        oracle_unavailable("makedumpfile is not installed")
    theirs = subprocess.run([MAKEDUMPFILE, *line], capture_output=True, text=True, timeout=60,
                            check=False)
    assert theirs.returncode == 0 and theirs.stdout == "", theirs
    assert main(line) == 0
    ours = capsys.readouterr()
    assert ours.out == ""
    assert ours.err.startswith("makedumpfile: -e has no effect here")  # ours says why
