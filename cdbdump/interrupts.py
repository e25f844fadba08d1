"""Termination signals as an exception, and sections they must not cut.

The CLI calls :func:`install`: SIGTERM (systemd stop, timeout(1)), SIGINT and
SIGHUP then raise :class:`~cdbdump.errors.Interrupted` in the main thread, so
the writer keeps what is on disk, flagged INCOMPLETE. The library wraps the few
steps that must finish once begun (writing the headers and bitmaps, the final
"complete" status) in :func:`deferred`; a signal arriving there is raised when
the section ends. SIGPIPE is left alone (a -F stream reader going away is the
flattened writer's business). Without :func:`install`, ``deferred`` does nothing.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from cdbdump.errors import Interrupted

__all__ = ("TERMINATION_SIGNALS", "deferred", "install")

TERMINATION_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

_depth = 0  # open deferred() sections
_pending: int | None = None  # a signal that arrived inside one


def _handler(signum: int, _frame: FrameType | None) -> None:
    global _pending
    if _depth > 0:
        if _pending is None:
            _pending = signum
        return
    raise Interrupted(signum)


def install() -> None:
    """Raise Interrupted for SIGTERM, SIGINT and SIGHUP (main thread only)."""
    for signum in TERMINATION_SIGNALS:
        signal.signal(signum, _handler)


@contextmanager
def deferred() -> Iterator[None]:
    """Hold termination signals until the section ends, then raise the first one."""
    global _depth, _pending
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0 and _pending is not None:
            signum, _pending = _pending, None
            raise Interrupted(signum)
