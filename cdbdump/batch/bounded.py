"""Dask's task function: the input run in a child process under the worker memory bound.

A Dask worker is not bounded itself: its runtime (event loop, comms, nanny
heartbeats) needs more than a dump does, and a MemoryError in one of its
threads could take the worker down. So each thread of a Dask worker keeps one
child process, ``python -m cdbdump.batch.bounded``, which bounds its memory
exactly as a local pool's worker does (run_one applies
limits.apply_memory_bound) and runs the tasks handed to it one at a time: a
pickled (task, options) in on its stdin, the pickled Outcome back on its stdout,
each prefixed by its length. A plain subprocess and not multiprocessing: Dask
workers are daemonic processes, which multiprocessing forbids to have children.
The child is kept between tasks (an interpreter start per input costs about a
second on a loaded machine), replaced when the bound asked for changes, and
closed when its batch ends (``close_idle``, run on every worker by the executor).

The child dies with the Dask worker (PR_SET_PDEATHSIG; the thread that starts
it outlives it, or takes it along), so a lost worker leaves no orphan to
publish an output its rerun also writes. A child that dies during a task is
replaced and the task rerun, up to ``max_attempts`` times, then it is an error
record, as in the local pool; an exception that is not a CdbdumpError (a bug)
ends the child with its traceback, which becomes the task's error record.
"""

from __future__ import annotations

import os
import pickle
import signal
import struct
import subprocess
import sys
import tempfile
import threading
from dataclasses import replace
from typing import IO, Any

from cdbdump.batch.limits import WORKER_ENVIRONMENT, die_with_parent
from cdbdump.batch.tasks import Task, died, failure
from cdbdump.batch.work import BatchOptions, Outcome

__all__ = ("close_idle", "run_bounded")

_EXIT_BUG = 1  # the child raised: Python printed the traceback on its stderr
_TRACEBACK_CHARS = 20_000
_LENGTH = struct.Struct("<Q")


def _send(pipe: IO[bytes], value: object) -> None:
    data = pickle.dumps(value)
    pipe.write(_LENGTH.pack(len(data)) + data)
    pipe.flush()


def _receive(pipe: IO[bytes]) -> Any:
    head = pipe.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        raise EOFError
    (size,) = _LENGTH.unpack(head)
    data = pipe.read(size)
    if len(data) < size:
        raise EOFError
    return pickle.loads(data)


class _Child:
    """One bounded child process and the file its stderr goes to."""

    def __init__(self, memory_bound: int | None) -> None:
        self.memory_bound = memory_bound
        self.busy = False
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cdbdump.batch.bounded", str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
            env={**os.environ, **WORKER_ENVIRONMENT})

    def run(self, task: Task, options: BatchOptions) -> Outcome | None:
        """The task's Outcome; None when the child ended first (see ``ended``)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.busy = True
        try:
            _send(self.proc.stdin, (task, options))
            outcome: Outcome = _receive(self.proc.stdout)
        except (BrokenPipeError, EOFError):
            return None
        finally:
            self.busy = False
        return outcome

    def ended(self) -> tuple[int, str]:
        """Wait for the child; its exit status and the end of its stderr."""
        status = self.proc.wait()
        self.stderr.seek(0)
        text = self.stderr.read().decode("utf-8", "replace")[-_TRACEBACK_CHARS:]
        self.close()
        return status, text

    def close(self) -> None:
        """End the child (its stdin closed: it returns) and wait for it."""
        with _lock:
            _children.discard(self)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        self.proc.wait()
        self.stderr.close()


_local = threading.local()  # this thread's child
_lock = threading.Lock()
_children: set[_Child] = set()  # every thread's, for close_idle


def close_idle() -> int:
    """End the children of this process that run no task now; how many were ended."""
    with _lock:
        idle = [c for c in _children if not c.busy]
    for child in idle:
        child.close()
    return len(idle)


def _child(memory_bound: int | None) -> _Child:
    child: _Child | None = getattr(_local, "child", None)
    if child is not None and (child.memory_bound != memory_bound
                              or child.proc.poll() is not None):
        child.close()  # another bound (or a dead child): a fresh child
        child = None
    if child is None:
        child = _local.child = _Child(memory_bound)
        with _lock:
            _children.add(child)
    return child


def run_bounded(task: Task, options: BatchOptions, memory_bound: int | None,
                max_attempts: int) -> Outcome:
    """``task`` run in this thread's child process, bounded to ``memory_bound`` bytes."""
    options = replace(options, memory_bound=memory_bound)
    for attempt in range(1, max_attempts + 1):
        child = _child(memory_bound)
        outcome = child.run(task, options)
        if outcome is not None:
            outcome.attempts = attempt
            return outcome
        _local.child = None
        status, stderr = child.ended()
        if status == _EXIT_BUG:
            last = stderr.strip().splitlines()[-1:] or ["no message"]
            return failure(task, options, f"{task.job.input}: internal error: {last[0]}",
                           attempts=attempt, traceback=stderr)
        # killed by a signal (the kernel's OOM killer, a segfault, a test): rerun
    return died(task, options, max_attempts)


def _serve(parent_pid: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the batch decides what an interrupt stops
    die_with_parent(parent_pid)
    requests = sys.stdin.buffer
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a stray print cannot corrupt a reply
    while True:
        try:
            task, options = _receive(requests)
        except EOFError:
            return  # the Dask worker closed our stdin, or ended
        _send(replies, task.run(options))


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
