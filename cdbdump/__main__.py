"""The cdbdump command: ``python -m cdbdump`` and the console script (pyproject.toml)."""

from __future__ import annotations

import gc
import sys
from pathlib import Path


def run() -> None:
    """Import the command line with the cyclic GC off, then run it.

    The imports (numpy, click, cdbdump) create some 45k objects that live as long as
    the process: collections during the imports only walk them (~5 ms), and gc.freeze()
    keeps the collections of the run from walking them again. The GC itself is on
    during the run, as the library expects.

    Under the name ``makedumpfile`` (or with ``--as-makedumpfile`` first) the command
    line is makedumpfile's (cdbdump.mdcli, as cdbdump.cli.main dispatches it), which
    needs no click: kdump's scripts call it so, and click is ~10 ms of start-up.
    """
    args = sys.argv[1:]
    as_makedumpfile = (Path(sys.argv[0]).name == "makedumpfile"
                       or args[:1] == ["--as-makedumpfile"])
    gc.disable()
    try:
        import cdbdump.blas  # noqa: F401  (before numpy: one OpenBLAS thread)

        if as_makedumpfile:
            from cdbdump.mdcli import main as makedumpfile_main
        else:
            from cdbdump.cli import main
    finally:
        gc.freeze()
        gc.enable()
    if as_makedumpfile:
        sys.exit(makedumpfile_main(args[1:] if args[:1] == ["--as-makedumpfile"] else args))
    main()


if __name__ == "__main__":
    run()
