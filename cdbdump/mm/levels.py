"""makedumpfile's dump levels (-d), from makedumpfile.h DL_EXCLUDE_*."""

from __future__ import annotations

import enum

__all__ = ("MAX_DUMP_LEVEL", "DumpLevel")

MAX_DUMP_LEVEL = 31


class DumpLevel(enum.IntFlag):
    """Bits of -d: each one excludes a class of pages."""

    ZERO = 1  # DL_EXCLUDE_ZERO: pages whose content is all zero
    CACHE = 2  # DL_EXCLUDE_CACHE: cache pages without PG_private, not anonymous
    CACHE_PRI = 4  # DL_EXCLUDE_CACHE_PRI: all cache pages that are not anonymous
    USER = 8  # DL_EXCLUDE_USER_DATA: anonymous pages and hugetlbfs folios
    FREE = 16  # DL_EXCLUDE_FREE: buddy-free pages, unaccepted memory
