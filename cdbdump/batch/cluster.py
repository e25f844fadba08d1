"""The Dask executor (`pip install 'cdbdump[dask]'`): the same run_one, on a cluster.

``--local-cluster N`` starts a distributed.LocalCluster of N worker processes
(one thread each) on this machine and stops it at the end; ``--scheduler
tcp://host:port`` submits to a running cluster, whose workers must have cdbdump
installed and see the input and output paths under the same names (shared
storage). Each input is one task; results are taken as they complete
(distributed.as_completed) and streamed into the manifest. A lost worker is
Dask's business: the scheduler reruns its task elsewhere, up to
``distributed.scheduler.allowed-failures`` times, then reports KilledWorker,
which becomes an error record. No scheduling or RPC of our own.

The task is bounded.run_bounded: the Dask worker runs the input in a child
process under the same memory bound as a local pool's worker (``--memory``,
96 MiB by default), so an input that needs more is an error record, not a
Dask worker pushed into swap or killed by its nanny's memory limit. The Dask
workers' own runtime (~100 MiB each) is outside the bound.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from functools import partial
from types import TracebackType
from typing import Any

from cdbdump.batch.bounded import close_idle, run_bounded
from cdbdump.batch.limits import MIB, WORKER_ENVIRONMENT
from cdbdump.batch.local import DEFAULT_ATTEMPTS, DEFAULT_MEMORY_BOUND
from cdbdump.batch.tasks import Task, failure, settle
from cdbdump.batch.work import BatchOptions, Outcome
from cdbdump.errors import CdbdumpError, UnsupportedError

__all__ = ("DaskCluster",)

DEFAULT_ALLOWED_FAILURES = 3
_CONNECT_TIMEOUT = "30s"


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise UnsupportedError(
            "--scheduler/--local-cluster need Dask: pip install 'cdbdump[dask]'"
        ) from None
    return distributed


class DaskCluster:
    """A distributed.Client on a scheduler address or on a LocalCluster it starts."""

    def __init__(
        self,
        scheduler: str | None = None,
        *,
        local_workers: int | None = None,
        allowed_failures: int = DEFAULT_ALLOWED_FAILURES,
        memory_bound: int | None = DEFAULT_MEMORY_BOUND,
    ) -> None:
        if (scheduler is None) == (local_workers is None):
            raise ValueError("give exactly one of scheduler and local_workers")
        self.scheduler = scheduler
        self.local_workers = local_workers
        self.allowed_failures = allowed_failures
        self.memory_bound = memory_bound
        self.description = (
            f"Dask LocalCluster of {local_workers} worker process"
            f"{'es' * (local_workers != 1)}" if local_workers is not None
            else f"Dask scheduler {scheduler}"
        ) + (f", {memory_bound // MIB} MiB per task" if memory_bound else "")
        self._client: Any = None
        self._cluster: Any = None
        self._futures: list[Any] = []

    def __enter__(self) -> DaskCluster:
        distributed = _import_distributed()
        import dask

        if self.local_workers is not None:
            for name, value in WORKER_ENVIRONMENT.items():
                os.environ.setdefault(name, value)  # inherited by the worker processes
            # the scheduler of a LocalCluster runs in this process: its config is ours
            with dask.config.set({"distributed.scheduler.allowed-failures":
                                  self.allowed_failures}):
                self._cluster = distributed.LocalCluster(
                    n_workers=self.local_workers, threads_per_worker=1, processes=True,
                    dashboard_address=None, silence_logs=logging.ERROR,
                )
            self._client = distributed.Client(self._cluster)
        else:
            try:
                self._client = distributed.Client(self.scheduler, timeout=_CONNECT_TIMEOUT)
            except (OSError, TimeoutError) as exc:
                raise CdbdumpError(
                    f"cannot connect to the Dask scheduler {self.scheduler}: {exc}"
                ) from exc
        return self

    def worker_pids(self) -> dict[str, int]:
        """Worker address -> pid (for tests and diagnostics)."""
        pids: dict[str, int] = self._client.run(os.getpid)
        return pids

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        client, self._client = self._client, None
        cluster, self._cluster = self._cluster, None
        if client is not None:
            if exc_type is not None and self._futures:
                client.cancel(self._futures)  # a remote cluster stops what it can
            try:
                client.run(close_idle)  # our bounded children, idle now, end with the batch
            except (OSError, TimeoutError):
                pass  # a worker that is gone took its children along (PR_SET_PDEATHSIG)
            client.close()
        if cluster is not None:
            cluster.close()
        self._futures = []

    def run(self, tasks: Iterable[Task], options: BatchOptions) -> Iterator[tuple[Task, Outcome]]:
        distributed = _import_distributed()
        by_key: dict[str, Task] = {}
        for task in tasks:
            future = self._client.submit(
                run_bounded, task, options, self.memory_bound, DEFAULT_ATTEMPTS,
                key=f"cdbdump-batch-{os.getpid()}-{task.number}", pure=False,
            )
            by_key[future.key] = task
            self._futures.append(future)
        for future in distributed.as_completed(self._futures):
            task = by_key[future.key]
            if future.status not in ("finished", "error"):
                yield task, failure(task, options, f"{task.job.input}: task {future.status}")
            else:
                exc = future.exception() if future.status == "error" else None
                if isinstance(exc, distributed.KilledWorker):
                    error = f"{task.job.input}: its Dask worker was lost too often: {exc}"
                    yield task, failure(task, options, error)
                else:
                    yield task, settle(task, options, exc, future.result,
                                       partial(_format_traceback, future))
            future.release()


def _format_traceback(future: Any) -> str:
    import traceback

    tb = future.traceback()
    return "".join(traceback.format_tb(tb)) if tb is not None else ""
