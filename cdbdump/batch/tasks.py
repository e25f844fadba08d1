"""What executors receive and return: a Task per input, an Outcome per Task."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any, NamedTuple, Protocol

from cdbdump.batch.discover import Job
from cdbdump.batch.work import ERROR, BatchOptions, Outcome, Piece

__all__ = ("Executor", "Task", "failure")


class Task(NamedTuple):
    number: int  # position in the batch
    job: Job
    previous: dict[str, Any] | None  # the manifest's last finished record of job.output
    piece: Piece | None = None  # one pfn range of a sharded input (--shards)


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
