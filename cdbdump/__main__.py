"""python -m cdbdump"""

from __future__ import annotations

from cdbdump.cli import main

main()
