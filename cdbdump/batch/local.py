"""The default executor: a pool of worker processes on this machine.

Workers are spawned (not forked: the parent may hold threads), run with one BLAS
thread and two malloc arenas, ignore SIGINT (the parent decides what an
interrupt stops), die with the process that started them (PR_SET_PDEATHSIG:
an orphan never publishes an output its task's rerun also writes) and bound
their own memory (limits.apply_memory_bound, applied by run_one). At most one
task per worker is in flight, so when a worker dies the tasks it may have been
running are known: they are retried in a fresh pool, up to ``max_attempts``
times, and then recorded as errors; the batch goes on.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import traceback
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from functools import partial
from multiprocessing.queues import SimpleQueue
from pathlib import Path
from types import TracebackType

from cdbdump.batch.limits import MIB, WORKER_ENVIRONMENT, die_with_parent
from cdbdump.batch.tasks import Task, died, settle
from cdbdump.batch.work import BatchOptions, Outcome

__all__ = ("DEFAULT_ATTEMPTS", "DEFAULT_MEMORY_BOUND", "LocalPool", "default_workers")

DEFAULT_MEMORY_BOUND = 96 * MIB
_PER_WORKER_BUDGET = 128 * MIB  # the bound plus the interpreter, for sizing the pool
DEFAULT_ATTEMPTS = 3


def _mem_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def default_workers() -> int:
    """One worker per CPU this process may use, as many as the free memory holds."""
    cpus = len(os.sched_getaffinity(0))
    available = _mem_available()
    if available is None:
        return max(1, cpus)
    return max(1, min(cpus, available // _PER_WORKER_BUDGET))


def _init_worker(pids: SimpleQueue[int], parent_pid: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent_pid)
    pids.put(os.getpid())


def _remote_traceback(exc: BaseException | None) -> str:
    if exc is None:
        return ""
    cause = exc.__cause__  # concurrent.futures keeps the worker's traceback text here
    text = str(cause) if cause is not None else ""
    return text or "".join(traceback.format_exception(exc))


class LocalPool:
    """A process pool sized to the machine; implements tasks.Executor."""

    def __init__(
        self,
        workers: int | None = None,
        *,
        memory_bound: int | None = DEFAULT_MEMORY_BOUND,
        max_attempts: int = DEFAULT_ATTEMPTS,
    ) -> None:
        self.workers = workers or default_workers()
        self.memory_bound = memory_bound
        self.max_attempts = max_attempts
        bound = f", {memory_bound // MIB} MiB each" if memory_bound else ""
        self.description = f"{self.workers} local worker{'s' * (self.workers != 1)}{bound}"
        self._ctx = multiprocessing.get_context("spawn")
        self._pids: SimpleQueue[int] = self._ctx.SimpleQueue()
        self._known_pids: set[int] = set()
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> LocalPool:
        for name, value in WORKER_ENVIRONMENT.items():
            os.environ.setdefault(name, value)  # inherited by the spawned workers
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop(kill=exc_type is not None)

    def _start(self, workers: int) -> ProcessPoolExecutor:
        self._pool = ProcessPoolExecutor(
            max_workers=workers, mp_context=self._ctx, initializer=_init_worker,
            initargs=(self._pids, os.getpid()),
        )
        return self._pool

    def worker_pids(self) -> set[int]:
        """Pids of this pool's live workers (only our own children, never a reused pid)."""
        while not self._pids.empty():
            self._known_pids.add(self._pids.get())
        alive = {p.pid for p in multiprocessing.active_children() if p.pid is not None}
        self._known_pids &= alive
        return set(self._known_pids)

    def _stop(self, *, kill: bool) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if kill:  # interrupted: end the running tasks now; their .part files are swept
            for pid in self.worker_pids():
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        pool.shutdown(wait=True, cancel_futures=True)

    def run(self, tasks: Iterable[Task], options: BatchOptions) -> Iterator[tuple[Task, Outcome]]:
        options = replace(options, memory_bound=self.memory_bound)
        pending = deque(tasks)
        runs: dict[int, int] = {}  # times each task was submitted
        deaths: dict[int, int] = {}  # times a worker died running the task alone
        suspects: set[int] = set()  # in flight when a worker died: run alone from now on
        running: dict[Future[Outcome], Task] = {}
        if not pending:
            return
        workers = min(self.workers, len(pending))  # no idle workers to start
        pool = self._pool or self._start(workers)
        while pending or running:
            while pending and len(running) < workers:
                if any(t.number in suspects for t in running.values()):
                    break  # a suspect runs alone, so that a death is attributed exactly
                if pending[0].number in suspects and running:
                    break
                task = pending.popleft()
                runs[task.number] = runs.get(task.number, 0) + 1
                future = pool.submit(task.run, options)
                running[future] = task
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            alone = len(running) == 1
            broken = False
            for future in done:
                task = running.pop(future)
                exc = future.exception()
                if isinstance(exc, BrokenProcessPool):
                    broken = True
                    yield from self._died(task, options, alone, deaths, suspects, pending)
                    continue
                yield task, settle(task, options, exc, future.result,
                                   partial(_remote_traceback, exc),
                                   attempts=runs[task.number])
            if broken:
                # the whole pool is gone: every task still in flight failed with it
                for future in list(running):
                    task = running.pop(future)
                    yield from self._died(task, options, False, deaths, suspects, pending)
                self._stop(kill=True)
                pool = self._start(workers)

    def _died(
        self,
        task: Task,
        options: BatchOptions,
        alone: bool,
        deaths: dict[int, int],
        suspects: set[int],
        pending: deque[Task],
    ) -> Iterator[tuple[Task, Outcome]]:
        """A worker died while ``task`` was in flight: retry it, or give up on it."""
        if alone:
            deaths[task.number] = deaths.get(task.number, 0) + 1
            if deaths[task.number] >= self.max_attempts:
                yield task, died(task, options, deaths[task.number])
                return
        suspects.add(task.number)
        pending.appendleft(task)

