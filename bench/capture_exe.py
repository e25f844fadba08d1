"""Start-up time, peak RSS and size of capture-environment builds of cdbdump.

    python3 bench/capture_exe.py [--runs 7] [--vmcore FILE] EXE...

For each EXE (a one-file build, a bundle's launcher, or "python -m cdbdump"): the
fastest of --runs `EXE --version` (wall seconds and the peak RSS of the process
tree, from wait4), and with --vmcore the fastest `EXE -l -d 31 FILE OUT` run.
Size: the file, or the whole directory of a bundle's launcher.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import tempfile
import time
from pathlib import Path


def timed(cmd: list[str]) -> tuple[float, int]:
    """(wall seconds, peak RSS KiB of the process and its children)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed ({status})")
    return wall, usage.ru_maxrss


def size_bytes(exe: str) -> int:
    """The file, or the whole bundle (build.sh puts bundles in *.bundle/)."""
    path = Path(exe)
    if not path.is_file():
        return 0
    if path.parent.name.endswith(".bundle"):
        return sum(f.lstat().st_size for f in path.parent.rglob("*") if not f.is_symlink()
                   and f.is_file())
    return path.stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--vmcore", type=Path)
    ap.add_argument("exe", nargs="+", help="an executable, or a command in quotes")
    args = ap.parse_args()
    print(f"{'MB':>6} {'start s':>8} {'start RSS':>10} {'dump s':>7} {'dump RSS':>9}  command")
    for exe in args.exe:
        cmd = shlex.split(exe)
        start = min(timed([*cmd, "--version"]) for _ in range(args.runs))
        dump = (0.0, 0)
        if args.vmcore:
            with tempfile.TemporaryDirectory() as tmp:
                out = str(Path(tmp) / "out.kdump")
                dump = min(timed([*cmd, "-f", "-l", "-d", "31", str(args.vmcore), out])
                           for _ in range(max(1, args.runs // 2)))
        print(f"{size_bytes(cmd[0]) / 1e6:6.1f} {start[0]:8.3f} {start[1]:7d} KiB "
              f"{dump[0]:7.2f} {dump[1]:6d} KiB  {exe}", flush=True)


if __name__ == "__main__":
    main()
