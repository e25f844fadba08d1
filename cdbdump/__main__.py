"""The cdbdump command: ``python -m cdbdump`` and the console script (pyproject.toml)."""

from __future__ import annotations

import gc


def run() -> None:
    """Import the command line with the cyclic GC off, then run it.

    The imports (numpy, click, cdbdump) create some 45k objects that live as long as
    the process: collections during the imports only walk them (~5 ms), and gc.freeze()
    keeps the collections of the run from walking them again. The GC itself is on
    during the run, as the library expects.
    """
    gc.disable()
    try:
        from cdbdump.cli import main
    finally:
        gc.freeze()
        gc.enable()
    main()


if __name__ == "__main__":
    run()
