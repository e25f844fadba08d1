"""cdbdump: filter and compress Linux kernel crash dumps into makedumpfile's formats."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cdbdump.dumpfile import open_dump

__version__ = "0.1.0"

__all__ = ("__version__", "open_dump")


def __getattr__(name: str) -> Any:
    # open_dump pulls in numpy and every reader: only on first use
    if name == "open_dump":
        from cdbdump.dumpfile import open_dump

        return open_dump
    raise AttributeError(name)
