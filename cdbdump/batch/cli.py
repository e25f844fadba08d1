"""`cdbdump batch`: a thin click layer over cdbdump.batch.runner.

    cdbdump batch SRC... --out DIR [-d N] [-c|-l|-p|-z] [--jobs N]
                  [--scheduler ADDRESS | --local-cluster N] [--verify] [--dmesg]

Progress on stderr (one tqdm bar on a terminal, a line per input otherwise), the
merged summary table on stdout. Exit 0 when every input is done or skipped, 1 when
any is an error, 130/143 when interrupted (what finished is in the manifest; the
same command finishes the rest).
"""

from __future__ import annotations

import signal
import sys
import traceback
from pathlib import Path
from types import FrameType
from typing import Any

import click

from cdbdump.batch import hooks
from cdbdump.batch.discover import Job
from cdbdump.batch.limits import MIB
from cdbdump.batch.local import DEFAULT_MEMORY_BOUND, LocalPool
from cdbdump.batch.runner import BatchResult, run_batch
from cdbdump.batch.tasks import Executor
from cdbdump.batch.work import BatchOptions
from cdbdump.codecs import Codec
from cdbdump.errors import CdbdumpError
from cdbdump.mm.levels import MAX_DUMP_LEVEL

__all__ = ("command", "main")

EXIT_COMPLETED, EXIT_FAILED = 0, 1


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


