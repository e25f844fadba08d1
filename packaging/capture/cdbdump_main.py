"""Entry point of the self-contained cdbdump executable (packaging/capture/build.sh)."""

from __future__ import annotations

from cdbdump.cli import main

if __name__ == "__main__":
    main()
