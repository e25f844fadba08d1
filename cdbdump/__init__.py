"""cdbdump: filter and compress Linux kernel crash dumps into makedumpfile's formats."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ("__version__",)
