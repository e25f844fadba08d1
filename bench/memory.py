#!/usr/bin/env python3
"""The memory part of `make bench`: peak RSS (GNU time's %M and sampled anonymous RSS),
wall time, mem_map scan and -q plan time of cdbdump on synthetic machines of 64 GiB,
256 GiB and 1 TiB of RAM, in every output mode, next to makedumpfile; then a projection
to 16 TiB.

    python bench/memory.py [--sizes 64,256,1024] [--mdf-timeout 600] [--keep]

A machine of S GiB has S GiB of RAM (PT_LOADs and mem_map up to S GiB: max_mapnr = S GiB
/ 4 KiB), mostly idle (IDLE_MIX), 0.2 % of the frames holding data. The builder keeps ~10
bytes per frame (2.7 GB at 1 TiB) and writes the file sparse (~3 GiB on disk at 1 TiB).
Machines are built in .cache/bench/memory and deleted afterwards unless --keep; outputs
are deleted after each run. Results also go to .cache/bench/memory.json. cdbdump runs
from the same wheel venv as bench.py's (bench/wheel_venv.py), or with --editable from the
development venv.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import wheel_venv

REPO = Path(__file__).resolve().parent.parent
TIB = 1 << 40
# A mostly idle machine (free 2 and 4 MiB buddy blocks, whose members' struct pages are
# zero: both scans jump over them from the head), so the mem_map of 1 TiB of RAM (16 GiB)
# stays ~3 GiB on disk; the rest of it is the default chunk types.
IDLE_MIX = {"free": 0.85, "free_split": 0.01, "anon_thp": 0.03, "file_thp": 0.02,
            "hugetlb": 0.01, "mixed": 0.04, "slab": 0.02, "kernel": 0.02}
BUILD = f"""
import sys
from tests.builders import SyntheticKernel
GiB = 1 << 30
SyntheticKernel("6.1", data_fraction=0.002, seed=1, crash_dump_bitmap=31,
                ram_size=int(sys.argv[1]) * GiB, mix={IDLE_MIX!r},
                zero_free_block_members=True).write(sys.argv[2])
"""


def machine(work: Path, ram_gib: int) -> Path:
    """The machine with ``ram_gib`` GiB of RAM, built once (sparse) under ``work``."""
    vmcore = work / f"idle-ram{ram_gib}g.vmcore"
    if not vmcore.exists():
        t0 = time.monotonic()
        partial = vmcore.with_suffix(".partial")
        rc, _, rss, _ = timed(["nice", sys.executable, "-c", BUILD, str(ram_gib),
                                  str(partial)])
        if rc:
            raise SystemExit(f"building the {ram_gib} GiB machine failed ({rc})")
        partial.rename(vmcore)
        print(f"  built {vmcore.name} in {time.monotonic() - t0:.0f} s (builder peak RSS "
              f"{rss:.0f} MiB), {vmcore.stat().st_blocks * 512 / 2**30:.1f} GiB on disk")
    return vmcore


def _anon_mib(pid: int) -> float:
    """Anonymous RSS of ``pid`` and its descendants (the run under time and timeout)."""
    total = 0.0
    try:
        with Path(f"/proc/{pid}/status").open() as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    total += int(line.split()[1]) / 1024
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return total
    return total + sum(_anon_mib(int(c)) for c in children)


def timed(cmd: list[str], timeout: float | None = None) -> tuple[int, float, float, float]:
    """(returncode, wall s, peak RSS MiB as GNU time's %M, peak anonymous RSS MiB sampled
    every 20 ms) of one run; 124 when ``timeout`` ran out. GNU time, not wait4 here:
    a child forked from this process starts with its RSS."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        full = ["/usr/bin/time", "-q", "-f", "%M", "-o", tf.name,
                *(["timeout", str(int(timeout))] if timeout is not None else []), *cmd]
        with Path(os.devnull).open("wb") as out:
            t0 = time.monotonic()
            proc = subprocess.Popen(full, cwd=REPO, stdout=out)
            anon = 0.0
            while proc.poll() is None:
                anon = max(anon, _anon_mib(proc.pid))
                time.sleep(0.02)
            wall = time.monotonic() - t0
        lines = tf.read().split()
        rss = int(lines[-1]) / 1024 if lines and lines[-1].isdigit() else 0.0
    return proc.returncode, wall, rss, anon


MODES: dict[str, list[str]] = {  # name -> cdbdump options (then VMCORE [OUT])
    "-l -d 31": ["-l", "-d", "31"],
    "-q -d 31": ["-q", "-l", "-d", "31"],
    "-F -l -d 31": ["-F", "-l", "-d", "31"],
    "-E -F -d 31": ["-E", "-F", "-d", "31"],  # a stream: the ELF of 1 TiB is ~18 GB
}


def ours(python: str, vmcore: Path, out: Path, mode: str) -> dict[str, float]:
    """One cdbdump run; its output is left at ``out`` (a -F stream goes to /dev/null)."""
    out.unlink(missing_ok=True)
    js = out.with_suffix(".json")
    js.unlink(missing_ok=True)
    args = MODES[mode]
    flat = "-F" in args
    cmd = wheel_venv.cdbdump_cmd(python, *args, "--message-level", "0", "--report-json",
                                 str(js), str(vmcore), *([] if flat else [str(out)]))
    rc, wall, rss, anon = timed(cmd)
    if rc:
        raise SystemExit(f"cdbdump {mode} failed ({rc}) on {vmcore}")
    report = json.loads(js.read_text())
    js.unlink()
    t = report["timings"]
    plan = t["read headers"] + t["check memory holes"] + t["exclude pages"]
    return {"wall": wall, "rss": rss, "anon": anon, "plan": plan,
            "exclude": t["exclude pages"], "bytes": report["bytes_written"]}


