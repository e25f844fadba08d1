"""Random page-table mappings: the walker agrees with the builder's intent.

The builder (tests/builders/pagetables.py) records every mapping it makes; the
walker must translate exactly those addresses, and iter_runs must cover exactly
the mapped set, maximally coalesced.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdbdump.errors import NotMappedError
from cdbdump.fileio import MappedFile
from cdbdump.memory.physical import ElfMemory
from cdbdump.memory.x86_64 import PageTableWalker
from cdbdump.vmcore.elfcore import LoadSegment
from tests.builders.pagetables import PAGE_1G, PAGE_2M, PAGE_4K, PageTableBuilder

U64 = (1 << 64) - 1


def _slot_vaddr(slot: int, levels: int) -> int:
    """1 GiB slot number → canonical vaddr; the upper half of the slots is the kernel half."""
    bits = 57 if levels == 5 else 48
    half_slots = 1 << (bits - 1 - 30)
    if slot < half_slots:
        return slot << 30
    return ((1 << 64) - (1 << (bits - 1)) + ((slot - half_slots) << 30)) & U64


@st.composite
def machines(draw: st.DrawFn) -> tuple[int, int, list[tuple[int, int, int]]]:
    """(levels, sme_mask, [(vaddr, paddr, page_size) single pages]) with no overlaps."""
    levels = draw(st.sampled_from([4, 5]))
    sme_mask = draw(st.sampled_from([0, 0, 1 << 47]))
    bits = 57 if levels == 5 else 48
    nr_slots = 1 << (bits - 30)
    slots = draw(st.lists(st.integers(0, nr_slots - 1), min_size=1, max_size=5, unique=True))
    pages: list[tuple[int, int, int]] = []
    for slot in slots:
        page_size = draw(st.sampled_from([PAGE_4K, PAGE_2M, PAGE_1G]))
        per_slot = PAGE_1G // page_size
        count = 1 if page_size == PAGE_1G else draw(st.integers(1, 6))
        indexes = draw(st.lists(st.integers(0, per_slot - 1), min_size=count, max_size=count,
                                unique=True))
        base = _slot_vaddr(slot, levels)
        paddr = draw(st.integers(0, (1 << 40) // page_size)) * page_size
        for index in sorted(indexes):
            if not draw(st.booleans()):  # else physically contiguous with the previous
                paddr = draw(st.integers(0, (1 << 40) // page_size)) * page_size
            pages.append((base + index * page_size, paddr, page_size))
            paddr += page_size
    return levels, sme_mask, pages


def _build(levels: int, sme_mask: int, pages: list[tuple[int, int, int]],
           directory: Path) -> tuple[PageTableBuilder, PageTableWalker]:
    next_table = [0x2000]

    def alloc() -> int:
        next_table[0] += PAGE_4K
        return next_table[0]

    builder = PageTableBuilder(levels, 0x1000, alloc, sme_mask=sme_mask)
    for vaddr, paddr, size in pages:
        builder.map(vaddr, paddr, size, size)
    end = next_table[0] + PAGE_4K
    path = directory / "tables"
    with path.open("wb") as f:
        f.truncate(end)
        for table_paddr in builder.tables:
            f.seek(table_paddr)
            f.write(builder.table_page(table_paddr))
    phys = ElfMemory(MappedFile(path), [LoadSegment(0, 0, 0, 0, end, end, 7, 0)], PAGE_4K)
    return builder, PageTableWalker(phys, 0x1000, levels, sme_mask)


def _coalesce(runs: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    out: list[list[int]] = []
    for vaddr, paddr, size in sorted(runs):
        if out and out[-1][0] + out[-1][2] == vaddr and out[-1][1] + out[-1][2] == paddr:
            out[-1][2] += size
        else:
            out.append([vaddr, paddr, size])
    return [(v, p, s) for v, p, s in out]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(machine=machines(), data=st.data())
def test_walker_matches_builder(machine: tuple[int, int, list[tuple[int, int, int]]],
                                data: st.DataObject) -> None:
    levels, sme_mask, pages = machine
    with tempfile.TemporaryDirectory() as tmp:
        builder, walker = _build(levels, sme_mask, pages, Path(tmp))

        # every mapped page translates as the builder intended, at any offset
        for vaddr, _, size in pages:
            offset = data.draw(st.integers(0, size - 1))
            assert walker.translate(vaddr + offset) == builder.vtop(vaddr + offset)

        # iter_runs over everything == the builder's mappings, coalesced
        expected = _coalesce(pages)
        assert list(walker.iter_runs(0, 1 << 64)) == expected

        # a random window is the clipped intersection
        lo = data.draw(st.integers(0, U64))
        hi = data.draw(st.integers(lo, 1 << 64))
        clipped = []
        for vaddr, paddr, size in expected:
            a, b = max(vaddr, lo), min(vaddr + size, hi)
            if a < b:
                clipped.append((a, paddr + (a - vaddr), b - a))
        assert list(walker.iter_runs(lo, hi)) == clipped

        # unmapped addresses raise NotMappedError (the builder mapped nothing there)
        probe = data.draw(st.integers(0, U64))
        if builder.vtop(probe) is None:
            with pytest.raises(NotMappedError):
                walker.translate(probe)
