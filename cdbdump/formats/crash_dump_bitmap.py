"""The RFC kernel's crash dump bitmap descriptor (x86_64).

Transcribed from the 2013 RFC "crash dump bitmap: scan memory pages in kernel
to speedup kernel dump process" (Jingbai Ma), makedumpfile.h hunk:

    struct crash_dump_bitmap_info {
        unsigned int version;
        unsigned long long bitmap;        /* physical address of the bitmap */
        unsigned long long bitmap_size;   /* in bytes */
        unsigned long cache_pages;
        unsigned long cache_private_pages;
        unsigned long user_pages;
        unsigned long free_pages;
        unsigned long hwpoison_pages;
    };

One bit per page frame, LSB first (an unsigned long bitmap); a set bit means
the page is kept, the panicking kernel clears the bits of excluded pages.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

CURRENT_BITMAP_INFO_VERSION = 1


class CrashDumpBitmapInfo(NamedTuple):
    version: int  # unsigned int at 0
    bitmap: int  # unsigned long long at 8: physical address of the bitmap
    bitmap_size: int  # unsigned long long at 16: bytes
    cache_pages: int  # unsigned long at 24
    cache_private_pages: int  # unsigned long at 32
    user_pages: int  # unsigned long at 40
    free_pages: int  # unsigned long at 48
    hwpoison_pages: int  # unsigned long at 56


# 4 bytes of padding after version align the u64 bitmap to 8
CRASH_DUMP_BITMAP_INFO = struct.Struct("<I4xQQQQQQQ")
