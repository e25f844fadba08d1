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

import os
import resource
import threading
from pathlib import Path

__all__ = (
    "MIB",
    "THREAD_STACK_BYTES",
    "WORKER_ENVIRONMENT",
    "apply_memory_bound",
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
