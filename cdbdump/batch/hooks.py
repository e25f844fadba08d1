"""Where features built by other issues plug into the batch, found at run time.

Each hook is one (module, function) pair and a small adapter below; when the
module is not part of this build the option that needs it is refused up front
with one line (``missing(...)``), never half run. At a merge, only the names
here and the adapters change; the batch machinery does not.

  verify  issue 7, `cdbdump verify DUMPFILE --source VMCORE`: every dumpable page
          decompresses to one page and equals the source's.
          Contract: verify(dumpfile, source=source) returns a VerifyResult (never
          raises for a bad dump); run_verify turns a failed one into CorruptDumpError.
  dmesg   `--dump-dmesg VMCORE LOGFILE` (makedumpfile's): the kernel log of the crash.
          cdbdump.pipeline.dump_dmesg(DmesgOptions(vmcore, logfile)) writes LOGFILE
          (0600, never over a file) and raises CdbdumpError when no log can be read.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from cdbdump.errors import CorruptDumpError, UnsupportedError

__all__ = (
    "DMESG",
    "VERIFY",
    "Hook",
    "find",
    "missing",
    "run_dmesg",
    "run_verify",
)


class Hook(NamedTuple):
    option: str  # the batch option that needs it
    module: str
    functions: tuple[str, ...]
    what: str  # for the refusal line


VERIFY = Hook("--verify", "cdbdump.verify", ("verify",), "`cdbdump verify` (issue 7)")
DMESG = Hook("--dmesg", "cdbdump.pipeline", ("dump_dmesg", "DmesgOptions"), "`--dump-dmesg`")


def find(hook: Hook) -> tuple[Callable[..., Any], ...] | None:
    """The hook's functions, or None when this build does not have them."""
    try:
        module = importlib.import_module(hook.module)
    except ModuleNotFoundError as exc:
        if exc.name != hook.module:
            raise  # the module exists but something it imports does not: a real error
        return None
    functions = tuple(getattr(module, name, None) for name in hook.functions)
    if any(f is None or not callable(f) for f in functions):
        return None
    return functions  # type: ignore[return-value]


def missing(hook: Hook) -> str | None:
    """None when the hook is available, else the line that refuses its option."""
    if find(hook) is not None:
        return None
    return (f"{hook.option} needs {hook.what}, which this build of cdbdump does not have "
            f"({hook.module}.{'/'.join(hook.functions)})")


def _require(hook: Hook) -> tuple[Callable[..., Any], ...]:
    functions = find(hook)
    if functions is None:
        raise UnsupportedError(missing(hook) or hook.option)
    return functions


def run_verify(dumpfile: Path, source: Path | None,
               source_parts: tuple[Path, ...] = ()) -> None:
    """Raise CdbdumpError unless ``dumpfile`` verifies (against ``source`` and the
    rest of its split set, if given)."""
    (verify,) = _require(VERIFY)
    result = verify(dumpfile, source=source, source_parts=source_parts)
    if not result.ok:
        raise CorruptDumpError(f"cdbdump verify: {result.verdict()}")


def run_dmesg(vmcore: Path, logfile: Path) -> list[str]:
    """Write the kernel log of ``vmcore`` to ``logfile``; return its warnings."""
    dump_dmesg, dmesg_options = _require(DMESG)
    result = dump_dmesg(dmesg_options(vmcore=vmcore, logfile=logfile))
    return [str(w) for w in result.log.warnings]

