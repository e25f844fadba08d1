#!/usr/bin/env python3
"""`make bench`: cdbdump against makedumpfile, side by side in one run.

Parts (each prints its own table; skip one with --skip NAME):
  real       the real 4 GiB Debian 6.1 vmcore (built into .cache/ on first use):
             cdbdump and makedumpfile alternated A/B at the same level and codec,
             wall-time ratio and both peak RSS; interpreter start-up reported apart.
  plan       -q on a large sparse synthetic machine: time to plan the dump (headers,
             1st bitmap, kernel bitmap AND) per TiB of RAM, total time, peak RSS.
  scan       the mem_map scan on the same kind of machine: seconds per TiB, and the
             whole run against makedumpfile on it.

Peak RSS comes from wait4() of each child; wall time from a monotonic clock.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

TIB = 1 << 40


@dataclass
class Run:
    wall_s: float
    max_rss_kib: int
    returncode: int
    stdout: str


def run(cmd: list[str], stdout_to: Path | None = None) -> Run:
    start = time.monotonic()
    out = open(stdout_to, "wb") if stdout_to else subprocess.PIPE  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE)
    _, status, rusage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    stdout = b"" if stdout_to else proc.stdout.read() if proc.stdout else b""
    err = proc.stderr.read() if proc.stderr else b""
    if stdout_to:
        out.close()  # type: ignore[union-attr]
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.stderr.write(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{err.decode()}\n")
    return Run(wall, rusage.ru_maxrss, proc.returncode, stdout.decode(errors="replace"))


def cdbdump_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "cdbdump", *args]


def ab(name_a: str, cmd_a: list[str], name_b: str, cmd_b: list[str], out_a: Path, out_b: Path,
       rounds: int) -> None:
    results: dict[str, list[Run]] = {name_a: [], name_b: []}
    for _ in range(rounds):
        for name, cmd, out in ((name_a, cmd_a, out_a), (name_b, cmd_b, out_b)):
            out.unlink(missing_ok=True)
            results[name].append(run(cmd))
    for name, runs in results.items():
        walls = [r.wall_s for r in runs]
        print(f"  {name:<14} wall median {statistics.median(walls):7.3f} s "
              f"(min {min(walls):.3f}, max {max(walls):.3f}), peak RSS "
              f"{max(r.max_rss_kib for r in runs) / 1024:7.1f} MiB, output "
              f"{out_a.stat().st_size if name == name_a else out_b.stat().st_size:,} bytes")
    ratio = statistics.median(r.wall_s for r in results[name_a]) / statistics.median(
        r.wall_s for r in results[name_b])
    print(f"  ratio {name_a}/{name_b} wall: {ratio:.2f}x")


def part_real(work: Path, rounds: int) -> None:
    print("== real: Debian 6.1, 4 GiB guest, -l -d 31 (lzo), A/B alternated ==")
    if shutil.which("makedumpfile") is None:
        print("  makedumpfile not installed: skipped")
        return
    from fixtures import real_vmcores

    raw = real_vmcores.ensure("debian12-6.1-4g")
    norm = real_vmcores.ensure_normalized("debian12-6.1-4g")
    for path in (raw, norm):  # warm the page cache for both tools alike
        subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)
    start = run([sys.executable, "-c", "import cdbdump.cli"])
    print(f"  python start-up + import cdbdump.cli: {start.wall_s:.3f} s")
    ours, theirs = work / "cdbdump.kdump", work / "mdf.kdump"
    ab("cdbdump", cdbdump_cmd("-l", "-d", "31", "--message-level", "0", str(raw), str(ours)),
       "makedumpfile", ["makedumpfile", "-l", "-d", "31", "--message-level", "0", str(norm),
                        str(theirs)], ours, theirs, rounds)


def _report(path: Path) -> dict[str, object]:
    return json.loads(path.read_text())


def part_plan(work: Path, ram_gib: int) -> None:
    print(f"== plan: -q on a sparse synthetic {ram_gib} GiB machine ==")
    from builders.bench_machine import build_bench_machine

    vmcore = work / f"synthetic-{ram_gib}g.vmcore"
    t0 = time.monotonic()
    build_bench_machine(vmcore, ram_gib=ram_gib, kernel_bitmap_level=31)
    print(f"  built in {time.monotonic() - t0:.1f} s, "
          f"{os.stat(vmcore).st_blocks * 512 / 2**20:.0f} MiB on disk")
    out, js = work / "plan.kdump", work / "plan.json"
    out.unlink(missing_ok=True)
    r = run(cdbdump_cmd("-q", "-d", "31", "--message-level", "0", "--report-json", str(js),
                        str(vmcore), str(out)))
    rep = _report(js)
    timings = rep["timings"]
    assert isinstance(timings, dict)
    plan = sum(timings[k] for k in ("read headers", "check memory holes", "exclude pages"))
    ram = ram_gib << 30
    print(f"  path {rep['path_taken']}; plan {plan:.3f} s = {plan * TIB / ram:.2f} s per TiB "
          f"(target < 2); total {r.wall_s:.2f} s; peak RSS {r.max_rss_kib / 1024:.1f} MiB "
          "(target < 96)")


def part_scan(work: Path, ram_gib: int, rounds: int) -> None:
    print(f"== scan: mem_map scan on a sparse synthetic {ram_gib} GiB machine, -l -d 31 ==")
    from builders.bench_machine import build_bench_machine

    vmcore = work / f"synthetic-{ram_gib}g.vmcore"
    if not vmcore.exists():
        build_bench_machine(vmcore, ram_gib=ram_gib, kernel_bitmap_level=31)
    out, js = work / "scan.kdump", work / "scan.json"
    out.unlink(missing_ok=True)
    r = run(cdbdump_cmd("-l", "-d", "31", "--message-level", "0", "--report-json", str(js),
                        str(vmcore), str(out)))
    rep = _report(js)
    timings = rep["timings"]
    assert isinstance(timings, dict)
    scan = timings["exclude pages"]
    print(f"  path {rep['path_taken']}; scan {scan:.3f} s = {scan * TIB / (ram_gib << 30):.2f} s "
          f"per TiB (target <= 10); total {r.wall_s:.2f} s; peak RSS "
          f"{r.max_rss_kib / 1024:.1f} MiB")
    if shutil.which("makedumpfile"):
        theirs = work / "scan-mdf.kdump"
        ab("cdbdump", cdbdump_cmd("-l", "-d", "31", "--message-level", "0", str(vmcore), str(out)),
           "makedumpfile", ["makedumpfile", "-l", "-d", "31", "--message-level", "0",
                            str(vmcore), str(theirs)], out, theirs, rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip", action="append", default=[], choices=["real", "plan", "scan"])
    parser.add_argument("--ram-gib", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=REPO / ".cache" / "bench")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        if "real" not in args.skip:
            part_real(work, args.rounds)
        if "plan" not in args.skip:
            part_plan(args.work, args.ram_gib)
        if "scan" not in args.skip:
            part_scan(args.work, args.ram_gib, args.rounds)


if __name__ == "__main__":
    main()
