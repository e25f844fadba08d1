"""What executors receive and return: a Task per input, an Outcome per Task."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, Protocol

from cdbdump.batch.discover import Job
from cdbdump.batch.work import ERROR, BatchOptions, Outcome, Piece, run_one

__all__ = ("Executor", "Task", "died", "failure", "settle")


class Task(NamedTuple):
    number: int  # position in the batch
    job: Job
    previous: dict[str, Any] | None  # the manifest's last finished record of job.output
    piece: Piece | None = None  # one pfn range of a sharded input (--shards)

    def run(self, options: BatchOptions) -> Outcome:
        """The work function on this task (what every executor runs, in a worker)."""
        job = self.job
        return run_one(job.input, job.output, options, self.previous, self.piece, job.parts)

    @property
    def inputs(self) -> tuple[Path, ...]:
        return (self.job.input, *self.job.parts)


class Executor(Protocol):
    """Runs run_one over tasks and yields each (task, outcome) as it completes."""

    description: str

    def __enter__(self) -> Executor: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def run(self, tasks: Iterable[Task], options: BatchOptions) -> Iterator[tuple[Task, Outcome]]:
        ...


def failure(
    task: Task, options: BatchOptions, error: str, *, attempts: int = 1,
    traceback: str | None = None, worker: str | None = None,
) -> Outcome:
    """The Outcome of a task whose work function never returned one."""
    return Outcome(
        input=str(task.job.input),
        output=str(task.job.output),
        parts=[str(p) for p in task.job.parts] or None,
        status=ERROR,
        error=error,
        size=task.job.size,
        dump_level=options.dump_level,
        codec=options.codec.label,
        use_kernel_bitmap=options.use_kernel_bitmap,
        worker=worker or f"{socket.gethostname()}:{os.getpid()}",
        attempts=attempts,
        traceback=traceback,
    )


def settle(
    task: Task, options: BatchOptions, exc: BaseException | None,
    result: Callable[[], Outcome], traceback: Callable[[], str], *, attempts: int | None = None,
) -> Outcome:
    """What a finished task yields: its Outcome when the work function returned one
    (``exc`` is None), else ``exc`` was not a CdbdumpError but a bug in cdbdump, an
    error record with its traceback. Executors handle their lost workers first.
    ``attempts``: runs of the task, when the executor counted them."""
    if exc is None:
        outcome = result()
        if attempts is not None:
            outcome.attempts = attempts
        return outcome
    return failure(task, options,
                   f"{task.job.input}: internal error: {type(exc).__name__}: {exc}",
                   attempts=attempts or 1, traceback=traceback())


def died(task: Task, options: BatchOptions, times: int) -> Outcome:
    """The Outcome of a task whose worker process died every time it ran it alone."""
    return failure(task, options, f"{task.job.input}: the worker process died while "
                   f"processing it alone, {times} times", attempts=times)
