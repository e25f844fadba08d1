"""PageTableBuilder: x86_64 4- and 5-level page tables living in a PhysImage.

Tables are 512 u64 entries kept as numpy arrays keyed by their physical address; the
PhysImage reads them through a provider, so entries planted after the machine was built
(``plant``) still end up in the written vmcore. ``mappings`` records every leaf mapping
(the builder's intent) for the oracle's ``vtop``.

Entry format (arch/x86/include/asm/pgtable_types.h): table entries = paddr | _KERNPG_TABLE
(0x63), 4 KiB leaves = paddr | __PAGE_KERNEL (0x163) | NX, huge leaves additionally _PAGE_PSE
(0x80). sme_mask (AMD SME C-bit) is OR-ed into every entry.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cdbdump.formats.x86_64 import PTE_PFN_MASK

__all__ = ("Mapping", "PageTableBuilder")

_KERNPG_TABLE = 0x63  # present | rw | accessed | dirty
_PAGE_KERNEL = 0x163  # + global
_PAGE_PSE = 0x80
_PAGE_NX = 1 << 63
PAGE_4K, PAGE_2M, PAGE_1G = 1 << 12, 1 << 21, 1 << 30
_SHIFTS_4 = (39, 30, 21, 12)
_SHIFTS_5 = (48, 39, 30, 21, 12)


@dataclass(frozen=True)
class Mapping:
    vaddr: int
    paddr: int
    size: int
    page_size: int


def _canonical(vaddr: int) -> int:
    return vaddr & 0xFFFFFFFFFFFFFFFF


class PageTableBuilder:
    """Build page tables whose pages come from ``alloc_table`` (returns a page-aligned paddr)."""

    def __init__(
        self,
        levels: int,
        top_paddr: int,
        alloc_table: Callable[[], int],
        *,
        sme_mask: int = 0,
    ) -> None:
        if levels not in (4, 5):
            raise ValueError("levels must be 4 or 5")
        self.levels = levels
        self.shifts = _SHIFTS_5 if levels == 5 else _SHIFTS_4
        self.top_paddr = top_paddr
        self.alloc_table = alloc_table
        self.sme_mask = sme_mask
        self.tables: dict[int, np.ndarray] = {top_paddr: np.zeros(512, dtype=np.uint64)}
        self.mappings: list[Mapping] = []
        self._sorted: list[Mapping] | None = None

    def add_table(self, paddr: int) -> None:
        """Register a table page at a fixed paddr (e.g. level3_kernel_pgt in the image)."""
        self.tables.setdefault(paddr, np.zeros(512, dtype=np.uint64))

    def _entry_paddr(self, entry: int) -> int:
        return entry & PTE_PFN_MASK & ~self.sme_mask

    def _child(self, table: int, index: int, fixed: int | None = None) -> int:
        entry = int(self.tables[table][index])
        if entry & 1:
            child = self._entry_paddr(entry)
            if child not in self.tables:
                raise ValueError(f"entry {index} of table {table:#x} is a leaf or foreign")
            return child
        child = fixed if fixed is not None else self.alloc_table()
        self.add_table(child)
        self.tables[table][index] = np.uint64(child | _KERNPG_TABLE | self.sme_mask)
        return child

    def map(
        self,
        vaddr: int,
        paddr: int,
        size: int,
        page_size: int = PAGE_4K,
        *,
        fixed_tables: dict[int, int] | None = None,
    ) -> None:
        """Map [vaddr, vaddr+size) to paddr with pages of page_size (4K, 2M or 1G).

        fixed_tables: level depth -> paddr of the table to use at that depth (only when the
        entry is still empty), to put kernel tables inside the kernel image.
        """
        if page_size not in (PAGE_4K, PAGE_2M, PAGE_1G):
            raise ValueError("page_size must be 4K, 2M or 1G")
        if vaddr % page_size or paddr % page_size or size % page_size:
            raise ValueError(f"unaligned mapping {vaddr:#x} -> {paddr:#x} size {size:#x}")
        leaf_depth = self.levels - 1 - {PAGE_4K: 0, PAGE_2M: 1, PAGE_1G: 2}[page_size]
        leaf_bits = _PAGE_KERNEL | _PAGE_NX | (0 if page_size == PAGE_4K else _PAGE_PSE)
        fixed_tables = fixed_tables or {}
        for off in range(0, size, page_size):
            va = _canonical(vaddr + off)
            table = self.top_paddr
            for depth in range(leaf_depth):
                index = (va >> self.shifts[depth]) & 511
                table = self._child(table, index, fixed_tables.get(depth + 1))
            index = (va >> self.shifts[leaf_depth]) & 511
            self.tables[table][index] = np.uint64(paddr + off | leaf_bits | self.sme_mask)
        self.mappings.append(Mapping(_canonical(vaddr), paddr, size, page_size))
        self._sorted = None

    def map_pages(self, vaddrs: list[int], paddrs: list[int]) -> None:
        """Map single 4 KiB pages (for scattered backing)."""
        for va, pa in zip(vaddrs, paddrs, strict=True):
            self.map(va, pa, PAGE_4K)

    # -- corruption --------------------------------------------------------------------
    def entry_location(self, vaddr: int, depth: int) -> tuple[int, int]:
        """(table paddr, index) of the entry at depth (0 = top) on vaddr's walk."""
        table = self.top_paddr
        va = _canonical(vaddr)
        for d in range(depth):
            entry = int(self.tables[table][(va >> self.shifts[d]) & 511])
            if not entry & 1 or entry & _PAGE_PSE:
                raise ValueError(f"walk of {vaddr:#x} ends before depth {depth}")
            table = self._entry_paddr(entry)
        return table, (va >> self.shifts[depth]) & 511

    def plant(self, vaddr: int, depth: int, value: int) -> int:
        """Overwrite the raw entry at depth on vaddr's walk; returns the old value."""
        table, index = self.entry_location(vaddr, depth)
        old = int(self.tables[table][index])
        self.tables[table][index] = np.uint64(value & 0xFFFFFFFFFFFFFFFF)
        self._sorted = None
        return old

    def plant_outside(self, vaddr: int, depth: int, paddr: int = 1 << 45) -> int:
        """Make the entry point to a table far outside memory."""
        return self.plant(vaddr, depth, paddr | _KERNPG_TABLE | self.sme_mask)

    def plant_self_loop(self, vaddr: int, depth: int) -> int:
        """Make the entry point back to the table that holds it."""
        table, _ = self.entry_location(vaddr, depth)
        return self.plant(vaddr, depth, table | _KERNPG_TABLE | self.sme_mask)

    # -- oracle ------------------------------------------------------------------------
    def vtop(self, vaddr: int) -> int | None:
        """paddr that the builder *intended* for vaddr (None if it mapped nothing there)."""
        if self._sorted is None:
            self._sorted = sorted(self.mappings, key=lambda m: m.vaddr)
            self._starts = [m.vaddr for m in self._sorted]
        va = _canonical(vaddr)
        i = bisect.bisect_right(self._starts, va) - 1
        if i >= 0:
            m = self._sorted[i]
            if va < m.vaddr + m.size:
                return m.paddr + (va - m.vaddr)
        return None

    def table_page(self, paddr: int) -> bytes:
        return self.tables[paddr].astype("<u8").tobytes()
