"""x86_64 kernel page-table walks: one translation, or coalesced runs over a range.

reference: makedumpfile __vtop4_x86_64 (arch/x86_64.c): entries are masked with
bits 12..51 minus NUMBER(sme_mask); the present bit is tested at every level;
PSE makes a PUD entry a 1 GiB page and a PMD entry a 2 MiB page. The run
walk, which every range read uses, follows drgn's
linux_kernel_pgtable_iterator_next_x86_64: whole 4 KiB tables are read once
and kept per walker, non-present subtrees and the non-canonical hole are
skipped in one step, contiguous mappings coalesce; each table is one numpy pass.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

from cdbdump.errors import NotInDumpError, NotMappedError
from cdbdump.formats.x86_64 import (
    _PAGE_PRESENT,
    _PAGE_PSE,
    P4D_SHIFT,
    PGDIR_SHIFT_L4,
    PGDIR_SHIFT_L5,
    PMD_SHIFT,
    PTE_PFN_MASK,
    PTRS_PER_TABLE,
    PUD_SHIFT,
)
from cdbdump.memory.physical import PhysicalMemory

__all__ = ("PageTableWalker", "Run")

Run = tuple[int, int, int]  # (vaddr, paddr, size)

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]

_TABLE_SIZE = PTRS_PER_TABLE * 8
_PTE_SHIFT = 12
_U64_MASK = (1 << 64) - 1
# 4 096 tables = 16 MiB at most; the direct map and vmemmap of even a large
# machine need far fewer because they are mapped with 2 MiB / 1 GiB pages.
_DEFAULT_MAX_TABLES = 4096


class PageTableWalker:
    """Translates kernel virtual addresses through the page tables in a dump."""

    def __init__(
        self,
        phys: PhysicalMemory,
        root_paddr: int,
        levels: int = 4,
        sme_mask: int = 0,
        *,
        max_cached_tables: int = _DEFAULT_MAX_TABLES,
    ) -> None:
        if levels not in (4, 5):
            raise ValueError(f"x86_64 paging has 4 or 5 levels, not {levels}")
        self.phys = phys
        self.root_paddr = root_paddr
        self.levels = levels
        self.sme_mask = sme_mask
        self.entry_mask = PTE_PFN_MASK & ~sme_mask
        if levels == 5:
            self._shifts: tuple[int, ...] = (PGDIR_SHIFT_L5, P4D_SHIFT, PUD_SHIFT, PMD_SHIFT,
                                             _PTE_SHIFT)
            self._names: tuple[str, ...] = ("PGD", "P4D", "PUD", "PMD", "PTE")
        else:
            self._shifts = (PGDIR_SHIFT_L4, PUD_SHIFT, PMD_SHIFT, _PTE_SHIFT)
            self._names = ("PGD", "PUD", "PMD", "PTE")
        self.va_bits = self._shifts[0] + 9  # 48 or 57
        self._half = 1 << (self.va_bits - 1)
        self._max_tables = max_cached_tables
        self._tables: dict[int, U64] = {}

    # -- tables ------------------------------------------------------------------

    def _table(self, table_paddr: int, depth: int, vaddr: int) -> U64:
        table = self._tables.get(table_paddr)
        if table is not None:
            return table
        try:
            raw = self.phys.read(table_paddr, _TABLE_SIZE)
        except NotInDumpError as exc:
            raise NotInDumpError(
                table_paddr,
                _TABLE_SIZE,
                f"not in the dump ({self._names[depth]} table for kernel address {vaddr:#x})",
            ) from exc
        table = np.frombuffer(raw, dtype="<u8")
        if len(self._tables) >= self._max_tables:
            del self._tables[next(iter(self._tables))]  # oldest first
        self._tables[table_paddr] = table
        return table

    def is_canonical(self, vaddr: int) -> bool:
        return vaddr < self._half or vaddr >= (1 << 64) - self._half

    # -- one address ---------------------------------------------------------------

    def translate(self, vaddr: int) -> int:
        """Physical address of ``vaddr``.

        Raises:
            NotMappedError: an entry on the way is not present (or the address
                is not canonical).
            NotInDumpError: a page table the walk needs is not in the dump.
        """
        vaddr &= _U64_MASK
        if not self.is_canonical(vaddr):
            raise NotMappedError(vaddr, level="non-canonical address", entry=0)
        table_paddr = self.root_paddr
        last = len(self._shifts) - 1
        for depth, shift in enumerate(self._shifts):
            index = (vaddr >> shift) & (PTRS_PER_TABLE - 1)
            entry = int(self._table(table_paddr, depth, vaddr)[index])
            if not entry & _PAGE_PRESENT:
                raise NotMappedError(
                    vaddr, level=self._names[depth], entry=entry,
                    entry_paddr=table_paddr + index * 8,
                )
            base = entry & self.entry_mask
            if depth == last:
                return base | (vaddr & ((1 << shift) - 1))
            if shift in (PUD_SHIFT, PMD_SHIFT) and entry & _PAGE_PSE:
                size_mask = (1 << shift) - 1
                return (base & ~size_mask) | (vaddr & size_mask)
            table_paddr = base
        raise AssertionError("unreachable")  # pragma: no cover

    # -- runs ------------------------------------------------------------------------

    def _canonical(self, lin: int) -> int:
        return lin if lin < self._half else (lin - (1 << self.va_bits)) & _U64_MASK

    def _linear_ranges(self, vstart: int, vend: int) -> list[tuple[int, int]]:
        """[vstart, vend) as ranges of the va_bits-wide linear space, hole removed."""
        span = 1 << self.va_bits
        top = 1 << 64
        out = []
        lo, hi = max(vstart, 0), min(vend, self._half)
        if lo < hi:
            out.append((lo, hi))
        lo, hi = max(vstart, top - self._half), min(vend, top)
        if lo < hi:
            out.append((lo - top + span, hi - top + span))
        return out

    def iter_runs(self, vstart: int, vend: int, *, strict: bool = True) -> Iterator[Run]:
        """The runs of run_arrays as (vaddr, paddr, size) tuples."""
        vaddr, paddr, size = self.run_arrays(vstart, vend, strict=strict)
        return zip(vaddr.tolist(), paddr.tolist(), size.tolist(), strict=True)

    def run_arrays(
        self, vstart: int, vend: int, *, strict: bool = True
    ) -> tuple[U64, I64, I64]:
        """(vaddr, paddr, size) arrays of the coalesced runs of the mapped part of [vstart, vend).

        Runs are in ascending vaddr order; adjacent runs are merged when both
        their virtual and physical addresses continue. With ``strict=False`` a
        page table that is not in the dump makes its subtree count as unmapped
        instead of raising NotInDumpError.

        One numpy pass per page table: the leaf entries (PTEs and PSE pages) of
        every table the range reaches are gathered as arrays; Python recurses
        only into present non-leaf entries.
        """
        lins: list[I64] = []
        paddrs: list[I64] = []
        sizes: list[I64] = []
        for lo, hi in self._linear_ranges(vstart, vend):
            self._gather(self.root_paddr, 0, 0, lo, hi, strict, lins, paddrs, sizes)
        if not lins:
            empty = np.zeros(0, dtype=np.int64)
            return np.zeros(0, dtype=np.uint64), empty, empty.copy()
        if len(lins) == 1:
            lin, paddr, size = lins[0], paddrs[0], sizes[0]
        else:
            lin, paddr, size = np.concatenate(lins), np.concatenate(paddrs), np.concatenate(sizes)
        if lin.size > 1:
            # tables are visited depth first in address order, so ``lin`` ascends
            end = lin + size
            joins = (end[:-1] == lin[1:]) & (paddr[:-1] + size[:-1] == paddr[1:])
            # the two halves never join: their canonical addresses are not adjacent
            joins &= (lin[1:] < self._half) == (lin[:-1] < self._half)
            starts = np.concatenate(([0], (~joins).nonzero()[0] + 1))
            stops = np.append(starts[1:], lin.size) - 1
            lin, paddr, size = lin[starts], paddr[starts], end[stops] - lin[starts]
        vaddr = lin.astype(np.uint64)
        if lin[-1] >= self._half:
            # canonical form: the upper half moves to the top of the 64-bit space
            vaddr[lin >= self._half] += np.uint64((1 << 64) - (1 << self.va_bits))
        return vaddr, paddr, size

    def _gather(
        self, table_paddr: int, depth: int, base: int, lo: int, hi: int, strict: bool,
        lins: list[I64], paddrs: list[I64], sizes: list[I64],
    ) -> None:
        """Append the leaf mappings of [lo, hi) under one table, clipped, in order."""
        shift = self._shifts[depth]
        try:
            table = self._table(table_paddr, depth, self._canonical(lo))
        except NotInDumpError:
            if strict:
                raise
            return
        i0 = (lo - base) >> shift
        i1 = ((hi - 1 - base) >> shift) + 1
        entries = table[i0:i1]
        idx = (entries & np.uint64(_PAGE_PRESENT)).nonzero()[0]
        if idx.size == 0:
            return
        ents = entries[idx]
        children: list[int]  # positions in ``idx`` of entries that point to a table
        if depth == len(self._shifts) - 1:
            children = []
        elif shift in (PUD_SHIFT, PMD_SHIFT):
            children = ((ents & np.uint64(_PAGE_PSE)) == 0).nonzero()[0].tolist()
        else:
            children = list(range(idx.size))
        entry_size = 1 << shift
        # split the present entries into stretches of leaves between child tables,
        # so that everything is appended in ascending address order
        edges = [-1, *children, idx.size]
        for k in range(len(edges) - 1):
            a, b = edges[k] + 1, edges[k + 1]
            if a < b:
                block_lo = base + (idx[a:b] + i0) * entry_size
                frame = ents[a:b] & np.uint64(self.entry_mask & ~(entry_size - 1))
                clip_lo = np.maximum(block_lo, lo)
                clip_hi = np.minimum(block_lo + entry_size, hi)
                lins.append(clip_lo)
                offset: I64 = clip_lo - block_lo
                paddrs.append(frame.astype(np.int64) + offset)
                sizes.append(clip_hi - clip_lo)
            if b < idx.size:
                child_lo = base + ((i0 + int(idx[b])) << shift)
                child = int(ents[b]) & self.entry_mask
                self._gather(child, depth + 1, child_lo, max(child_lo, lo),
                             min(child_lo + entry_size, hi), strict, lins, paddrs, sizes)
