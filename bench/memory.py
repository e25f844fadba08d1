#!/usr/bin/env python3
"""The memory part of `make bench`: peak RSS, wall, mem_map scan and -q plan time of
cdbdump on synthetic machines of 64 GiB, 256 GiB and 1 TiB, next to makedumpfile.

    python bench/memory.py [--sizes 64,256,1024] [--mdf-timeout 900] [--keep]

A machine of S GiB has its PT_LOADs end at S GiB (max_mapnr = S GiB / 4 KiB, the
bitmaps' size) and min(S, 256) GiB of RAM with a real mem_map, 0.2 % of the frames
holding data; the builder needs ~76 bytes per frame of RAM, so a full 1 TiB of RAM
(~20 GB) does not fit a shared 24 GB machine: the 1 TiB one has 256 GiB of RAM split
below 128 GiB and under 1 TiB. Machines are built in .cache/bench/memory (sparse,
4.4 GB on disk each at 256 GiB of RAM) and deleted afterwards unless --keep.
Peak RSS is GNU time's %M: anonymous and mapped pages together.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TIB = 1 << 40
RAM_CAP_GIB = 256
BUILD = """
import sys
from tests.builders import SyntheticKernel
GiB = 1 << 30
span, ram = int(sys.argv[1]), int(sys.argv[2])
kw = ({"ram_size": ram * GiB} if ram == span else
      {"ram": [(0x1000, 0x9FC00), (0x100000, 2 * GiB), (4 * GiB, (ram // 2 + 2) * GiB),
               ((span - ram // 2) * GiB, span * GiB - 0x28000)]})
SyntheticKernel("6.1", data_fraction=0.002, seed=1, crash_dump_bitmap=31, **kw).write(sys.argv[3])
"""


def machine(work: Path, span_gib: int) -> Path:
    ram_gib = min(span_gib, RAM_CAP_GIB)
    vmcore = work / f"m{span_gib}g-ram{ram_gib}g.vmcore"
    if not vmcore.exists():
        t0 = time.monotonic()
        partial = vmcore.with_suffix(".partial")
        subprocess.run(["nice", sys.executable, "-c", BUILD, str(span_gib), str(ram_gib),
                        str(partial)], cwd=REPO, check=True)
        partial.rename(vmcore)
        print(f"  built {vmcore.name} in {time.monotonic() - t0:.0f} s, "
              f"{vmcore.stat().st_blocks * 512 / 2**30:.1f} GiB on disk")
    return vmcore


def timed(cmd: list[str], timeout: float | None = None) -> tuple[int, float, float]:
    """(returncode, wall s, peak RSS MiB) of one run under GNU time."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        full = ["/usr/bin/time", "-q", "-f", "%M", "-o", tf.name, *cmd]
        if timeout is not None:
            full[:0] = ["timeout", str(int(timeout))]
        t0 = time.monotonic()
        rc = subprocess.run(full, cwd=REPO, stdout=subprocess.DEVNULL, check=False).returncode
        wall = time.monotonic() - t0
        lines = tf.read().split()
        return rc, wall, (int(lines[-1]) / 1024 if lines and lines[-1].isdigit() else 0.0)


def ours(vmcore: Path, out: Path, *args: str) -> dict[str, float]:
    out.unlink(missing_ok=True)
    js = out.with_suffix(".json")
    js.unlink(missing_ok=True)
    rc, wall, rss = timed([sys.executable, "-m", "cdbdump", "-l", "-d", "31", *args,
                           "--message-level", "0", "--report-json", str(js), str(vmcore),
                           str(out)])
    if rc:
        raise SystemExit(f"cdbdump failed ({rc}) on {vmcore}")
    t = json.loads(js.read_text())["timings"]
    plan = t["read headers"] + t["check memory holes"] + t["exclude pages"]
    return {"wall": wall, "rss": rss, "plan": plan, "exclude": t["exclude pages"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="64,256,1024", help="GiB of address space")
    parser.add_argument("--mdf-timeout", type=float, default=900)
    parser.add_argument("--keep", action="store_true", help="keep the machines")
    parser.add_argument("--work", type=Path, default=REPO / ".cache" / "bench" / "memory")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    print("== memory: synthetic machines, -l -d 31 (mem_map scan) and -q -d 31 ==")
    for span in (int(s) for s in args.sizes.split(",")):
        vmcore = machine(args.work, span)
        ram_tib = min(span, RAM_CAP_GIB) / 1024
        scan_out, plan_out = args.work / "scan.kdump", args.work / "plan.kdump"
        s = ours(vmcore, scan_out)
        q = ours(vmcore, plan_out, "-q")
        print(f"  {span:5} GiB ({ram_tib * 1024:.0f} GiB RAM): scan run {s['wall']:6.1f} s, "
              f"RSS {s['rss']:5.1f} MiB, scan {s['exclude']:5.2f} s "
              f"({s['exclude'] / ram_tib:5.1f} s per TiB of RAM); -q run {q['wall']:6.1f} s, "
              f"RSS {q['rss']:5.1f} MiB, plan {q['plan']:5.3f} s "
              f"({q['plan'] * 1024 / span:5.2f} s per TiB of max_mapnr)")
        if shutil.which("makedumpfile"):
            theirs = args.work / "mdf.kdump"
            theirs.unlink(missing_ok=True)
            rc, wall, rss = timed(["makedumpfile", "-l", "-d", "31", "--message-level", "0",
                                   str(vmcore), str(theirs)], timeout=args.mdf_timeout)
            same = rc == 0 and theirs.read_bytes() == scan_out.read_bytes()
            what = (f"timed out after {args.mdf_timeout:.0f} s" if rc == 124
                    else f"{wall:6.1f} s, RSS {rss:5.1f} MiB, byte-identical: {same}")
            print(f"  {span:5} GiB makedumpfile 1.7.2 -l -d 31: {what}")
            theirs.unlink(missing_ok=True)
        for path in (scan_out, plan_out):
            path.unlink(missing_ok=True)
            path.with_suffix(".json").unlink(missing_ok=True)
        if not args.keep:
            vmcore.unlink()


if __name__ == "__main__":
    main()
