"""One task in a child process under the worker memory bound: a Dask worker's task.

A Dask worker is not bounded itself: its runtime (event loop, comms, nanny
heartbeats) needs more than a dump does, and a MemoryError in one of its
threads could take the worker down. So the Dask task (``run_bounded``) starts
one child process per input, ``python -m cdbdump.batch.bounded``, which bounds
its memory exactly as a local pool's worker does (run_one applies
limits.apply_memory_bound), runs the task, and hands the Outcome back on a
pipe. A plain subprocess and not multiprocessing: Dask workers are daemonic
processes, which multiprocessing forbids to have children. The cost is one
interpreter start per input (about half a second here).

The child dies with the Dask worker (PR_SET_PDEATHSIG; the thread that starts
it waits for it), so a lost worker leaves no orphan to publish an output its
rerun also writes. A child that dies is rerun here, up to ``max_attempts``
times, then is an error record, as in the local pool; an exception that is not
a CdbdumpError (a bug) is an error record with the child's traceback.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
from dataclasses import replace

from cdbdump.batch.limits import WORKER_ENVIRONMENT, die_with_parent
from cdbdump.batch.tasks import Task, died, failure
from cdbdump.batch.work import BatchOptions, Outcome

__all__ = ("run_bounded",)

_EXIT_BUG = 1  # the child raised: Python printed the traceback on stderr
_TRACEBACK_CHARS = 20_000


def run_bounded(task: Task, options: BatchOptions, memory_bound: int | None,
                max_attempts: int) -> Outcome:
    """``task`` run in a child process bounded to ``memory_bound`` bytes."""
    options = replace(options, memory_bound=memory_bound)
    request = pickle.dumps((task, options, os.getpid()))
    env = {**os.environ, **WORKER_ENVIRONMENT}
    for attempt in range(1, max_attempts + 1):
        child = subprocess.run([sys.executable, "-m", "cdbdump.batch.bounded"], input=request,
                               capture_output=True, env=env, check=False)
        if child.returncode == 0:
            outcome: Outcome = pickle.loads(child.stdout)
            outcome.attempts = attempt
            return outcome
        if child.returncode == _EXIT_BUG:
            trace = child.stderr.decode("utf-8", "replace")[-_TRACEBACK_CHARS:]
            last = trace.strip().splitlines()[-1:] or ["no message"]
            return failure(task, options, f"{task.job.input}: internal error: {last[0]}",
                           attempts=attempt, traceback=trace)
        # killed by a signal (the kernel's OOM killer, a segfault) or os._exit: rerun
    return died(task, options, max_attempts)


def _child() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the batch decides what an interrupt stops
    result = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a stray print cannot corrupt the result
    task, options, parent_pid = pickle.load(sys.stdin.buffer)
    die_with_parent(parent_pid)
    outcome = task.run(options)
    with result:
        result.write(pickle.dumps(outcome))


if __name__ == "__main__":
    _child()
