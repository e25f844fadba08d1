"""A warm runner: imports cdbdump once, then forks one child per input.

Reads one JSON request per line on stdin ({"argv", "stdout", "stderr", "timeout",
"as_limit"}) and answers one JSON line: exit status (or the signal), peak RSS
of the child in KiB (wait4), wall seconds, and whether it was killed for the
time limit. The child runs cdbdump's real CLI entry point with RLIMIT_AS and
RLIMIT_CPU set; an exception escaping it is printed as Python prints any
uncaught exception (the harness looks for "Traceback") and exits 70.

A forked child starts with this process's peak RSS, which is about a cdbdump
process's own after its imports, so the figure is a fair upper bound.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import time
import traceback

import cdbdump.cli  # warm: every child starts with it imported


def _child(req: dict[str, object]) -> None:
    as_limit = int(req["as_limit"])  # type: ignore[call-overload]
    cpu = int(req["timeout"]) + 1  # type: ignore[call-overload]
    resource.setrlimit(resource.RLIMIT_AS, (as_limit, as_limit))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    out = os.open(str(req["stdout"]), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    err = os.open(str(req["stderr"]), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(out, 1)
    os.dup2(err, 2)
    sys.stdout = os.fdopen(1, "w", closefd=False)
    sys.stderr = os.fdopen(2, "w", closefd=False)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    code = 0
    try:
        cdbdump.cli.main(list(req["argv"]))  # type: ignore[call-overload]
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # the finding itself: print it like an uncaught exception
        traceback.print_exc()
        code = 70
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main() -> None:
    for line in sys.stdin:
        req = json.loads(line)
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            _child(req)
        deadline = start + float(req["timeout"])
        killed = False
        while True:
            wpid, status, usage = os.wait4(pid, os.WNOHANG)
            if wpid == pid:
                break
            if time.monotonic() > deadline and not killed:
                os.kill(pid, signal.SIGKILL)
                killed = True
            time.sleep(0.005)
        answer = {
            "exit": os.waitstatus_to_exitcode(status),
            "max_rss_kib": usage.ru_maxrss,
            "wall_s": time.monotonic() - start,
            "timed_out": killed,
        }
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
