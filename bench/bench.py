#!/usr/bin/env python3
"""`make bench`: cdbdump against makedumpfile, side by side in one run.

Parts (skip one with --skip NAME); at the end one table of every A/B run
(run, ours, makedumpfile, ratio, RSS, floor) is printed and written as JSON
(--json, default .cache/bench/bench.json):
  real       the real 4 GiB Debian 6.1 vmcore (built into .cache/ on first use):
             cdbdump and makedumpfile alternated A/B at the same level and codec
             (lzo, zlib with Debian 12's makedumpfile; zstd with Debian 13's),
             -d 31, -d 1 and -d 0, and against makedumpfile --num-threads 2 where
             compression dominates; wall and CPU (user+sys) medians, peak RSS,
             and the floor: reading the input once (cat > /dev/null) plus
             compressing exactly the kept pages with the same codec on all cores
             (bench/floor.py); interpreter start-up reported apart.
  dense      a 64 GiB synthetic machine whose mem_map is dense (every section
             present) with ~300k kept pages, -l -d 31, against makedumpfile.
  plan       -q on a large sparse synthetic machine: time to plan the dump (headers,
             1st bitmap, kernel bitmap AND) per TiB of RAM, total time, peak RSS.
  scan       the mem_map scan on the same kind of machine: seconds per TiB, and the
             whole run against makedumpfile on it.
  refilter   makedumpfile -l -d 1 of that machine refiltered to -d 31 by both tools
             (A/B, peak RSS, byte identity), and `cdbdump verify` of the -d 1 dump.
  flat       -F to a pipe against writing the dump file directly, on the real vmcore
             (--flat-vmcore), -d 31 and -d 0: the stream must cost at most 10 % more.
  dmesg      --dump-dmesg on the real 1 GiB 6.1 vmcore against makedumpfile, and the log
             reader alone on a full 4 MiB printk ringbuffer (records per second).
  kernel     the real /proc/vmcore of the crash-dump-bitmap kernel (kernel/crash_dump_bitmap/,
             built on first use): its panic-time pass per TiB of RAM (the RFC: 17.5 s
             per TB), cdbdump's -q plan and mem_map scan on the same vmcore.
  batch      `cdbdump batch` throughput with 1 and 2 local workers and a Dask
             LocalCluster of 2 (bench/batch.py).

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

import wheel_venv

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TIB = 1 << 40


@dataclass
class Run:
    wall_s: float
    max_rss_kib: int
    returncode: int
    stdout: str
    cpu_s: float = 0.0  # user + sys of the child


ROWS: list[dict[str, object]] = []  # the summary table, one row per A/B run


def run(cmd: list[str]) -> Run:
    """Run one command; peak RSS from GNU time when present.

    ru_maxrss of a child that was forked from a big parent starts at the parent's
    size (it survives exec), so the child is started through /usr/bin/time, a
    small C program, whenever it exists.
    """
    time_bin = shutil.which("time") or ("/usr/bin/time" if Path("/usr/bin/time").exists() else None)
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss_file:
        full = ([time_bin, "-q", "-f", "%M %U %S", "-o", rss_file.name, *cmd] if time_bin
                else cmd)
        start = time.monotonic()
        proc = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = proc.communicate()
        wall = time.monotonic() - start
        rss, cpu = 0, 0.0
        if time_bin:
            fields = rss_file.read().strip().splitlines()[-1].split()
            rss, cpu = int(fields[0]), float(fields[1]) + float(fields[2])
    if proc.returncode != 0:
        sys.stderr.write(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{err.decode()}\n")
    return Run(wall, rss, proc.returncode, out.decode(errors="replace"), cpu)


# The interpreter that runs cdbdump: the wheel venv's once main() installed it (what a
# user runs), else this one.
PYTHON = sys.executable


def cdbdump_cmd(*args: str) -> list[str]:
    return wheel_venv.cdbdump_cmd(PYTHON, *args)


def ab(name_a: str, cmd_a: list[str], name_b: str, cmd_b: list[str], out_a: Path, out_b: Path,
       rounds: int, label: str = "") -> dict[str, object]:
    """Run A and B alternated; print and return the medians (a row of the table)."""
    results: dict[str, list[Run]] = {name_a: [], name_b: []}
    sizes: dict[str, int] = {}
    for _ in range(rounds):
        for name, cmd, out in ((name_a, cmd_a, out_a), (name_b, cmd_b, out_b)):
            out.unlink(missing_ok=True)
            results[name].append(run(cmd))
            sizes[name] = out.stat().st_size if out.exists() else 0
    med: dict[str, tuple[float, float, float]] = {}
    for name, runs in results.items():
        walls = [r.wall_s for r in runs]
        cpus = [r.cpu_s for r in runs]
        rss = max(r.max_rss_kib for r in runs) / 1024
        med[name] = (statistics.median(walls), statistics.median(cpus), rss)
        print(f"  {name:<14} wall median {med[name][0]:7.3f} s (min {min(walls):.3f}, max "
              f"{max(walls):.3f}), cpu median {med[name][1]:7.3f} s, peak RSS {rss:7.1f} MiB, "
              f"output {sizes[name]:,} bytes")
    ratio = med[name_a][0] / med[name_b][0]
    cpu_ratio = med[name_a][1] / med[name_b][1] if med[name_b][1] else float("nan")
    print(f"  ratio {name_a}/{name_b}: wall {ratio:.2f}x, cpu {cpu_ratio:.2f}x "
          f"(load average {os.getloadavg()[0]:.1f})")
    row: dict[str, object] = {
        "run": label, "ours_s": med[name_a][0], "theirs_s": med[name_b][0], "ratio": ratio,
        "ours_cpu_s": med[name_a][1], "theirs_cpu_s": med[name_b][1], "cpu_ratio": cpu_ratio,
        "ours_rss_mib": med[name_a][2], "theirs_rss_mib": med[name_b][2],
        "ours_bytes": sizes[name_a], "theirs_bytes": sizes[name_b],
        "load": os.getloadavg()[0],
    }
    ROWS.append(row)
    return row


def floor(vmcore: Path, dump: Path, row: dict[str, object]) -> None:
    """Add the floor to ``row``: cat of the input + compressing the kept pages."""
    t0 = time.monotonic()
    subprocess.run(["cat", str(vmcore)], stdout=subprocess.DEVNULL, check=True)
    cat_s = time.monotonic() - t0
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "floor.py"), str(vmcore),
                           str(dump)], capture_output=True, text=True, check=True)
    comp = json.loads(proc.stdout)
    row["floor_s"] = cat_s + comp["compress_s"]
    row["floor_cat_s"] = cat_s
    row["floor_compress_s"] = comp["compress_s"]
    row["floor_compress_cpu_s"] = comp["compress_cpu_s"]
    row["kept_pages"] = comp["pages"]
    ours = row["ours_s"]
    assert isinstance(ours, float)
    row["of_floor"] = ours / row["floor_s"]
    print(f"  floor: cat {cat_s:.3f} s + compress {comp['pages']:,} kept pages on all cores "
          f"{comp['compress_s']:.3f} s (cpu {comp['compress_cpu_s']:.3f} s); ours = "
          f"{row['of_floor']:.2f}x the floor")


def print_table(path: Path) -> None:
    print("== summary (wall medians; cpu = user+sys medians) ==")
    head = (f"{'run':<40} {'ours s':>8} {'mdf s':>8} {'ratio':>6} {'cpu ratio':>9} "
            f"{'RSS MiB':>8} {'mdf RSS':>8} {'floor s':>8} {'/floor':>7}")
    print(head)
    for r in ROWS:
        fl = r.get("floor_s")
        print(f"{r['run']!s:<40} {r['ours_s']:>8.3f} {r['theirs_s']:>8.3f} {r['ratio']:>6.2f} "
              f"{r['cpu_ratio']:>9.2f} {r['ours_rss_mib']:>8.1f} {r['theirs_rss_mib']:>8.1f} "
              + (f"{fl:>8.3f} {r['of_floor']:>7.2f}" if isinstance(fl, float) else
                 f"{'-':>8} {'-':>7}"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"load_average": os.getloadavg(), "cores": os.cpu_count(),
                                "rows": ROWS}, indent=2) + "\n")
    print(f"  written to {path}")


def part_real(work: Path, rounds: int, levels: list[int], threads_vs: list[str]) -> None:
    print("== real: Debian 6.1, 4 GiB guest, A/B alternated ==")
    if shutil.which("makedumpfile") is None:
        print("  makedumpfile not installed: skipped")
        return
    from fixtures import makedumpfile_trixie, real_vmcores

    raw = real_vmcores.ensure("debian12-6.1-4g")
    norm = real_vmcores.ensure_normalized("debian12-6.1-4g")
    for path in (raw, norm):  # warm the page cache for both tools alike
        subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)
    print(f"  cdbdump runs from a wheel of this tree installed into {PYTHON}'s venv "
          "(not the editable install)" if PYTHON != sys.executable else
          "  cdbdump runs from the development venv (editable install: start-up ~10 ms more)")
    # the imports as the command's entry point (cdbdump.__main__.run) makes them
    for label, code in (("start-up + imports", "import gc; gc.disable(); import cdbdump.cli, "
                         "cdbdump.pipeline; gc.freeze(); gc.enable()"),
                        # cdbdump.cli keeps OpenBLAS to one thread (cdbdump.blas): so does the floor
                        ("floor: python + import numpy",
                         "import os; os.environ.setdefault('OPENBLAS_NUM_THREADS', '1'); "
                         "import numpy")):
        runs = sorted((run([PYTHON, "-P", "-c", code]) for _ in range(5)),
                      key=lambda r: r.wall_s)
        start = runs[2]  # the median of 5
        print(f"  {label}: {start.wall_s:.3f} s wall, {start.cpu_s:.3f} s cpu (median of 5)")
        ROWS.append({"run": label, "ours_s": start.wall_s, "theirs_s": 0.0,
                     "ratio": float("nan"), "ours_cpu_s": start.cpu_s, "theirs_cpu_s": 0.0,
                     "cpu_ratio": float("nan"), "ours_rss_mib": start.max_rss_kib / 1024,
                     "theirs_rss_mib": 0.0})
    ours, theirs = work / "cdbdump.kdump", work / "mdf.kdump"
    new_mdf: str | None
    try:
        new_mdf = str(makedumpfile_trixie.ensure())
    except makedumpfile_trixie.MakedumpfileUnavailable as exc:
        print(f"  zstd skipped: makedumpfile >= 1.7.6 unavailable ({exc})")
        new_mdf = None
    for codec, mdf in (("-l", "makedumpfile"), ("-c", "makedumpfile"), ("-z", new_mdf)):
        if mdf is None:
            continue
        for level in levels:
            variants = [("", [])]
            if level in (0, 1) and codec in threads_vs:  # compression-bound: vs its threads
                variants.append((" vs --num-threads 2", ["--num-threads", "2"]))
            for suffix, extra in variants:
                label = f"4 GiB real {codec} -d {level}{suffix}"
                print(f" {label}:")
                row = ab("cdbdump",
                         cdbdump_cmd(codec, "-d", str(level), "--message-level", "0", str(raw),
                                     str(ours)),
                         "makedumpfile",
                         [mdf, codec, "-d", str(level), *extra, "--message-level", "0",
                          str(norm), str(theirs)],
                         # makedumpfile --num-threads is minutes per run here: one round
                         ours, theirs, 1 if suffix else rounds, label)
                same = _same(ours, theirs)
                row["identical"] = same
                print(f"  outputs byte-identical: {same}")
                if not suffix:
                    floor(raw, ours, row)
                ours.unlink(missing_ok=True)
                theirs.unlink(missing_ok=True)


def _same(a: Path, b: Path) -> bool:
    return subprocess.run(["cmp", "-s", str(a), str(b)], check=False).returncode == 0


def _cpu_run(cmd: list[str], to_pipe: bool) -> tuple[float, float]:
    """(wall s, user+sys CPU s of cmd alone): stdout into `cat > /dev/null`, or discarded."""
    reader = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL) \
        if to_pipe else None
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=reader.stdin if reader else subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    if reader is not None and reader.stdin is not None:
        reader.stdin.close()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if reader is not None:
        reader.wait()
    if proc.returncode:
        sys.stderr.write(f"command failed ({proc.returncode}): {' '.join(cmd)}\n")
    return wall, usage.ru_utime + usage.ru_stime


def part_flat(work: Path, rounds: int, name: str) -> None:
    print(f"== flat: -F to a pipe vs the dump file, {name}, lzo, A/B alternated ==")
    from fixtures import real_vmcores

    raw = real_vmcores.ensure(name)
    subprocess.run(["cat", str(raw)], stdout=subprocess.DEVNULL, check=True)
    direct = work / "direct.kdump"
    for level in ("31", "0"):
        opts = ["-l", "-d", level, "--message-level", "0"]
        runs: dict[str, list[tuple[float, float]]] = {"-F | cat": [], "file": []}
        for _ in range(rounds):
            runs["-F | cat"].append(_cpu_run(cdbdump_cmd("-F", *opts, str(raw)), True))
            direct.unlink(missing_ok=True)
            runs["file"].append(_cpu_run(cdbdump_cmd(*opts, str(raw), str(direct)), False))
        print(f" -d {level} (output file {direct.stat().st_size:,} bytes):")
        for label, values in runs.items():
            walls, cpus = [w for w, _ in values], [c for _, c in values]
            print(f"  {label:<9} wall median {statistics.median(walls):6.3f} s (min "
                  f"{min(walls):.3f}), CPU median {statistics.median(cpus):6.3f} s (min "
                  f"{min(cpus):.3f})")
        for i, what in ((0, "wall"), (1, "CPU")):
            ratio = statistics.median(v[i] for v in runs["-F | cat"]) / statistics.median(
                v[i] for v in runs["file"])
            print(f"  -F/file {what} (medians): {ratio:.2f}x")
        direct.unlink(missing_ok=True)


def part_dmesg(work: Path, rounds: int) -> None:
    print("== dmesg: --dump-dmesg, real Debian 6.1 1 GiB vmcore, A/B alternated ==")
    if shutil.which("makedumpfile") is None:
        print("  makedumpfile not installed: skipped")
        return
    from fixtures import real_vmcores

    raw = real_vmcores.ensure("debian12-6.1-1g")
    norm = real_vmcores.ensure_normalized("debian12-6.1-1g")
    ours, theirs = work / "cdbdump.dmesg", work / "mdf.dmesg"
    ab("cdbdump", cdbdump_cmd("--message-level", "0", "--dump-dmesg", str(raw), str(ours)),
       "makedumpfile", ["makedumpfile", "--message-level", "0", "--dump-dmesg", str(norm),
                        str(theirs)], ours, theirs, rounds,
       "--dump-dmesg, real 1 GiB 6.1 vmcore")
    # the reader alone on a full ring (log_buf_len=4M: 2^17 descriptors, 4 MiB of text)
    import random

    from cdbdump.printk import format_records, read_kernel_log
    from tests.builders.printk import RingBuilder
    from tests.flatmem import FlatKernel

    ring = RingBuilder(count_bits=17, size_bits=22)
    rng = random.Random(1)
    words = (b"usb", b"pci", b"0000:00:1f.2", b"eth0:", b"link", b"is", b"up", b"ok")
    for i in range(140_000):
        ring.add(b" ".join(rng.choices(words, k=rng.randrange(2, 12))), i * 1_000_003, i)
    flat = FlatKernel()
    ring.install(flat)  # type: ignore[arg-type]
    start = time.perf_counter()
    log = read_kernel_log(flat.memory, flat.info())
    read_s = time.perf_counter() - start
    text = b"".join(format_records(log.records))
    format_s = time.perf_counter() - start - read_s
    print(f"  reader, full 4 MiB ring: {len(log.records):,} records read in {read_s:.3f} s, "
          f"formatted ({len(text):,} bytes) in {format_s:.3f} s")


def _report(path: Path, r: Run) -> dict[str, object]:
    """The --report-json of run ``r``, which must have succeeded (never a stale file)."""
    if r.returncode != 0:
        raise SystemExit(f"bench: the run that writes {path} failed ({r.returncode})")
    return json.loads(path.read_text())


DENSE_FRACTION = 0.02  # of the frames holding data: ~300k kept pages at 64 GiB, -d 31


def synthetic_machine(work: Path, ram_gib: int, data_fraction: float = DENSE_FRACTION) -> Path:
    """A sparse 6.1-dialect machine with the RFC kernel bitmap (cached in ``work``).

    1 % of the frames hold data; the mem_map (64 bytes per frame) is all real, so
    the scan reads ram_gib * 16 MiB of struct pages. Built in a child process so
    that this one stays small (see run()).
    """
    vmcore = work / f"synthetic-6.1-{ram_gib}g-{data_fraction}.vmcore"
    if not vmcore.exists():
        t0 = time.monotonic()
        partial = vmcore.with_suffix(".partial")
        code = (
            "import sys; from tests.builders import SyntheticKernel; "
            f"SyntheticKernel('6.1', ram_size={ram_gib} << 30, "
            f"data_fraction={data_fraction}, seed=1, crash_dump_bitmap=31).write(sys.argv[1])"
        )
        subprocess.run([sys.executable, "-c", code, str(partial)], cwd=REPO, check=True)
        partial.rename(vmcore)
        print(f"  built {vmcore.name} in {time.monotonic() - t0:.1f} s, "
              f"{vmcore.stat().st_blocks * 512 / 2**20:.0f} MiB on disk")
    return vmcore


def part_plan(work: Path, ram_gib: int) -> None:
    print(f"== plan: -q on a synthetic {ram_gib} GiB machine ==")
    vmcore = synthetic_machine(work, ram_gib, DENSE_FRACTION)
    out, js = work / "plan.kdump", work / "plan.json"
    out.unlink(missing_ok=True)
    js.unlink(missing_ok=True)  # else a second run refuses to overwrite it
    run(cdbdump_cmd("-q", "-d", "31", "--message-level", "0", str(vmcore), str(out)))  # warm up
    out.unlink(missing_ok=True)
    r = run(cdbdump_cmd("-q", "-d", "31", "--message-level", "0", "--report-json", str(js),
                        str(vmcore), str(out)))
    rep = _report(js, r)
    timings = rep["timings"]
    assert isinstance(timings, dict)
    plan = sum(timings[k] for k in ("read headers", "check memory holes", "exclude pages"))
    ram = ram_gib << 30
    print(f"  path {rep['path_taken']}; plan {plan:.3f} s = {plan * TIB / ram:.2f} s per TiB "
          f"(target <= 0.5); total {r.wall_s:.2f} s; peak RSS {r.max_rss_kib / 1024:.1f} MiB "
          "(target < 96)")


def part_scan(work: Path, ram_gib: int, rounds: int, with_ab: bool = True) -> None:
    print(f"== scan: mem_map scan on a synthetic {ram_gib} GiB machine, -l -d 31 ==")
    vmcore = synthetic_machine(work, ram_gib, DENSE_FRACTION)
    out, js = work / "scan.kdump", work / "scan.json"
    out.unlink(missing_ok=True)
    js.unlink(missing_ok=True)  # else the run refuses to overwrite it, and a stale one is read
    r = run(cdbdump_cmd("-l", "-d", "31", "--message-level", "0", "--report-json", str(js),
                        str(vmcore), str(out)))
    rep = _report(js, r)
    timings = rep["timings"]
    assert isinstance(timings, dict)
    scan = timings["exclude pages"]
    print(f"  path {rep['path_taken']}; scan {scan:.3f} s = {scan * TIB / (ram_gib << 30):.2f} s "
          f"per TiB (target <= 5); total {r.wall_s:.2f} s; peak RSS "
          f"{r.max_rss_kib / 1024:.1f} MiB")
    if shutil.which("makedumpfile") and with_ab:
        theirs = work / "scan-mdf.kdump"
        ab("cdbdump", cdbdump_cmd("-l", "-d", "31", "--message-level", "0", str(vmcore), str(out)),
           "makedumpfile", ["makedumpfile", "-l", "-d", "31", "--message-level", "0",
                            str(vmcore), str(theirs)], out, theirs, rounds,
           f"{ram_gib} GiB synthetic -l -d 31")
        out.unlink(missing_ok=True)
        theirs.unlink(missing_ok=True)


def part_dense(work: Path, out_dir: Path, rounds: int) -> None:
    """64 GiB, every section's mem_map present, 2 % of frames holding data."""
    print("== dense: 64 GiB synthetic machine, dense mem_map, -l -d 31 ==")
    vmcore = synthetic_machine(work, 64, DENSE_FRACTION)
    out, theirs = out_dir / "dense.kdump", out_dir / "dense-mdf.kdump"
    subprocess.run(["cat", str(vmcore)], stdout=subprocess.DEVNULL, check=True)
    if shutil.which("makedumpfile") is None:
        print("  makedumpfile not installed: skipped")
        return
    row = ab("cdbdump", cdbdump_cmd("-l", "-d", "31", "--message-level", "0", str(vmcore),
                                    str(out)),
             "makedumpfile", ["makedumpfile", "-l", "-d", "31", "--message-level", "0",
                              str(vmcore), str(theirs)], out, theirs, rounds,
             "64 GiB dense synthetic -l -d 31")
    row["identical"] = _same(out, theirs)
    print(f"  outputs byte-identical: {row['identical']}")
    floor(vmcore, out, row)
    out.unlink(missing_ok=True)
    theirs.unlink(missing_ok=True)


