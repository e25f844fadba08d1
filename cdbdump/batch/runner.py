"""A batch from start to end: discover, skip what is done, run the rest, record it all.

Silent, like the rest of the library: it reports through callbacks, and the
CLI renders. One batch at a time per output directory (BatchLock); temporary
files of dead workers are swept before and after; every outcome is appended to
the manifest the moment it arrives, so an interrupted batch loses nothing that
finished, and the next run skips it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cdbdump.batch.discover import Job, discover
from cdbdump.batch.manifest import (
    MANIFEST_NAME,
    Manifest,
    Summary,
    finished_by_output,
    read_records,
    summarise,
)
from cdbdump.batch.publish import BatchLock, sweep_partials
from cdbdump.batch.shards import Assembler, plan_pieces
from cdbdump.batch.tasks import Executor, Task
from cdbdump.batch.work import ERROR, BatchOptions, Outcome, existing_outcome
from cdbdump.errors import CdbdumpError, OutputError

__all__ = ("BatchResult", "run_batch")

StartCallback = Callable[[list[Job]], None]
OutcomeCallback = Callable[[dict[str, Any]], None]


@dataclass(slots=True)
class BatchResult:
    manifest: Path
    jobs: list[Job]
    records: list[dict[str, Any]] = field(default_factory=list)  # this run's, in arrival order
    summary: Summary = field(default_factory=Summary)  # merged over every run of these inputs
    seconds: float = 0.0
    passed_over: int = 0  # non-dump files in walked directories
    swept: list[Path] = field(default_factory=list)  # dead workers' temporary files removed
    bad_manifest_lines: int = 0

    @property
    def errors(self) -> int:
        return sum(1 for r in self.records if r.get("status") == ERROR)


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def run_batch(
    sources: Sequence[str],
    out_dir: Path,
    options: BatchOptions,
    executor: Executor,
    *,
    on_start: StartCallback | None = None,
    on_outcome: OutcomeCallback | None = None,
) -> BatchResult:
    """Process every input named by ``sources`` into ``out_dir``.

    Raises:
        CdbdumpError: the output directory, its lock or its manifest cannot be used
            (a bad input never raises: it is an error record).
    """
    start = time.perf_counter()
    out_dir = out_dir.absolute()
    try:
        out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output directory: {exc.strerror}",
                          path=str(out_dir)) from exc
    run_id = f"{_stamp()}-{os.getpid()}"
    manifest_path = out_dir / MANIFEST_NAME
    with BatchLock(out_dir):
        swept = sweep_partials(out_dir)
        found = discover(sources, out_dir)
        old_records, bad_lines = read_records(manifest_path)
        finished = finished_by_output(old_records)
        result = BatchResult(manifest_path, found.jobs, passed_over=found.passed_over,
                             swept=swept, bad_manifest_lines=bad_lines)
        tasks = [Task(i, job, finished.get(str(job.output))) for i, job in enumerate(found.jobs)]
        if on_start is not None:
            on_start(found.jobs)

        with Manifest(manifest_path) as manifest:

            def record(outcome: Outcome) -> None:
                entry = {"run": run_id, "time": _stamp(), **outcome.as_json()}
                manifest.append(entry)
                result.records.append(entry)
                if on_outcome is not None:
                    on_outcome(entry)

            for src, why in found.problems:
                record(Outcome(input=src, output=None, status=ERROR, error=f"{src}: {why}",
                               dump_level=options.dump_level, codec=options.codec.label))
            assembler = Assembler(options)
            if options.shards > 1:
                tasks = _shard(tasks, options, record)
            try:
                with executor:
                    for task, outcome in executor.run(tasks, options):
                        whole = assembler.add(task, outcome)
                        if whole is not None:
                            record(whole)
            finally:
                result.swept += sweep_partials(out_dir)
        records, _ = read_records(manifest_path)
        names = [str(job.input) for job in found.jobs] + [src for src, _ in found.problems]
        result.summary = summarise(records, names)
    result.seconds = time.perf_counter() - start
    return result


def _shard(
    tasks: list[Task], options: BatchOptions, record: Callable[[Outcome], None]
) -> list[Task]:
    """Piece tasks for every input not finished yet (planned here, in the parent)."""
    pieces: list[Task] = []
    for task in tasks:
        job = task.job
        outcome = Outcome.begin(job.input, job.output, options, job.parts)
        try:
            if existing_outcome(job.input, job.output, options, task.previous, outcome,
                                job.parts):
                record(outcome)
                continue
            pieces += plan_pieces(job, options, len(pieces))
        except CdbdumpError as exc:
            outcome.status, outcome.error = ERROR, f"{job.input}: {exc}"
            record(outcome)
    return pieces
