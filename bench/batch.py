#!/usr/bin/env python3
"""Batch throughput: the same inputs through 1 and 2 local workers and a Dask
LocalCluster of 2, beside a shell loop of single `cdbdump` runs; one input split
over 2 workers (--shards 2) against the single-process dump.

Inputs: N copies of a sparse synthetic 6.1 machine (built once into the work
directory). Each configuration runs `cdbdump batch` from scratch into an empty
output directory; wall time covers the whole command (worker start-up included),
so it is what a user waits. inputs/s and GB/s are over the input file sizes.
Peak RSS per worker comes from the manifest (VmHWM per input).

The --shards comparison runs on the real 4 GiB Debian 6.1 vmcore (fixtures
real_vmcores, cached under CDBDUMP_VMCORE_CACHE) when it is built, else on one of
the synthetic inputs. The machine may be shared: each line ends with the 1-minute
load average at its start.

Run alone (python3 bench/batch.py) or as the `batch` part of bench/bench.py; cdbdump runs
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
sys.path.insert(0, str(REPO))
GB = 1e9
REAL_VMCORE = "debian12-6.1-4g"


def build_inputs(work: Path, count: int, ram_gib: int, data_fraction: float) -> Path:
    src = work / f"batch-inputs-{count}x{ram_gib}g-{data_fraction}"
    if (src / "done").exists():
        return src
    shutil.rmtree(src, ignore_errors=True)
    first = src / "m0" / "vmcore"
    first.parent.mkdir(parents=True)
    code = (
        "import sys; from tests.builders import SyntheticKernel; "
        f"SyntheticKernel('6.1', ram_size={ram_gib} << 30, data_fraction={data_fraction}, "
        "seed=7).write(sys.argv[1])"
    )
    subprocess.run([sys.executable, "-c", code, str(first)], cwd=REPO, check=True)
    for i in range(1, count):
        (src / f"m{i}").mkdir()
        subprocess.run(["cp", "--sparse=always", str(first), str(src / f"m{i}" / "vmcore")],
                       check=True)
    (src / "done").touch()
    return src


def _inputs(src: Path) -> list[Path]:
    return sorted(p for p in src.rglob("vmcore"))


def _load() -> float:
    return os.getloadavg()[0]


def _line(name: str, wall: float, inputs: list[Path], extra: str = "",
          load: float | None = None) -> None:
    size = sum(p.stat().st_size for p in inputs)
    at = f"  [load {load:.2f}]" if load is not None else ""
    print(f"  {name:<30} {wall:7.2f} s  {len(inputs) / wall:6.2f} inputs/s  "
          f"{size / wall / GB:6.2f} GB/s{extra}{at}", flush=True)


def run_batch(name: str, python: str, src: Path, work: Path, *args: str) -> None:
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    load = _load()
    start = time.monotonic()
    proc = subprocess.run(wheel_venv.cdbdump_cmd(python, "batch", str(src), "--out", str(out),
                                                 "-d", "31", *args),
                          capture_output=True, text=True, check=False)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        print(f"  {name}: failed ({proc.returncode}): {proc.stderr.strip()[-300:]}")
        return
    records = [json.loads(x) for x in (out / "batch.jsonl").read_text().splitlines()]
    rss = max(r["peak_rss_kib"] or 0 for r in records) / 1024
    busy = sum(r["seconds"] for r in records)
    _line(name, wall, _inputs(src), f"  (sum of per-input times {busy:.2f} s; peak RSS per "
          f"input {rss:.0f} MiB)", load)


def run_loop(python: str, src: Path, work: Path) -> None:
    inputs = _inputs(src)
    load = _load()
    start = time.monotonic()
    for i, path in enumerate(inputs):
        out = work / f"single-{i}.kdump"
        out.unlink(missing_ok=True)
        subprocess.run(wheel_venv.cdbdump_cmd(python, "-d", "31", "--message-level", "0",
                                              str(path), str(out)), check=True)
    _line("shell loop of cdbdump", time.monotonic() - start, inputs, load=load)


def main_part(work: Path, python: str, count: int = 8, ram_gib: int = 1,
              data_fraction: float = 0.1) -> None:
    print(f"== batch: {count} sparse synthetic {ram_gib} GiB machines ({data_fraction:.0%} of "
          "frames hold data), -d 31 zstd ==")
    src = build_inputs(work, count, ram_gib, data_fraction)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        scratch = Path(tmp)
        run_loop(python, src, scratch)
        run_batch("batch --jobs 1", python, src, scratch, "--jobs", "1")
        run_batch("batch --jobs 2", python, src, scratch, "--jobs", "2")
        try:
            import distributed  # noqa: F401
        except ImportError:
            print("  batch --local-cluster 2: skipped (pip install 'cdbdump[dask]')")
        else:
            run_batch("batch --local-cluster 2", python, src, scratch, "--local-cluster", "2")
        run_shards(python, _shards_input(src), scratch)


def _shards_input(src: Path) -> Path:
    """The real 4 GiB vmcore when the cache holds it (never built here), else a synthetic one."""
    from fixtures import real_vmcores

    real = real_vmcores.raw_path(REAL_VMCORE)
    if real.is_file() and Path(f"{real}.meta.txt").is_file():  # meta.txt is written last
        return real
    print(f"  (--shards: {REAL_VMCORE} not built in {real.parent}; a synthetic input instead)")
    return src / "m0" / "vmcore"


def run_shards(python: str, vmcore: Path, work: Path) -> None:
    """One input: the single-process dump against batch --shards 2 (2 workers)."""
    print(f"  --shards input: {vmcore} ({vmcore.stat().st_size / GB:.2f} GB)")
    single = work / "single.kdump"
    single.unlink(missing_ok=True)
    load = _load()
    start = time.monotonic()
    subprocess.run(wheel_venv.cdbdump_cmd(python, "-d", "31", "--message-level", "0",
                                          str(vmcore), str(single)), check=True)
    _line("one input, single process", time.monotonic() - start, [vmcore], load=load)
    out = work / "shards"
    shutil.rmtree(out, ignore_errors=True)
    load = _load()
    start = time.monotonic()
    subprocess.run(wheel_venv.cdbdump_cmd(python, "batch", str(vmcore), "--out", str(out),
                                          "-d", "31", "--jobs", "2", "--shards", "2"),
                   capture_output=True, check=True)
    same = (out / (vmcore.name + ".kdump")).read_bytes() == single.read_bytes()
    _line("one input, batch --shards 2", time.monotonic() - start, [vmcore],
          f"  (byte-identical to the single-process dump: {same})", load)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=8)
    parser.add_argument("--ram-gib", type=int, default=1)
    parser.add_argument("--data-fraction", type=float, default=0.1)
    parser.add_argument("--work", type=Path, default=REPO / ".cache" / "bench")
    parser.add_argument("--shards-only", action="store_true",
                        help="only the --shards comparison")
    parser.add_argument("--editable", action="store_true",
                        help="run cdbdump from the development venv, not a wheel install")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    python = wheel_venv.cdbdump_python(args.work, args.editable)
    if args.shards_only:
        with tempfile.TemporaryDirectory(dir=args.work) as tmp:
            src = build_inputs(args.work, 1, args.ram_gib, args.data_fraction)
            run_shards(python, _shards_input(src), Path(tmp))
        return
    main_part(args.work, python, args.inputs, args.ram_gib, args.data_fraction)


if __name__ == "__main__":
    main()