def part_refilter(work: Path, ram_gib: int, rounds: int) -> None:
    print(f"== refilter: -l -d 1 dump of a sparse synthetic {ram_gib} GiB machine to -d 31 ==")
    if shutil.which("makedumpfile") is None:
        print("  makedumpfile not installed: skipped")
        return
    vmcore = synthetic_machine(work, ram_gib)
    d1 = work / f"synthetic-6.1-{ram_gib}g.d1.kdump"
    if not d1.exists():
        subprocess.run(["makedumpfile", "-l", "-d", "1", "--message-level", "0", str(vmcore),
                        str(d1)], check=True)
    ours, theirs = work / "refilter.kdump", work / "refilter-mdf.kdump"
    ab("cdbdump", cdbdump_cmd("-l", "-d", "31", "--message-level", "0", str(d1), str(ours)),
       "makedumpfile", ["makedumpfile", "-l", "-d", "31", "--message-level", "0", str(d1),
                        str(theirs)], ours, theirs, rounds,
       f"{ram_gib} GiB synthetic, refilter a -l -d 1 dump to -l -d 31")
    print(f"  outputs byte-identical: {ours.read_bytes() == theirs.read_bytes()}")
    v = run(cdbdump_cmd("verify", str(d1)))
    print(f"  verify of the -d 1 dump ({d1.stat().st_size / 2**20:.0f} MiB): {v.wall_s:.2f} s, "
          f"peak RSS {v.max_rss_kib / 1024:.1f} MiB: {v.stdout.strip()}")


