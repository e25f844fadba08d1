"""One huge input across several workers: pfn ranges in, one dump out.

With ``--shards K`` each input becomes K tasks of the same work function
(run_one with a Piece): every worker runs the pipeline up to the final bitmaps,
derives the --split ranges from them (about equal kept pages per range, the
same ranges in every worker since the bitmaps are the same) and writes the
split file of its own range. The Assembler reassembles the K files, in pfn
order, into one dump (makedumpfile --reassemble), byte-identical to the
single-process dump, and publishes it like any output. A piece that fails fails
its input and its sibling pieces are removed; pieces are temporary files, so a
batch that dies leaves nothing the next run would take for a dump.

The classification runs in every worker (it is the cheap part); the page
reads, compression and writes, which dominate big dumps, are divided.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cdbdump.batch.discover import Job
from cdbdump.batch.publish import partial_name, publish
from cdbdump.batch.tasks import Task, failure
from cdbdump.batch.work import DONE, BatchOptions, Outcome, Piece
from cdbdump.errors import CdbdumpError
from cdbdump.writers.sink import create_output
from cdbdump.writers.split import reassemble as reassemble_split

__all__ = ("Assembler", "plan_pieces", "reassemble")

Reassemble = Callable[[list[Path], Path], None]


def reassemble(pieces: list[Path], dumpfile: Path) -> None:
    """makedumpfile --reassemble: the split files, in order, into one new dump file."""
    out = create_output(dumpfile, inputs=pieces)
    try:
        reassemble_split(pieces, out)
    except BaseException:
        out.discard()
        raise
    out.close()


def plan_pieces(job: Job, options: BatchOptions, first_number: int) -> list[Task]:
    """The piece tasks of ``job``, numbered from ``first_number``."""
    return [Task(first_number + i, job, None, Piece(i, options.shards))
            for i in range(options.shards)]


@dataclass(slots=True)
class _Pending:
    total: int
    outcomes: dict[int, Outcome] = field(default_factory=dict)


class Assembler:
    """Collects piece outcomes; returns the input's Outcome once all are in."""

    def __init__(self, options: BatchOptions, reassemble: Reassemble = reassemble
                 ) -> None:
        self.options = options
        self.reassemble = reassemble
        self._pending: dict[Path, _Pending] = {}

    def add(self, task: Task, outcome: Outcome) -> Outcome | None:
        piece = task.piece
        if piece is None:
            return outcome  # not sharded
        entry = self._pending.setdefault(task.job.output, _Pending(piece.total))
        entry.outcomes[piece.number] = outcome
        if len(entry.outcomes) < entry.total:
            return None
        del self._pending[task.job.output]
        pieces = [entry.outcomes[i] for i in range(entry.total)]
        try:
            return self._finish(task, pieces)
        finally:
            for p in pieces:
                if p.status == DONE and p.output:
                    Path(p.output).unlink(missing_ok=True)

    def _finish(self, task: Task, pieces: list[Outcome]) -> Outcome:
        job = task.job
        bad = [p for p in pieces if p.status != DONE]
        if bad:
            return failure(task, self.options, "; ".join(p.error or "piece failed" for p in bad),
                           attempts=max(p.attempts for p in pieces))
        partial = partial_name(job.output)
        try:
            self.reassemble([Path(p.output or "") for p in pieces], partial)
            publish(partial, job.output, replace=self.options.force)
        except CdbdumpError as exc:
            return failure(task, self.options, f"{job.input}: {exc}",
                           attempts=max(p.attempts for p in pieces))
        finally:
            partial.unlink(missing_ok=True)
        return _merged(job, pieces)


def _merged(job: Job, pieces: list[Outcome]) -> Outcome:
    """The input's Outcome from its pieces': each classified the whole input, so the
    page facts are the first piece's; times add up, the peak is the largest."""
    first = pieces[0]
    return Outcome(
        input=str(job.input), output=str(job.output), parts=first.parts, status=DONE,
        size=first.size,
        sha256_1mib=first.sha256_1mib, path_taken=first.path_taken,
        fallback_reason=first.fallback_reason, pages=first.pages,
        original_pages=first.original_pages, remaining_pages=first.remaining_pages,
        bytes_in=first.bytes_in, bytes_out=job.output.stat().st_size,
        seconds=sum(p.seconds for p in pieces), dump_level=first.dump_level,
        dump_level_applied=first.dump_level_applied, codec=first.codec,
        use_kernel_bitmap=first.use_kernel_bitmap, levels_not_applied=first.levels_not_applied,
        warnings=list(first.warnings),
        peak_rss_kib=max(p.peak_rss_kib or 0 for p in pieces), memory_bound=first.memory_bound,
        worker=",".join(p.worker for p in pieces), attempts=max(p.attempts for p in pieces),
    )
