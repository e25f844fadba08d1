"""Entry point of the self-contained cdbdump executable (packaging/capture/build.sh).

In a capture kernel memory is what runs out. When it does, the kernel's OOM killer
sends SIGKILL, and a killed process says nothing: kdump's script would see exit
137 and no reason. So this entry forks before cdbdump is imported: the child runs
the CLI (and is the OOM killer's first choice, oom_score_adj 1000), the parent
(a bare interpreter, a few MiB) waits, and when the child dies of a signal prints
one line naming it and the memory there was, and exits 1 as any failure does.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

EXIT_FAILED = 1
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _mem_available_kib() -> str:
    try:
        with Path("/proc/meminfo").open() as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return line.split()[1]
    except OSError:
        pass
    return "?"


def _set_oom_score_adj(value: int) -> None:
    try:
        Path("/proc/self/oom_score_adj").write_text(str(value))
    except OSError:
        pass  # not Linux, or not allowed: the OOM killer picks the largest anyway


def _no_transparent_hugepages() -> None:
    """prctl(PR_SET_THP_DISABLE) (Linux 3.15): under THP=always (Debian's kernels) the
    heap grows in 2 MiB pages, which in a capture kernel's little memory costs dearly."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE
    except (OSError, AttributeError):
        pass  # not Linux: nothing to disable


def _run_cli() -> None:
    _set_oom_score_adj(1000)
    _no_transparent_hugepages()
    # one BLAS thread: cdbdump does no linear algebra, and each thread has buffers
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from cdbdump.__main__ import run  # the command's entry point: GC off while importing

    run()


def supervise() -> int:
    """Run the CLI in a child; the child's exit status, or 1 if a signal killed it."""
    if sys.argv[1:2] == ["batch"]:
        print("cdbdump: error: `cdbdump batch` is not part of the capture-kernel build",
              file=sys.stderr)
        return EXIT_FAILED
    available = _mem_available_kib()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            _run_cli()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else EXIT_FAILED
        except MemoryError:
            print(f"cdbdump: error: out of memory (MemAvailable was {available} kB at start)",
                  file=sys.stderr)
            code = EXIT_FAILED
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except OSError:
                code = code or EXIT_FAILED
        os._exit(code)
    for signum in FORWARDED:
        signal.signal(signum, lambda s, _f: os.kill(pid, s))
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except ChildProcessError:
            return EXIT_FAILED
        except InterruptedError:
            continue
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        if signum in FORWARDED:
            return 128 + signum
        hint = " (out of memory?)" if signum == signal.SIGKILL else ""
        print(f"cdbdump: error: killed by {signal.Signals(signum).name}{hint}; "
              f"MemAvailable was {available} kB at start; what it wrote is incomplete",
              file=sys.stderr, flush=True)
        return EXIT_FAILED
    return os.WEXITSTATUS(status)


if __name__ == "__main__":
    sys.exit(supervise())
