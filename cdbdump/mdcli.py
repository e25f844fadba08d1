"""The ``makedumpfile`` personality: cdbdump behind makedumpfile's command line.

Used when cdbdump runs under the name ``makedumpfile`` (a symbolic link made by
the administrator: never installed by default, so a real makedumpfile is never
shadowed) or as ``cdbdump --as-makedumpfile``. It behaves as makedumpfile does
for the scripts that call it: no codec flag means uncompressed pages, usage
errors exit 1, messages go where makedumpfile's go (stdout, or stderr with -F:
``flag_strerr_message``), ``--message-level`` bits mean what they mean there.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from cdbdump import __version__
from cdbdump.mdopts import (
    ML_COMMON,
    ML_DEBUG,
    ML_ERROR,
    ML_PROGRESS,
    ML_REPORT,
    OPTIONS,
    Effect,
    Invocation,
    Mode,
    ParamError,
    parse,
)

__all__ = ("MAKEDUMPFILE_VERSION", "Messages", "Progress", "main")

# The makedumpfile release whose command line and messages this personality follows.
MAKEDUMPFILE_VERSION = "1.7.9"

EXIT_COMPLETED = 0
EXIT_FAILED = 1

# makedumpfile.h PROGRESS_* step names, for cdbdump's steps
STEP_NAMES = {
    "check memory holes": "Checking for memory holes",
    "exclude pages": "Excluding unnecessary pages",
    "write pages": "Copying data",
}
COPY_STEP = "Copying data"


@dataclass(slots=True)
class Messages:
    """makedumpfile's print_info.h macros: MSG, ERRMSG, DEBUG_MSG, REPORT_MSG, PROGRESS_MSG."""

    level: int
    to_stderr: bool  # flag_strerr_message (-F): stdout carries dump data only
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)

    def _out(self) -> TextIO:
        return self.stderr if self.to_stderr else self.stdout

    def msg(self, text: str) -> None:
        if self.level & ML_COMMON:
            self._out().write(text + "\n")
            self._out().flush()

    def error(self, text: str) -> None:
        if self.level & ML_ERROR:
            self.stderr.write(f"makedumpfile: {text}\n")
            self.stderr.flush()

    def debug(self, text: str) -> None:
        if self.level & ML_DEBUG:
            self._out().write(text + "\n")
            self._out().flush()

    def report(self, text: str) -> None:
        if self.level & ML_REPORT:
            self._out().write(text + "\n")

    def progress_write(self, text: str) -> None:
        if self.level & ML_PROGRESS:
            self.stderr.write(text)
            self.stderr.flush()


class Progress:
    """makedumpfile print_progress: one ``\\r`` line per step, redrawn at most once a
    second, whether or not stderr is a terminal; 100 % is always drawn."""

    SPINNER = "/|\\-"

    def __init__(self, messages: Messages, clock: Callable[[], float] = time.monotonic) -> None:
        self.messages = messages
        self.clock = clock
        self.last_second: int | None = None
        self.lapse = 0
        self.step: str | None = None
        self.step_start = 0.0

    def __call__(self, step: str, done: int, total: int) -> None:
        now = self.clock()
        if step != self.step:
            self.step, self.step_start = step, now
        if done < total:
            second = int(now)
            if self.last_second is not None and second - self.last_second < 1:
                return
            self.last_second = second
            promille = done * 1000 // total if total else 1000
        else:
            promille = 1000
        eta = " "
        if promille and step == COPY_STEP:  # makedumpfile passes a start time only there
            elapsed = now - self.step_start
            eta = _eta(int(elapsed * 1000 / promille - elapsed))
        line = (f"{step:<50}: [{promille // 10:3d}.{promille % 10} %] "
                f"{self.SPINNER[self.lapse % 4]}  {eta:>16}")
        self.lapse += 1
        self.messages.progress_write("\r" + line)


def _eta(seconds: int) -> str:
    """makedumpfile eta_to_human_short."""
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if seconds < 100:
        return f"eta: {seconds}s"
    if minutes < 100:
        return f"eta: {minutes}m{seconds % 60}s"
    if hours < 48:
        return f"eta: {hours}h{minutes % 60}m"
    if days < 100:
        return f"eta: {days}d{hours % 24}h"
    return "eta: >100day"


def version_lines() -> list[str]:
    """makedumpfile show_version, with cdbdump's own version in the parentheses."""
    from cdbdump.codecs import Codec

    lines = [f"makedumpfile: version {MAKEDUMPFILE_VERSION} (cdbdump {__version__})"]
    for codec, name in ((Codec.LZO, "lzo"), (Codec.SNAPPY, "snappy"), (Codec.ZSTD, "zstd")):
        lines.append(f"{name}\t{'enabled' if codec.available else 'disabled'}")
    return [*lines, ""]


def usage_lines() -> list[str]:
    """A short print_usage: the invocation forms, then every option and its effect."""
    lines = [
        "",
        "cdbdump in makedumpfile's place. Usage:",
        "  makedumpfile [-c|-l|-p|-z|-E] [-d DL] [-q] VMCORE DUMPFILE",
        "  makedumpfile -F [-c|-l|-p|-z|-E] [-d DL] VMCORE",
        "  makedumpfile -R DUMPFILE",
        "  makedumpfile --split [OPTION] VMCORE DUMPFILE1 DUMPFILE2 [DUMPFILE3 ..]",
        "  makedumpfile --reassemble DUMPFILE1 DUMPFILE2 [DUMPFILE3 ..] DUMPFILE",
        "  makedumpfile --dump-dmesg VMCORE LOGFILE",
        "  makedumpfile --mem-usage VMCORE",
        "",
        "Options:",
    ]
    for spec in OPTIONS:
        arg = " ARG" if spec.takes_arg else ""
        effect = "" if spec.effect is Effect.IMPLEMENTED else f" [{spec.effect.value}]"
        lines.append(f"  {spec.name}{arg}: {spec.why}{effect}")
    return [*lines, ""]


def main(argv: list[str]) -> int:
    """Run makedumpfile's command line ``argv`` (without the program name); the exit code."""
    try:
        inv = parse(argv)
    except ParamError as exc:
        # makedumpfile prints with the message level and -F parsed so far, and ends at
        # main()'s label out, which says "Failed." unless --check-params was given
        parsed = exc.invocation or Invocation(argv=argv)
        messages = Messages(level=parsed.message_level,
                            to_stderr=parsed.to_stderr or "-F" in argv)
        for line in exc.lines:
            messages.msg(line)
        if not parsed.check_params:
            messages.msg("")
            messages.msg("makedumpfile Failed.")
        return EXIT_FAILED
    messages = Messages(level=inv.message_level, to_stderr=inv.to_stderr)
    if inv.mode is Mode.HELP:
        for line in usage_lines():
            messages.msg(line)
        return EXIT_COMPLETED
    if inv.mode is Mode.VERSION:
        for line in version_lines():
            messages.msg(line)
        return EXIT_COMPLETED
    for notice in inv.notices:
        messages.error(notice)
    if inv.check_params:
        return EXIT_COMPLETED
    messages.debug(f"makedumpfile: version {MAKEDUMPFILE_VERSION} (cdbdump {__version__})")
    messages.debug("command line: makedumpfile " + " ".join(inv.argv) + " \n")
    from cdbdump.mdrun import run  # the library is imported only when there is work

    return run(inv, messages, Progress(messages))