def part_kernel(work: Path) -> None:
    print("== kernel: the crash dump bitmap filled at panic by a real 6.1 kernel (QEMU TCG) ==")
    from fixtures import real_bitmap_vmcore

    vmcore = real_bitmap_vmcore.ensure()
    print(f"  {real_bitmap_vmcore.measure(vmcore)}; the RFC: 17.5 s per TB on hardware")
    subprocess.run(["cat", str(vmcore)], stdout=subprocess.DEVNULL, check=True)
    for tag, args in (("-q plan", ["-q"]), ("mem_map scan", [])):
        out, js = work / "kernel.kdump", work / "kernel.json"
        took = []  # best of 4 (the first one warms up): a 1 GiB run is milliseconds
        for _ in range(4):
            out.unlink(missing_ok=True)
            js.unlink(missing_ok=True)
            r = run(cdbdump_cmd(*args, "-l", "-d", "31", "--message-level", "0",
                                "--report-json", str(js), str(vmcore), str(out)))
            rep = _report(js, r)
            timings = rep["timings"]
            assert isinstance(timings, dict)
            steps = (("read headers", "check memory holes", "exclude pages") if args
                     else ("exclude pages",))
            took.append(sum(timings[k] for k in steps))
        best = min(took[1:])
        ram = int(str(rep["max_mapnr"])) * 4096
        print(f"  cdbdump {tag}: path {rep['path_taken']}, {best * 1e3:.1f} ms for "
              f"{ram / 2**30:.2f} GiB = {best * TIB / ram:.2f} s per TiB"
              + (" (mostly fixed costs at this size; see the plan part)" if args else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip", action="append", default=[],
                        choices=["real", "dense", "plan", "scan", "refilter", "flat", "dmesg",
                                 "kernel", "batch"])
    parser.add_argument("--flat-vmcore", default="debian12-6.1-4g",
                        help="catalogue vmcore of the flat part (fixtures/real_vmcores.py)")
    parser.add_argument("--ram-gib", type=int, default=64)
    parser.add_argument("--levels", default="31,1,0", help="dump levels of the real part")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads-vs", default="-l,-c,-z",
                        help="codecs run against makedumpfile --num-threads 2 too (-d 0, -d 1)")
    parser.add_argument("--work", type=Path, default=REPO / ".cache" / "bench")
    parser.add_argument("--editable", action="store_true",
                        help="run cdbdump from the development venv, not a wheel install")
    parser.add_argument("--json", type=Path, default=REPO / ".cache" / "bench" / "bench.json")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    global PYTHON
    PYTHON = wheel_venv.cdbdump_python(args.work, args.editable)
    # outputs go to memory when it can hold them: a -d 0 dump of the 4 GiB
    # vmcore is GBs, and the disk is the input's
    shm = Path("/dev/shm")
    out_root = shm if shm.is_dir() and os.access(shm, os.W_OK) else args.work
    with tempfile.TemporaryDirectory(dir=out_root, prefix="cdbdump-bench-") as tmp:
        work = Path(tmp)
        if "real" not in args.skip:
            part_real(work, args.rounds, [int(x) for x in args.levels.split(",")],
                      args.threads_vs.split(","))
        if "dense" not in args.skip:
            part_dense(args.work, work, args.rounds)
        if "plan" not in args.skip:
            part_plan(args.work, args.ram_gib)
        if "scan" not in args.skip:
            # at 64 GiB the dense part already ran the A/B on the same machine
            part_scan(args.work, args.ram_gib, args.rounds,
                      with_ab=args.ram_gib != 64 or "dense" in args.skip)
        if "refilter" not in args.skip:
            part_refilter(args.work, args.ram_gib, args.rounds)
        if "flat" not in args.skip:
            part_flat(work, args.rounds, args.flat_vmcore)
        if "dmesg" not in args.skip:
            part_dmesg(work, args.rounds)
        if "kernel" not in args.skip:
            part_kernel(work)
        if "batch" not in args.skip:
            import batch  # a sibling module, as wheel_venv

            batch.main_part(args.work, PYTHON)
    print_table(args.json)


if __name__ == "__main__":
    main()