def _same_file(a: Path, b: Path) -> bool:
    with a.open("rb") as fa, b.open("rb") as fb:
        while True:
            x, y = fa.read(1 << 24), fb.read(1 << 24)
            if x != y:
                return False
            if not x:
                return True


def project(rows: list[dict[str, object]]) -> list[str]:
    """16 TiB from the two largest machines: RSS and time linear in RAM."""
    pts = sorted((r for r in rows if r["who"] == "cdbdump"), key=lambda r: float(r["ram_gib"]))
    lines = []
    for mode in MODES:
        m = [r for r in pts if r["mode"] == mode]
        if len(m) < 2:
            continue
        a, b = m[-2], m[-1]
        dx = (float(b["ram_gib"]) - float(a["ram_gib"])) / 1024
        at = 16 - float(b["ram_gib"]) / 1024

        def lin(key: str, a: dict[str, object] = a, b: dict[str, object] = b,
                dx: float = dx, at: float = at) -> tuple[float, float]:
            slope = (float(b[key]) - float(a[key])) / dx  # per TiB of RAM
            return slope, float(b[key]) + slope * at

        (rss_slope, rss16), (anon_slope, anon16) = lin("rss"), lin("anon")
        wall_per_tib = float(b["wall"]) / (float(b["ram_gib"]) / 1024)
        lines.append(f"  {mode:12}: peak RSS {rss16:6.0f} MiB ({rss_slope:+5.1f} MiB per TiB), "
                     f"anonymous {anon16:6.0f} MiB ({anon_slope:+5.1f} MiB per TiB), "
                     f"wall ~{wall_per_tib * 16 / 60:5.1f} min ({wall_per_tib:5.0f} s per TiB "
                     f"at {float(b['ram_gib']):.0f} GiB)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="64,256,1024", help="GiB of RAM")
    parser.add_argument("--mdf-timeout", type=float, default=600)
    parser.add_argument("--keep", action="store_true", help="keep the machines")
    parser.add_argument("--no-makedumpfile", action="store_true", help="ours only")
    parser.add_argument("--work", type=Path, default=REPO / ".cache" / "bench" / "memory")
    parser.add_argument("--editable", action="store_true",
                        help="run cdbdump from the development venv, not a wheel install")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    python = wheel_venv.cdbdump_python(editable=args.editable)
    rows: list[dict[str, object]] = []
    print("== memory: synthetic machines, every output mode, peak RSS / anonymous RSS ==")
    for ram_gib in (int(s) for s in args.sizes.split(",")):
        vmcore = machine(args.work, ram_gib)
        tib = ram_gib / 1024
        kdump = args.work / "out-l.kdump"
        for mode in MODES:
            out = kdump if mode == "-l -d 31" else args.work / "out"
            r = ours(python, vmcore, out, mode)
            rows.append({"who": "cdbdump", "ram_gib": ram_gib, "mode": mode, **r})
            extra = (f", scan {r['exclude']:6.2f} s ({r['exclude'] / tib:5.1f} s per TiB)"
                     if mode == "-l -d 31" else
                     f", plan {r['plan']:5.3f} s ({r['plan'] / tib:5.2f} s per TiB)"
                     if mode.startswith("-q") else "")
            print(f"  {ram_gib:5} GiB {mode:12}: {r['wall']:7.1f} s, RSS {r['rss']:5.1f} MiB, "
                  f"anon {r['anon']:5.1f} MiB, {r['bytes'] / 2**20:8.1f} MiB out{extra}",
                  flush=True)
            if out != kdump:
                out.unlink(missing_ok=True)
        if shutil.which("makedumpfile") and not args.no_makedumpfile:
            theirs = args.work / "mdf.kdump"
            theirs.unlink(missing_ok=True)
            rc, wall, rss, anon = timed(["makedumpfile", "-l", "-d", "31", "--message-level",
                                         "0", str(vmcore), str(theirs)],
                                        timeout=args.mdf_timeout)
            same = rc == 0 and _same_file(theirs, kdump)
            rows.append({"who": "makedumpfile", "ram_gib": ram_gib, "mode": "-l -d 31",
                         "rc": rc, "wall": wall, "rss": rss, "anon": anon, "same": same})
            what = (f"timed out after {args.mdf_timeout:.0f} s (RSS {rss:.1f} MiB)" if rc == 124
                    else f"{wall:7.1f} s, RSS {rss:5.1f} MiB, anon {anon:5.1f} MiB, "
                         f"byte-identical: {same}")
            print(f"  {ram_gib:5} GiB makedumpfile 1.7.2 -l -d 31: {what}", flush=True)
            theirs.unlink(missing_ok=True)
        kdump.unlink(missing_ok=True)
        if not args.keep:
            vmcore.unlink()
    print("== projection to 16 TiB of RAM: linear from the two largest machines, an upper "
          "bound (a window's peak grows until its windows are dense, then stays) ==")
    for line in project(rows):
        print(line)
    (args.work.parent / "memory.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
