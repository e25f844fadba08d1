"""A batch worker's memory bound, and the peak RSS of each input it processes.

The bound is RLIMIT_DATA: since Linux 4.7 it covers every private writable
mapping (heap, numpy arrays, anonymous mmaps), so an input that makes a worker
allocate past it fails with MemoryError instead of pushing the machine into
swap. The input is read with pread into window-sized buffers, which count (a
few windows); its pages in the page cache do not. Thread
stacks are private writable mappings too; they are address space, not memory,
and are added to the limit (Python's threads get small ones).

Only the standard library is imported here: the pool initializer runs it in a
fresh process before numpy is loaded.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import threading
from pathlib import Path

__all__ = (
    "MIB",
    "THREAD_STACK_BYTES",
    "WORKER_ENVIRONMENT",
    "apply_memory_bound",
    "die_with_parent",
    "peak_rss_kib",
    "reset_peak_rss",
)

MIB = 1 << 20
THREAD_STACK_BYTES = 1 * MIB  # stack of threads started by Python (threading.stack_size)
_MAX_NATIVE_THREADS = 8  # compressor threads at most (cdbdump.writers.compress _MAX_THREADS)
_DEFAULT_NATIVE_STACK = 32 * MIB  # glibc's x86_64 thread stack when RLIMIT_STACK is unlimited

# One numerical thread and two malloc arenas per worker: the workers are the
# parallelism, and each idle BLAS thread or arena would reserve memory of its own.
WORKER_ENVIRONMENT = {
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "MALLOC_ARENA_MAX": "2",
}


def _native_stack_bytes() -> int:
    """Stack size glibc gives threads created in C (zstd's pool): RLIMIT_STACK at start."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_STACK)
    return _DEFAULT_NATIVE_STACK if soft == resource.RLIM_INFINITY else int(soft)


def apply_memory_bound(memory_bytes: int) -> int:
    """Bound this process's private memory to ``memory_bytes`` (plus thread stacks).

    Returns the RLIMIT_DATA set. Never raises the hard limit; a hard limit below
    the request is kept as it is.
    """
    threading.stack_size(THREAD_STACK_BYTES)
    nr_threads = min(len(os.sched_getaffinity(0)), _MAX_NATIVE_THREADS)
    limit = memory_bytes + nr_threads * (_native_stack_bytes() + THREAD_STACK_BYTES)
    _soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    return limit


_PR_SET_PDEATHSIG = 1  # include/uapi/linux/prctl.h


def die_with_parent(parent_pid: int) -> None:
    """Be killed when the process that started this one ends (prctl PR_SET_PDEATHSIG).

    The signal comes when the thread that created this process exits: a pool's
    workers are created by the thread that submits to it, which outlives them.
    ``parent_pid`` (0: do not check) closes the race with a parent that ended
    before the prctl.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return  # not Linux: the worker outlives a killed parent, as before
    if parent_pid and os.getppid() != parent_pid:
        os._exit(1)


def reset_peak_rss() -> None:
    """Start a new peak-RSS measurement (Linux >= 4.0: clear_refs 5 resets VmHWM)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # no /proc or no permission: peak_rss_kib() then reports the process peak


def peak_rss_kib() -> int:
    """Peak RSS since reset_peak_rss() (the process's, where it cannot be reset)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
