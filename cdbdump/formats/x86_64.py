"""x86_64 paging constants (linux: arch/x86/include/asm/pgtable_types.h, page_64_types.h)."""

from __future__ import annotations

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT

START_KERNEL_MAP = 0xFFFFFFFF80000000  # __START_KERNEL_map (page_64_types.h)

_PAGE_PRESENT = 0x001
_PAGE_PSE = 0x080  # huge page at PUD (1 GiB) or PMD (2 MiB)
PTE_PFN_MASK = 0x000FFFFFFFFFF000  # bits 12..51
PTRS_PER_TABLE = 512

PGDIR_SHIFT_L4 = 39
PGDIR_SHIFT_L5 = 48
P4D_SHIFT = 39
PUD_SHIFT = 30
PMD_SHIFT = 21

# fallbacks when no PT_LOAD reveals the direct map (makedumpfile get_page_offset_x86_64)
PAGE_OFFSET_L4_DEFAULT = 0xFFFF880000000000
PAGE_OFFSET_L5_DEFAULT = 0xFF10000000000000