class _Progress:
    """One tqdm bar (inputs and bytes, ETA) on a terminal; a line per input otherwise."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.total = 0
        self.done = 0
        self.sizes: dict[str, int] = {}

    def start(self, jobs: list[Job]) -> None:
        self.total = len(jobs)
        self.sizes = {str(job.input): job.size for job in jobs}
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=sum(self.sizes.values()), unit="B", unit_scale=True,
                            unit_divisor=1024, desc=self._desc(), file=sys.stderr,
                            dynamic_ncols=True)

    def _desc(self) -> str:
        return f"{self.done}/{self.total} inputs"

    def outcome(self, record: dict[str, Any]) -> None:
        if record["input"] in self.sizes:
            self.done += 1
        status = record["status"]
        line = (f"[{self.done}/{self.total}] {status:<7} {record['input']}"
                f" -> {record['output']}")
        if status == "error":
            line = f"[{self.done}/{self.total}] error   {record['error']}"
        else:
            line += (f"  {_size(record.get('size'))} -> {_size(record.get('bytes_out'))}"
                     f"  {record['seconds']:.2f} s")
            if record.get("fallback_reason"):
                line += f"  (bitmap not used: {record['fallback_reason']})"
        if self.bar is not None:
            if status == "error":
                self.bar.write(f"cdbdump batch: {line}", file=sys.stderr)
            self.bar.set_description_str(self._desc(), refresh=False)
            self.bar.update(self.sizes.get(record["input"], 0))
        else:
            click.echo(line, err=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def print_summary(result: BatchResult, executor: Executor) -> None:
    """The merged table: every input of this batch, its latest state over all runs."""
    s = result.summary
    echo = click.echo
    echo(f"\n{len(s.latest)} inputs, manifest {result.manifest}")
    echo(f"{'STATUS':<9}{'INPUTS':>8}{'INPUT SIZE':>14}{'OUTPUT SIZE':>14}")
    by_status: dict[str, list[dict[str, Any]]] = {}
    for record in s.latest:
        by_status.setdefault(str(record["status"]), []).append(record)
    for status in ("done", "skipped", "error"):
        rows = by_status.get(status, [])
        size_in = sum(int(r.get("size") or 0) for r in rows)
        size_out = sum(int(r.get("bytes_out") or 0) for r in rows)
        echo(f"{status:<9}{len(rows):>8}{_size(size_in):>14}{_size(size_out):>14}")
    paths: dict[str, int] = {}
    for record in s.latest:
        if record.get("path_taken"):
            paths[record["path_taken"]] = paths.get(record["path_taken"], 0) + 1
    if paths:
        echo("path taken: " + ", ".join(f"{k} {v}" for k, v in sorted(paths.items())))
    this = result.records
    done = [r for r in this if r["status"] == "done"]
    counts = {k: sum(1 for r in this if r["status"] == k) for k in ("done", "skipped", "error")}
    rate = len(done) / result.seconds if result.seconds else 0.0
    gbps = sum(int(r.get("size") or 0) for r in done) / result.seconds / 1e9 if result.seconds \
        else 0.0
    echo(f"this run: {counts['done']} done, {counts['skipped']} skipped, {counts['error']} "
         f"error in {result.seconds:.1f} s on {executor.description}: {rate:.2f} inputs/s, "
         f"{gbps:.2f} GB/s")
    if result.passed_over:
        echo(f"{result.passed_over} files in the directories were not dumps and were passed over")
    if result.swept:
        echo(f"{len(result.swept)} temporary files of dead workers removed")
    if result.bad_manifest_lines:
        echo(f"{result.bad_manifest_lines} unreadable manifest lines passed over")
    if s.errors:
        echo("errors:")
        for record in s.errors:
            echo(f"  {record['error']}")


class _Interrupted:
    """SIGTERM and SIGHUP end the batch like ^C: workers stopped, exit 128+signal."""

    signum = signal.SIGINT

    def __init__(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.signum = signal.Signals(signum)
        raise KeyboardInterrupt


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("sources", metavar="SRC...", nargs=-1, required=True)
@click.option("-o", "--out", "out_dir", required=True,
              type=click.Path(path_type=Path, file_okay=False),
              help="Output directory: outputs mirror the inputs' paths, plus batch.jsonl.")
@click.option("-d", "dump_level", type=click.IntRange(0, MAX_DUMP_LEVEL), default=31,
              show_default=True, help="Dump level (as cdbdump -d).")
@click.option("-c", "codec", flag_value=Codec.ZLIB.name, help="zlib.")
@click.option("-l", "codec", flag_value=Codec.LZO.name, help="LZO.")
@click.option("-p", "codec", flag_value=Codec.SNAPPY.name, help="snappy.")
@click.option("-z", "codec", flag_value=Codec.ZSTD.name, default=True, help="zstd (default).")
@click.option("--no-compress", "codec", flag_value=Codec.NONE.name, help="Uncompressed.")
@click.option("-q", "use_kernel_bitmap", is_flag=True,
              help="Use the kernel's crash dump bitmap where present (as cdbdump -q).")
@click.option("-f", "force", is_flag=True,
              help="Replace outputs that exist but do not verify (never those that do).")
@click.option("-j", "--jobs", type=click.IntRange(1), default=None,
              help="Local worker processes [default: one per CPU, as memory allows].")
@click.option("--memory", "memory_mib", type=click.IntRange(0), default=DEFAULT_MEMORY_BOUND // MIB,
              show_default=True, help="Memory bound of each worker (local or Dask), MiB (0: none).")
@click.option("--scheduler", metavar="ADDRESS",
              help="Run on a Dask cluster (tcp://host:port); needs cdbdump[dask].")
@click.option("--local-cluster", type=click.IntRange(1), metavar="N",
              help="Start a Dask LocalCluster of N worker processes for this batch.")
@click.option("--shards", type=click.IntRange(1), default=1, show_default=True,
              help="Split each input across K workers by pfn ranges (--split), reassembled.")
@click.option("--verify", is_flag=True, help="Verify each output (cdbdump verify) before "
              "publishing it.")
@click.option("--dmesg", is_flag=True, help="Also write each input's kernel log beside its "
              "output (--dump-dmesg).")
@click.option("-D", "debug", is_flag=True, help="Tracebacks on errors.")
def command(
    *,
    sources: tuple[str, ...],
    out_dir: Path,
    dump_level: int,
    codec: str,
    use_kernel_bitmap: bool,
    force: bool,
    jobs: int | None,
    memory_mib: int,
    scheduler: str | None,
    local_cluster: int | None,
    shards: int,
    verify: bool,
    dmesg: bool,
    debug: bool,
) -> None:
    """Turn every dump named by SRC (files, directories, globs) into a dump in DIR."""
    if sum(x is not None for x in (jobs, scheduler, local_cluster)) > 1:
        raise click.UsageError("--jobs, --scheduler and --local-cluster exclude each other")
    needed = [(verify, hooks.VERIFY), (dmesg, hooks.DMESG)]
    for wanted, hook in needed:
        why = hooks.missing(hook) if wanted else None
        if why:
            _fail(why)
    if shards > 1 and (verify or dmesg):
        raise click.UsageError("--shards does not combine with --verify or --dmesg yet")
    options = BatchOptions(dump_level=dump_level, codec=Codec[codec],
                           use_kernel_bitmap=use_kernel_bitmap, force=force, verify=verify,
                           dmesg=dmesg, shards=shards)
    executor: Executor
    if scheduler is not None or local_cluster is not None:
        from cdbdump.batch.cluster import DaskCluster

        executor = DaskCluster(scheduler, local_workers=local_cluster,
                               memory_bound=memory_mib * MIB or None)
    else:
        executor = LocalPool(jobs, memory_bound=memory_mib * MIB or None)
    progress = _Progress()
    interrupted = _Interrupted()
    try:
        try:
            result = run_batch(sources, out_dir, options, executor, on_start=progress.start,
                               on_outcome=progress.outcome)
        finally:
            progress.close()
    except KeyboardInterrupt:
        _fail(f"interrupted; finished inputs are recorded in {out_dir / 'batch.jsonl'}, "
              "and the same command finishes the rest", 128 + int(interrupted.signum))
    except CdbdumpError as exc:
        if debug:
            traceback.print_exc()
        _fail(str(exc))
    print_summary(result, executor)
    sys.exit(EXIT_FAILED if result.summary.errors else EXIT_COMPLETED)


def _fail(message: str, code: int = EXIT_FAILED) -> None:
    click.echo(f"cdbdump batch: error: {message}", err=True)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    command.main(args=argv, prog_name="cdbdump batch", standalone_mode=True)
