"""SyntheticKernel: a small but consistent crashed x86_64 machine, and its expected answers.

The machine: e820-like RAM ranges, a KASLR-relocated kernel image, 4/5-level page tables
(kernel text with 2 MiB pages, the direct map at a random page_offset_base with 1 GiB /
2 MiB / 4 KiB pages, the vmemmap at a random vmemmap_base with 2 MiB and 4 KiB pages),
SPARSEMEM_EXTREME mem_section, a struct page for every pfn of a present section (every page
class, encoded per dialect), VMCOREINFO, per-CPU NT_PRSTATUS notes and optionally the RFC's
crash_dump_bitmap_info + bitmap. Layout decisions are made per 2 MiB "chunk" with numpy, so
a 64 GiB machine builds in seconds; ``write(path)`` writes the vmcore sparse.

The oracle methods (first_bitmap, max_mapnr, expected_dumpable, expected_counts,
expected_zero_pages, page_bytes, expected_kernel_bitmap) answer from the builder's intent;
see tests/builders/oracle.py for the exact makedumpfile semantics reproduced.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from cdbdump.formats.x86_64 import START_KERNEL_MAP
from cdbdump.mm.counts import PageCounts
from cdbdump.mm.levels import DumpLevel
from tests.builders.dialects import Dialect, get_dialect
from tests.builders.elfcore import ElfCoreBuilder
from tests.builders.oracle import Classifier
from tests.builders.pagetables import PAGE_1G, PAGE_2M, PAGE_4K, PageTableBuilder
from tests.builders.physmem import (
    CONTENT_PATTERN,
    CONTENT_PROVIDER,
    CONTENT_ZERO,
    PAGE_SIZE,
    PhysImage,
    Provider,
)
from tests.builders.structpage import KIND_PROPS, PageKind, Role, StructPageEncoder, kind_table
from tests.builders.vmcoreinfo import make_vmcoreinfo

__all__ = (
    "CRASH_DUMP_BITMAP_INFO",
    "CRASH_DUMP_BITMAP_INFO_VERSION",
    "SyntheticKernel",
    "default_ram",
    "pack_bitmap",
)

MiB = 1 << 20
GiB = 1 << 30
CHUNK_PFNS = 512  # 2 MiB
SECTION_SHIFT = 27
SECTION_PFNS = 1 << (SECTION_SHIFT - 12)
LOAD_PHYSICAL_ADDR = 0x1000000  # CONFIG_PHYSICAL_START: _stext at __START_KERNEL_map + 16 MiB
SECTION_MARKED_PRESENT = 1 << 0
SECTION_HAS_MEM_MAP = 1 << 1
SECTION_IS_ONLINE = 1 << 2
SECTION_IS_EARLY = 1 << 3
SECTION_IS_VMEMMAP_PREINIT = 1 << 5

# struct crash_dump_bitmap_info (RFC "crash dump bitmap", x86_64):
# u32 version; u64 bitmap (paddr); u64 bitmap_size (bytes); unsigned long cache_pages,
# cache_private_pages, user_pages, free_pages, hwpoison_pages  -> 64 bytes
CRASH_DUMP_BITMAP_INFO = struct.Struct("<I4xQQQQQQQ")
CRASH_DUMP_BITMAP_INFO_VERSION = 1

Layout = Literal["proc_vmcore", "qemu"]

_SINGLE_WEIGHTS: dict[PageKind, float] = {
    PageKind.CACHE: 0.30,
    PageKind.CACHE_PRIVATE: 0.05,
    PageKind.SHMEM: 0.05,
    PageKind.SWAPCACHE: 0.01,
    PageKind.OWNER_PRIV1: 0.01,
    PageKind.ANON: 0.18,
    PageKind.ANON_SWAPCACHE: 0.01,
    PageKind.ANON_KSM: 0.01,
    PageKind.ANON_NOLRU: 0.01,
    PageKind.MOVABLE: 0.01,
    PageKind.KERNEL_ALLOC: 0.10,
    PageKind.PGTABLE: 0.03,
    PageKind.SLAB: 0.08,
    PageKind.FREE: 0.15,
}
# (position in the chunk, kind, order, probability) compound objects placed in mixed chunks
_OVERLAYS = (
    (0, PageKind.FILE_FOLIO, 2, 0.3),
    (8, PageKind.ANON_THP, 3, 0.2),
    (16, PageKind.KERNEL_COMPOUND, 2, 0.2),
    (32, PageKind.SLAB_COMPOUND, 3, 0.2),
    (64, PageKind.FREE, 5, 0.3),
    (128, PageKind.PRIVATE_FOLIO, 2, 0.1),
    (256, PageKind.FREE, 8, 0.2),
)
_ORACLE_WINDOW_PFNS = 1 << 18  # 1 GiB of frames: the unit of windowed generation

DEFAULT_MIX: dict[str, float] = {
    "free": 0.22,
    "free_split": 0.05,
    "anon_thp": 0.08,
    "file_thp": 0.04,
    "hugetlb": 0.04,
    "hugetlb_free": 0.02,
    "mixed": 0.45,
    "slab": 0.05,
    "kernel": 0.05,
    "unaccepted": 0.04,  # only used by dialects with unaccepted memory
}


def default_ram(ram_size: int | None = None) -> list[tuple[int, int]]:
    """e820-like usable RAM ranges [start, end) in bytes.

    None: a tiny machine (64 MiB: low memory ending mid-page at 0x9fc00, 0x100000-32 MiB,
    and 32 MiB above 4 GiB). Otherwise ram_size bytes: below 2 GiB, the rest above 4 GiB,
    the top 0x28000 bytes left to firmware (max_mapnr not section aligned, but a multiple
    of 4, so that makedumpfile keeps the 0x9fc00 partial page up to 64 GiB: see
    SyntheticKernel.keeps_partial_last_pages).
    """
    if ram_size is None:
        return [(0x1000, 0x9FC00), (0x100000, 32 * MiB), (4 * GiB, 4 * GiB + 32 * MiB)]
    if ram_size <= 3 * GiB:
        return [(0x1000, 0x9FC00), (0x100000, ram_size - 0x28000)]
    return [(0x1000, 0x9FC00), (0x100000, 2 * GiB), (4 * GiB, 2 * GiB + ram_size - 0x28000)]


def pack_bitmap(bools: np.ndarray, nbytes: int | None = None) -> bytes:
    """bool per pfn -> makedumpfile bitmap bytes (bit pfn%8 of byte pfn//8, LSB first)."""
    packed = np.packbits(np.asarray(bools, dtype=bool), bitorder="little").tobytes()
    if nbytes is not None:
        packed = packed[:nbytes].ljust(nbytes, b"\0")
    return packed


@dataclass(frozen=True)
class LoadPlan:
    paddr: int
    memsz: int
    filesz: int
    vaddr: int


def _split_mapping(start: int, end: int) -> list[tuple[int, int, int]]:
    """Cover [start, end) with the biggest pages that fit: (addr, size, page_size) runs."""
    out = []
    addr = start
    bigger = {PAGE_4K: PAGE_2M, PAGE_2M: PAGE_1G}
    while addr < end:
        for size in (PAGE_1G, PAGE_2M, PAGE_4K):
            if addr % size == 0 and addr + size <= end:
                limit = end
                if size in bigger:
                    limit = min(end, (addr // bigger[size] + 1) * bigger[size])
                n = (limit - addr) // size
                out.append((addr, n * size, size))
                addr += n * size
                break
        else:
            raise ValueError(f"unaligned direct-map range {start:#x}-{end:#x}")
    return out


class SyntheticKernel:
    """A fabricated crashed machine plus the oracle for it. See tests/builders/__init__.py."""

    def __init__(
        self,
        dialect: str | Dialect = "6.1",
        *,
        ram: Sequence[tuple[int, int]] | None = None,
        ram_size: int | None = None,
        layout: Layout = "proc_vmcore",
        five_level: bool = False,
        seed: int = 0,
        nr_cpus: int = 2,
        mix: Mapping[str, float] | None = None,
        data_fraction: float = 1.0,
        catalog: bool = True,
        crash_dump_bitmap: int | None = None,
        crash_dump_bitmap_info: Mapping[str, int] | None = None,
        crashkernel: tuple[int, int] | None = None,
        sme_mask: int = 0,
        vmemmap_4k_sections: Iterable[int] = (0,),
        mem_section_size: int = 16,
        section_flag_bit5: bool = False,
        crashtime: int | None = -1,
        vmcoreinfo_overrides: Mapping[str, int | str | None] | None = None,
        vmcoreinfo_drop: Iterable[str] = (),
        gigantic_hugetlb: int = 0,
        rom: bool | None = None,
        kernel_image_chunks: int = 2,
        zero_free_block_members: bool = False,
    ) -> None:
        self.dialect = get_dialect(dialect)
        self.layout: Layout = layout
        self.five_level = five_level
        self.seed = seed
        self.nr_cpus = nr_cpus
        self.rng = np.random.default_rng(seed)
        self.sme_mask = sme_mask
        self.mem_section_size = mem_section_size
        self.section_flag_bit5 = section_flag_bit5
        self.crash_dump_bitmap_level = crash_dump_bitmap
        self.crash_dump_bitmap_overrides = dict(crash_dump_bitmap_info or {})
        self.crashtime = (
            (1_700_000_000 if layout == "proc_vmcore" else None) if crashtime == -1 else crashtime
        )
        self.vmcoreinfo_overrides = dict(vmcoreinfo_overrides or {})
        self.vmcoreinfo_drop = tuple(vmcoreinfo_drop)
        self.data_fraction = data_fraction
        self.ram = sorted(ram if ram is not None else default_ram(ram_size))
        self.crashkernel = crashkernel
        self.rom = (layout == "qemu") if rom is None else rom
        self.order_overrides: dict[int, int] = {}

        self._plan_loads()
        self._init_arrays()
        self._choose_kaslr()
        self._allocate(kernel_image_chunks)
        if gigantic_hugetlb:
            self._place_gigantic(gigantic_hugetlb)
        self._assign_chunks(mix, catalog)
        self._assign_content()
        self.encoder = StructPageEncoder(
            self.dialect,
            self.kinds,
            self.roles,
            self.orders,
            vmemmap_base=self.vmemmap_base,
            page_offset_base=self.page_offset_base,
            order_overrides=self.order_overrides,
            zero_block_members=zero_free_block_members,
        )
        self._build_page_tables(set(vmemmap_4k_sections))
        self._build_mem_section()
        self._build_kernel_data()
        self._register_providers()
        self.vmcoreinfo = self._make_vmcoreinfo()
        self._classifier: Classifier | None = None
        self._kernel_bitmap: bytes | None = None
        self._place_cursor: int | None = None  # place(): next free byte in the .bss area
        self._placed_pages: dict[int, bytearray] = {}

    # ================================================================ layout
    def _plan_loads(self) -> None:
        ram = self.ram
        if self.layout == "qemu":
            low_end = max((e for s, e in ram if s < 4 * GiB), default=0)
            low_end = (low_end + MiB - 1) // MiB * MiB
            blocks = [(0, low_end)] + [(s, e) for s, e in ram if s >= 4 * GiB]
            if self.rom:
                blocks.append((0xFFFC0000, 0x100000000))
            self.load_ranges = sorted(blocks)
        else:
            ranges = []
            for s, e in ram:
                if self.crashkernel:
                    cs, ce = self.crashkernel[0], self.crashkernel[0] + self.crashkernel[1]
                    if cs < e and ce > s:
                        if s < cs:
                            ranges.append((s, cs))
                        if ce < e:
                            ranges.append((ce, e))
                        continue
                ranges.append((s, e))
            self.load_ranges = ranges

    def _init_arrays(self) -> None:
        ram_pfn_ranges = [((s + PAGE_SIZE - 1) >> 12, e >> 12) for s, e in self.ram]
        present: set[int] = set()
        for a, b in ram_pfn_ranges:
            if b > a:
                present.update(range(a // SECTION_PFNS, (b - 1) // SECTION_PFNS + 1))
        self.present_sections = sorted(present)
        last_load_pfn = max((e + PAGE_SIZE - 1) >> 12 for _, e in self.load_ranges)
        span = max((self.present_sections[-1] + 1) * SECTION_PFNS, last_load_pfn)
        span = (span + CHUNK_PFNS - 1) // CHUNK_PFNS * CHUNK_PFNS
        self.nr_pfns = span
        self.kinds = np.zeros(span, dtype=np.uint8)
        self.roles = np.zeros(span, dtype=np.uint8)
        self.orders = np.zeros(span, dtype=np.uint8)
        self.is_ram = np.zeros(span, dtype=bool)
        for a, b in ram_pfn_ranges:
            self.is_ram[a:b] = True
        self.has_memmap = np.zeros(span // SECTION_PFNS + 1, dtype=bool)
        self.has_memmap[self.present_sections] = True
        for sec in self.present_sections:
            self.kinds[sec * SECTION_PFNS : (sec + 1) * SECTION_PFNS] = PageKind.HOLE
        self.kinds[self.is_ram] = PageKind.KERNEL_ALLOC
        nr_chunks = span // CHUNK_PFNS
        self.chunk_full_ram: np.ndarray = np.all(self.is_ram.reshape(nr_chunks, CHUNK_PFNS), axis=1)
        self.chunk_taken: np.ndarray = np.logical_not(self.chunk_full_ram)
        if self.crashkernel:
            cs = self.crashkernel[0] >> 12
            ce = (self.crashkernel[0] + self.crashkernel[1] + PAGE_SIZE - 1) >> 12
            self.kinds[cs:ce][self.is_ram[cs:ce]] = PageKind.KERNEL
            self.chunk_taken[cs // CHUNK_PFNS : (ce + CHUNK_PFNS - 1) // CHUNK_PFNS] = True
        if self.rom:
            self.kinds[0xFFFC0000 >> 12 : 0x100000000 >> 12] = np.where(
                self.kinds[0xFFFC0000 >> 12 : 0x100000000 >> 12] == PageKind.NONE,
                PageKind.ROM,
                self.kinds[0xFFFC0000 >> 12 : 0x100000000 >> 12],
            )

    def _choose_kaslr(self) -> None:
        rng = self.rng
        self.kerneloffset = int(rng.integers(0, 256)) * PAGE_2M
        if self.five_level:
            self.page_offset_base = 0xFF11000000000000 + int(rng.integers(0, 1024)) * PAGE_1G
            self.vmemmap_base = 0xFFD4000000000000 + int(rng.integers(0, 1024)) * PAGE_1G
        else:
            self.page_offset_base = 0xFFFF888000000000 + int(rng.integers(0, 1024)) * PAGE_1G
            self.vmemmap_base = 0xFFFFD40000000000 + int(rng.integers(0, 1024)) * PAGE_1G

    def _allocate(self, image_chunks: int) -> None:
        free = ~self.chunk_taken
        first_ok = LOAD_PHYSICAL_ADDR // (CHUNK_PFNS * PAGE_SIZE)
        candidates = [
            c
            for c in range(first_ok, len(free) - image_chunks + 1)
            if free[c : c + image_chunks].all()
            and (c + image_chunks) * CHUNK_PFNS * PAGE_SIZE <= 4 * GiB
        ]
        if not candidates:
            raise ValueError("no room for the kernel image")
        # prefer low memory like the kernel's physical KASLR within the first GiB
        low = [c for c in candidates if c * CHUNK_PFNS * PAGE_SIZE < GiB] or candidates
        image_chunk = int(self.rng.choice(low[: max(1, len(low) // 2)]))
        self.image_paddr = image_chunk * CHUNK_PFNS * PAGE_SIZE
        self.image_size = image_chunks * PAGE_2M
        self.phys_base = self.image_paddr - LOAD_PHYSICAL_ADDR - self.kerneloffset
        self._take(image_chunk, image_chunks, PageKind.KERNEL)
        # memblock allocates top-down
        self.memmap_chunk: dict[int, int] = {}
        for sec in self.present_sections:
            self.memmap_chunk[sec] = self._alloc_chunks(1)
        # a pool for page tables and mem_section (reserved now, handed out later)
        self.max_physmem_bits = 52 if self.five_level else 46
        root_bytes = (
            -(-(1 << (self.max_physmem_bits - SECTION_SHIFT))
              // (PAGE_SIZE // self.mem_section_size))
            * 8
        )
        nr_pool = 2 + root_bytes // (CHUNK_PFNS * PAGE_SIZE) + len(self.present_sections) // 256
        self.pool_chunks = [self._alloc_chunks(1) for _ in range(nr_pool)]
        self._pool_next = 0  # index into the pool, in pages
        # the RFC kernel's bitmap: 1 bit per pfn up to the end of RAM, physically contiguous
        self.bitmap_nbits = (max(e for _, e in self.ram) + PAGE_SIZE - 1) >> 12
        self.bitmap_nbytes = (self.bitmap_nbits + 7) // 8
        self.bitmap_pages = (self.bitmap_nbytes + PAGE_SIZE - 1) // PAGE_SIZE
        self.bitmap_paddr = 0
        if self.crash_dump_bitmap_level is not None:
            chunks = (self.bitmap_pages + CHUNK_PFNS - 1) // CHUNK_PFNS
            self.bitmap_paddr = self._alloc_chunks(chunks) * CHUNK_PFNS * PAGE_SIZE

    def _take(self, chunk: int, count: int, kind: PageKind) -> None:
        self.chunk_taken[chunk : chunk + count] = True
        sl = slice(chunk * CHUNK_PFNS, (chunk + count) * CHUNK_PFNS)
        self.kinds[sl] = kind
        self.roles[sl] = Role.SINGLE

    def _alloc_chunks(self, count: int, kind: PageKind = PageKind.KERNEL_META) -> int:
        free = ~self.chunk_taken
        for c in range(len(free) - count, -1, -1):
            if free[c : c + count].all():
                self._take(c, count, kind)
                return c
        raise ValueError("out of memory for builder structures")

    def _alloc_pool_pages(self, count: int = 1) -> int:
        """count physically contiguous pages from the pool; returns the first paddr."""
        if count > CHUNK_PFNS:
            raise ValueError("pool allocations are at most one chunk")
        chunk_i, page_i = divmod(self._pool_next, CHUNK_PFNS)
        if page_i + count > CHUNK_PFNS:
            chunk_i, page_i = chunk_i + 1, 0
        if chunk_i >= len(self.pool_chunks):
            raise ValueError("builder page pool exhausted")
        self._pool_next = chunk_i * CHUNK_PFNS + page_i + count
        return (self.pool_chunks[chunk_i] * CHUNK_PFNS + page_i) * PAGE_SIZE

    def _place_gigantic(self, count: int) -> None:
        per = PAGE_1G // (CHUNK_PFNS * PAGE_SIZE)
        free = ~self.chunk_taken
        placed = 0
        for c in range(0, len(free) - per + 1, per):
            if placed == count:
                break
            if free[c : c + per].all():
                start = c * CHUNK_PFNS
                end = start + (1 << 18)
                self.kinds[start:end] = PageKind.HUGETLB
                self.roles[start] = Role.HEAD
                self.roles[start + 1 : end] = Role.TAIL
                self.orders[start] = 18
                self.chunk_taken[c : c + per] = True
                placed += 1

    # ================================================================ page classes
    def _template(self, spec: Sequence[tuple[int, PageKind, int, Role]]) -> tuple[np.ndarray, ...]:
        kinds = np.full(CHUNK_PFNS, PageKind.KERNEL_ALLOC, dtype=np.uint8)
        roles = np.zeros(CHUNK_PFNS, dtype=np.uint8)
        orders = np.zeros(CHUNK_PFNS, dtype=np.uint8)
        for pos, kind, order, role in spec:
            n = 1 << order
            kinds[pos : pos + n] = kind
            roles[pos] = role
            orders[pos] = order if kind != PageKind.FREE or role == Role.HEAD else 0
            if n > 1:
                member = Role.BLOCK if kind in (PageKind.FREE, PageKind.UNACCEPTED) else Role.TAIL
                roles[pos + 1 : pos + n] = member
        return kinds, roles, orders

    def _catalog(self) -> tuple[tuple[np.ndarray, ...], list[tuple[int, int]]]:
        """One chunk with every page class (and the corner cases); returns overrides too."""
        H, S = Role.HEAD, Role.SINGLE
        K = PageKind
        singles = [
            K.KERNEL_ALLOC, K.PGTABLE, K.CACHE, K.CACHE_PRIVATE, K.SWAPCACHE, K.OWNER_PRIV1,
            K.SHMEM, K.ANON, K.ANON_SWAPCACHE, K.ANON_KSM, K.ANON_NOLRU, K.MOVABLE, K.SLAB,
            K.HWPOISON, K.CACHE_HWPOISON, K.OFFLINE, K.OFFLINE_BALLOON,
        ]  # fmt: skip
        spec: list[tuple[int, PageKind, int, Role]] = [
            (i, kind, 0, S) for i, kind in enumerate(singles)
        ]
        spec += [
            (17, K.FREE, 0, H),  # order-0 free page
            (18, K.FREE, 0, H),  # free page with an impossible order (set below): kept
            (19, K.KERNEL, 0, S),
            (32, K.FREE, 3, H),
            (40, K.FILE_FOLIO, 2, H),
            (44, K.PRIVATE_FOLIO, 2, H),
            (48, K.ANON_THP, 3, H),
            (56, K.KERNEL_COMPOUND, 2, H),
            (60, K.SLAB_COMPOUND, 1, H),
            (62, K.ANON, 0, S),
            (63, K.SHMEM, 0, S),
            (64, K.FREE, 5, H),
            (96, K.HWPOISON_COMPOUND, 2, H),
            (100, K.ANON_THP, 2, H),  # order byte corrupted to 70 (set below): order 0
            (105, K.ANON_THP, 2, H),  # head not aligned to its order: order 0
            (112, K.FILE_FOLIO, 4, H),
            (128, K.FREE, 7, H),
            (257, K.HUGETLB, 2, H),  # unaligned hugetlb head: 1 page, still user
        ]
        spec += [(i, K.CACHE, 0, S) for i in range(261, 320)]
        spec += [(i, K.ANON, 0, S) for i in range(320, 384)]
        spec += [(384, K.FREE, 6, H), (448, K.KERNEL_COMPOUND, 5, H)]
        spec += [(i, K.CACHE, 0, S) for i in range(480, 512)]
        tmpl = self._template(spec)
        tmpl[2][18] = 11  # private = 11 >= LENGTH(zone.free_area): makedumpfile keeps it
        return tmpl, [(100, 70)]

    def _assign_chunks(self, mix: Mapping[str, float] | None, catalog: bool) -> None:
        rng = self.rng
        nr_chunks = self.nr_pfns // CHUNK_PFNS
        kinds2 = self.kinds.reshape(nr_chunks, CHUNK_PFNS)
        roles2 = self.roles.reshape(nr_chunks, CHUNK_PFNS)
        orders2 = self.orders.reshape(nr_chunks, CHUNK_PFNS)
        typed = np.flatnonzero(~self.chunk_taken)
        if catalog and len(typed):
            c = int(typed[len(typed) // 3]) if len(typed) > 3 else int(typed[0])
            (tk, tr, to), overrides = self._catalog()
            kinds2[c], roles2[c], orders2[c] = tk, tr, to
            for pos, value in overrides:
                self.order_overrides[c * CHUNK_PFNS + pos] = value
            self.catalog_chunk: int | None = c
            self.chunk_taken[c] = True
            typed = typed[typed != c]
        else:
            self.catalog_chunk = None
        weights = dict(DEFAULT_MIX if mix is None else mix)
        if not self.dialect.has_unaccepted:
            weights.pop("unaccepted", None)
        names = sorted(weights)
        p = np.array([weights[n] for n in names], dtype=float)
        p /= p.sum()
        choice = rng.choice(len(names), size=len(typed), p=p)
        chunk_type = np.full(nr_chunks, -1)
        chunk_type[typed] = choice
        idx = {n: i for i, n in enumerate(names)}
        if catalog:
            self._force_one_of_each(chunk_type, typed, idx)

        # pairs of 2 MiB chunks (4 MiB aligned) become one order-10 block
        for name in ("free", "unaccepted"):
            if name not in idx:
                continue
            t = idx[name]
            even = np.arange(0, nr_chunks - 1, 2)
            both = (chunk_type[even] == t) & (chunk_type[even + 1] == t)
            if name == "free":
                both &= rng.random(len(even)) < 0.5
            pairs = even[both]
            if name == "unaccepted":
                lone = chunk_type == t
                lone[pairs] = False
                lone[pairs + 1] = False
                chunk_type[lone] = idx.get("free", t)
            kind = PageKind.FREE if name == "free" else PageKind.UNACCEPTED
            for half in (pairs, pairs + 1):
                kinds2[half] = kind
                roles2[half] = Role.BLOCK
                orders2[half] = 0
            roles2[pairs, 0] = Role.HEAD
            orders2[pairs, 0] = 10  # MAX_PAGE_ORDER block: 1024 pages
            chunk_type[pairs] = -2
            chunk_type[pairs + 1] = -2

        K = PageKind
        templates = {
            "free": self._template([(0, K.FREE, 9, Role.HEAD)]),
            "free_split": self._template(
                [(0, K.KERNEL_ALLOC, 0, Role.SINGLE), (1, K.FREE, 0, Role.HEAD)]
                + [(1 << o, K.FREE, o, Role.HEAD) for o in range(1, 9)]
            ),
            "anon_thp": self._template([(0, K.ANON_THP, 9, Role.HEAD)]),
            "file_thp": self._template([(0, K.FILE_FOLIO, 9, Role.HEAD)]),
            "hugetlb": self._template([(0, K.HUGETLB, 9, Role.HEAD)]),
            "hugetlb_free": self._template([(0, K.HUGETLB_FREE, 9, Role.HEAD)]),
            "slab": self._template(
                [(i, K.SLAB, 0, Role.SINGLE) for i in range(256)]
                + [(256 + 8 * j, K.SLAB_COMPOUND, 3, Role.HEAD) for j in range(32)]
            ),
            "kernel": self._template(
                [(i, K.KERNEL, 0, Role.SINGLE) for i in range(128)]
                + [(128 + 4 * j, K.KERNEL_COMPOUND, 2, Role.HEAD) for j in range(32)]
            ),
        }
        for name, (tk, tr, to) in templates.items():
            if name not in idx:
                continue
            sel = np.flatnonzero(chunk_type == idx[name])
            if len(sel):
                kinds2[sel] = tk
                roles2[sel] = tr
                orders2[sel] = to
        mixed = np.flatnonzero(chunk_type == idx["mixed"]) if "mixed" in idx else np.array([], int)
        self._fill_singles(kinds2, roles2, orders2, mixed, overlays=True)
        # partial chunks (RAM next to holes, crash kernel edges): order-0 pages only
        partial = np.flatnonzero(
            ~self.chunk_full_ram & self.is_ram.reshape(nr_chunks, -1).any(axis=1)
        )
        self._fill_singles(kinds2, roles2, orders2, partial, overlays=False)
        # the first MiB is always reserved (x86 setup reserves it since v5.13)
        low = np.flatnonzero(self.is_ram[:256])
        self.kinds[low] = PageKind.KERNEL
        self.roles[low] = Role.SINGLE
        self.orders[low] = 0

    def _force_one_of_each(
        self, chunk_type: np.ndarray, typed: np.ndarray, idx: dict[str, int]
    ) -> None:
        """Make sure every chunk type (with weight > 0) occurs at least once."""
        typable = set(typed.tolist())
        used: set[int] = set()
        for name in sorted(idx):
            t = idx[name]
            if name == "unaccepted":  # needs a 4 MiB aligned pair
                pair = next(
                    (c for c in sorted(typable - used) if c % 2 == 0 and c + 1 in typable - used),
                    None,
                )
                if pair is not None:
                    chunk_type[pair] = chunk_type[pair + 1] = t
                    used.update((pair, pair + 1))
                continue
            free_chunks = sorted(typable - used)
            if free_chunks:
                c = free_chunks[-1]  # from the top, away from the catalog
                chunk_type[c] = t
                used.add(c)

    def _fill_singles(
        self,
        kinds2: np.ndarray,
        roles2: np.ndarray,
        orders2: np.ndarray,
        chunks: np.ndarray,
        *,
        overlays: bool,
    ) -> None:
        if len(chunks) == 0:
            return
        rng = self.rng
        options = np.array(list(_SINGLE_WEIGHTS), dtype=np.uint8)
        p = np.array(list(_SINGLE_WEIGHTS.values()))
        p /= p.sum()
        drawn = rng.choice(options, p=p, size=(len(chunks), CHUNK_PFNS)).astype(np.uint8)
        if not overlays:
            ram = self.is_ram.reshape(-1, CHUNK_PFNS)[chunks]
            keep = kinds2[chunks] == PageKind.KERNEL_ALLOC  # not crash kernel / hole
            drawn = np.where(ram & keep, drawn, kinds2[chunks])
        kinds2[chunks] = drawn
        roles2[chunks] = np.where(drawn == PageKind.FREE, Role.HEAD, Role.SINGLE)
        orders2[chunks] = 0
        if not overlays:
            return
        for pos, kind, order, prob in _OVERLAYS:
            sel = chunks[rng.random(len(chunks)) < prob]
            n = 1 << order
            member = Role.BLOCK if kind == PageKind.FREE else Role.TAIL
            kinds2[sel, pos : pos + n] = kind
            roles2[sel, pos] = Role.HEAD
            roles2[sel, pos + 1 : pos + n] = member
            orders2[sel, pos : pos + n] = 0
            orders2[sel, pos] = order

    def _assign_content(self) -> None:
        img = PhysImage(self.nr_pfns)
        p_data = kind_table({k: p.p_data for k, p in KIND_PROPS.items()}, 0.0, np.float32)
        scale = np.float32(self.data_fraction)
        # in windows (the same draws as one call): bounded temporaries on a TiB machine
        for lo in range(0, self.nr_pfns, _ORACLE_WINDOW_PFNS):
            hi = min(self.nr_pfns, lo + _ORACLE_WINDOW_PFNS)
            kinds = self.kinds[lo:hi]
            prob = p_data[kinds]
            prob = np.where(kinds == PageKind.ROM, prob, prob * scale)
            draw = self.rng.random(hi - lo, dtype=np.float32)
            img.content[lo:hi] = np.where(draw < prob, CONTENT_PATTERN, CONTENT_ZERO)
        # firmware data in the parts of PT_LOADs that are not RAM (partial pages, QEMU holes)
        for s, e in self.load_ranges:
            lo, hi = s >> 12, min((e + PAGE_SIZE - 1) >> 12, self.nr_pfns)
            if lo < hi:
                img.content[lo:hi][self.kinds[lo:hi] == PageKind.HOLE] = CONTENT_PATTERN
        img.tags[:] = self.kinds
        self.phys = img

    # ================================================================ kernel structures
    def kvaddr(self, paddr: int) -> int:
        """Kernel-image virtual address of paddr (__START_KERNEL_map + paddr - phys_base)."""
        return (START_KERNEL_MAP + paddr - self.phys_base) & 0xFFFFFFFFFFFFFFFF

    def dvaddr(self, paddr: int) -> int:
        """Direct-map virtual address of paddr (page_offset_base + paddr)."""
        return self.page_offset_base + paddr

    def struct_page_vaddr(self, pfn: int) -> int:
        return self.vmemmap_base + pfn * 64

    def _build_page_tables(self, vmemmap_4k: set[int]) -> None:
        data = self.image_paddr + self.image_size - PAGE_2M  # the image's data chunk
        self.init_top_pgt_paddr = data
        level3_kernel_pgt, level2_kernel_pgt, level4_kernel_pgt = (
            data + 0x1000,
            data + 0x2000,
            data + 0x3000,
        )
        self.kernel_table_pages = [data, level3_kernel_pgt, level2_kernel_pgt]
        if self.five_level:
            self.kernel_table_pages.append(level4_kernel_pgt)

        def alloc() -> int:
            return self._alloc_pool_pages(1)

        pt = PageTableBuilder(5 if self.five_level else 4, data, alloc, sme_mask=self.sme_mask)
        self.pagetables = pt
        for page in self.kernel_table_pages[1:]:
            pt.add_table(page)
        fixed = (
            {1: level4_kernel_pgt, 2: level3_kernel_pgt, 3: level2_kernel_pgt}
            if self.five_level
            else {1: level3_kernel_pgt, 2: level2_kernel_pgt}
        )
        pt.map(
            self.kvaddr(self.image_paddr),
            self.image_paddr,
            self.image_size,
            PAGE_2M,
            fixed_tables=fixed,
        )
        # direct map: the ISA range and every RAM range, biggest pages that fit
        direct = [(0, MiB)] + [((s + 0xFFF) & ~0xFFF, e & ~0xFFF) for s, e in self.ram]
        direct = _merge(direct)
        for s, e in direct:
            for addr, size, page_size in _split_mapping(s, e):
                pt.map(self.dvaddr(addr), addr, size, page_size)
        # vmemmap: struct pages of a section = 2 MiB, backed by one chunk
        self.vmemmap_perm: dict[int, np.ndarray] = {}
        for sec in self.present_sections:
            backing = self.memmap_chunk[sec] * CHUNK_PFNS * PAGE_SIZE
            vaddr = self.vmemmap_base + sec * SECTION_PFNS * 64
            if sec in vmemmap_4k:
                perm = self.rng.permutation(CHUNK_PFNS)
                self.vmemmap_perm[sec] = perm
                for i in range(CHUNK_PFNS):
                    pt.map(vaddr + i * PAGE_4K, backing + int(perm[i]) * PAGE_4K, PAGE_4K)
            else:
                pt.map(vaddr, backing, PAGE_2M, PAGE_2M)

    def _build_mem_section(self) -> None:
        # NR_SECTION_ROOTS = DIV_ROUND_UP(NR_MEM_SECTIONS, SECTIONS_PER_ROOT)
        # (include/linux/mmzone.h); exported as LENGTH(mem_section)
        per_root = PAGE_SIZE // self.mem_section_size
        length = -(-(1 << (self.max_physmem_bits - SECTION_SHIFT)) // per_root)
        self.mem_section_length = length
        root_pages = (length * 8 + PAGE_SIZE - 1) // PAGE_SIZE
        root_paddr = self._alloc_pool_pages(root_pages)
        self.mem_section_root_paddr = root_paddr
        roots = np.zeros(root_pages * PAGE_SIZE // 8, dtype="<u8")
        usage_page = self._alloc_pool_pages(1)
        flags = SECTION_MARKED_PRESENT | SECTION_HAS_MEM_MAP | SECTION_IS_ONLINE | SECTION_IS_EARLY
        if self.section_flag_bit5:
            flags |= SECTION_IS_VMEMMAP_PREINIT
        for root in sorted({sec // per_root for sec in self.present_sections}):
            page = self._alloc_pool_pages(1)
            roots[root] = self.dvaddr(page)
            buf = bytearray(PAGE_SIZE)
            for sec in self.present_sections:
                if sec // per_root != root:
                    continue
                # sparse_encode_mem_map(): mem_map - section_nr_to_pfn(nr), | flags
                mem_map = self.vmemmap_base + sec * SECTION_PFNS * 64
                encoded = mem_map - sec * SECTION_PFNS * 64
                at = (sec % per_root) * self.mem_section_size
                struct.pack_into(
                    "<QQ", buf, at, encoded | flags, self.dvaddr(usage_page) + 64 * (sec % 64)
                )
            self.phys.set_page(page >> 12, bytes(buf))
        raw = roots.tobytes()
        for i in range(root_pages):
            self.phys.set_page((root_paddr >> 12) + i, raw[i * PAGE_SIZE : (i + 1) * PAGE_SIZE])
        self.phys.set_page(usage_page >> 12, bytes(PAGE_SIZE))

    def _build_kernel_data(self) -> None:
        d = self.dialect
        data_chunk = self.image_paddr + self.image_size - PAGE_2M
        page = data_chunk + 0x8000
        buf = bytearray(PAGE_SIZE)
        # struct uts_namespace init_uts_ns at +0x100 (name at OFFSET(uts_namespace.name))
        uts = data_chunk + 0x8100
        fields = [
            b"Linux",
            b"synthetic",
            d.osrelease.encode(),
            b"#1 SMP PREEMPT_DYNAMIC",
            b"x86_64",
            b"(none)",
        ]
        for i, value in enumerate(fields):
            at = 0x100 + d.uts_name_offset + 65 * i
            buf[at : at + len(value)] = value
        self.utsname = fields
        # node_online_map at +0x800: node 0 online
        buf[0x800] = 1
        self.symbols: dict[str, int] = {
            "init_uts_ns": self.kvaddr(uts),
            "node_online_map": self.kvaddr(page + 0x800),
            "swapper_pg_dir": self.kvaddr(self.init_top_pgt_paddr),
            "init_top_pgt": self.kvaddr(self.init_top_pgt_paddr),
            "_stext": self.kvaddr(self.image_paddr),
            "vmap_area_list": self.kvaddr(page + 0x900),
            "mem_section": self.dvaddr(self.mem_section_root_paddr),
            "prb": self.kvaddr(page + 0xB00),
            "printk_rb_static": self.kvaddr(page + 0xB20),
            "clear_seq": self.kvaddr(page + 0xB80),
            "node_data": self.kvaddr(page + 0xC00),
            "kallsyms_names": self.kvaddr(self.image_paddr + 0x100000),
            "kallsyms_num_syms": self.kvaddr(self.image_paddr + 0x0FFFF8),
            "kallsyms_token_table": self.kvaddr(self.image_paddr + 0x140000),
            "kallsyms_token_index": self.kvaddr(self.image_paddr + 0x141000),
            "kallsyms_offsets": self.kvaddr(self.image_paddr + 0x0C0000),
            "kallsyms_relative_base": self.kvaddr(self.image_paddr + 0x0FFFF0),
        }
        self.kernel_data_paddr = page
        self._kernel_data_page = buf
        self.crash_dump_bitmap_info_paddr: int | None = None
        if self.crash_dump_bitmap_level is not None:
            self.crash_dump_bitmap_info_paddr = page + 0xA00
            self.symbols["crash_dump_bitmap_info"] = self.kvaddr(page + 0xA00)

    def _register_providers(self) -> None:
        img = self.phys
        # the image: text chunk(s) pattern, data chunk: tables and data pages, then zero
        # (.bss), then pattern again
        img.content[self.image_paddr >> 12 : (self.image_paddr + self.image_size) >> 12] = (
            CONTENT_PATTERN
        )
        img.tags[self.image_paddr >> 12 : (self.image_paddr + self.image_size) >> 12] = (
            PageKind.KERNEL
        )
        data_chunk = (self.image_paddr + self.image_size - PAGE_2M) >> 12
        img.content[data_chunk : data_chunk + 0x100] = CONTENT_ZERO
        # page tables (read live, so planted entries are written too)
        self._table_pfns = {p >> 12 for p in self.pagetables.tables}
        for pfn in self._table_pfns:
            img.content[pfn] = CONTENT_PROVIDER
        img.content[self.kernel_data_paddr >> 12] = CONTENT_PROVIDER
        # mem_map backing
        nr_chunks = self.nr_pfns // CHUNK_PFNS
        self._chunk_section = np.full(nr_chunks, -1, dtype=np.int64)
        for sec, chunk in self.memmap_chunk.items():
            self._chunk_section[chunk] = sec
            img.content[chunk * CHUNK_PFNS : (chunk + 1) * CHUNK_PFNS] = CONTENT_PROVIDER
        self._inv_perm = {sec: np.argsort(perm) for sec, perm in self.vmemmap_perm.items()}
        # crash dump bitmap
        if self.crash_dump_bitmap_level is not None:
            first = self.bitmap_paddr >> 12
            img.content[first : first + self.bitmap_pages] = CONTENT_PROVIDER
        img.providers.append(Provider(0, self.nr_pfns, self._make_provider_pages, name="builder"))

    def _make_provider_pages(self, pfns: np.ndarray) -> np.ndarray:
        out = np.zeros((len(pfns), PAGE_SIZE), dtype=np.uint8)
        chunk_sec = self._chunk_section[pfns // CHUNK_PFNS]
        memmap = chunk_sec >= 0
        if memmap.any():
            idx = np.flatnonzero(memmap)
            secs = chunk_sec[idx]
            j = pfns[idx] % CHUNK_PFNS
            for sec, inv in self._inv_perm.items():
                m = secs == sec
                if m.any():
                    j[m] = inv[j[m]]
            first = secs * SECTION_PFNS + j * 64
            pages = (first[:, None] + np.arange(64)[None, :]).reshape(-1)
            out[idx] = self.encoder.encode(pages).reshape(len(idx), PAGE_SIZE)
        rest = np.flatnonzero(~memmap)
        if len(rest) == 0:
            return out
        bitmap_first = self.bitmap_paddr >> 12 if self.crash_dump_bitmap_level is not None else -1
        for i in rest.tolist():
            pfn = int(pfns[i])
            if pfn in self._table_pfns:
                out[i] = np.frombuffer(self.pagetables.table_page(pfn << 12), dtype=np.uint8)
            elif pfn == self.kernel_data_paddr >> 12:
                out[i] = np.frombuffer(bytes(self._data_page_now()), dtype=np.uint8)
            elif pfn in self.phys.explicit:
                out[i] = np.frombuffer(self.phys.explicit[pfn], dtype=np.uint8)
            elif bitmap_first <= pfn < bitmap_first + self.bitmap_pages:
                raw = self._bitmap_region()
                at = (pfn - bitmap_first) * PAGE_SIZE
                out[i] = np.frombuffer(raw[at : at + PAGE_SIZE], dtype=np.uint8)
        return out

    def _data_page_now(self) -> bytearray:
        buf = bytearray(self._kernel_data_page)
        if self.crash_dump_bitmap_info_paddr is not None:
            buf[0xA00 : 0xA00 + CRASH_DUMP_BITMAP_INFO.size] = self.crash_dump_bitmap_info_bytes()
        return buf

    def _make_vmcoreinfo(self) -> bytes:
        overrides: dict[str, int | str | None] = {
            f"SYMBOL({name})": value for name, value in self.symbols.items()
        }
        overrides.update(
            {
                "NUMBER(phys_base)": self.phys_base,
                "KERNELOFFSET": self.kerneloffset,
                "NUMBER(sme_mask)": self.sme_mask,
                "SIZE(mem_section)": self.mem_section_size,
                "LENGTH(mem_section)": self.mem_section_length,
            }
        )
        overrides.update(self.vmcoreinfo_overrides)
        return make_vmcoreinfo(
            self.dialect,
            drop=self.vmcoreinfo_drop,
            crashtime=self.crashtime,
            five_level=self.five_level,
            crash_dump_bitmap=self.crash_dump_bitmap_level is not None,
            **overrides,  # type: ignore[arg-type]
        )

    # ================================================================ kernel data for tests
    def place(self, data: bytes) -> int:
        """Put ``data`` (8-byte aligned) into the kernel image's .bss; return its vaddr.

        The area is the zero pages 0x10..0xff of the image's data chunk (960 KiB).
        """
        base = self.image_paddr + self.image_size - PAGE_2M
        cursor = self._place_cursor or base + 0x10 * PAGE_SIZE
        if cursor + len(data) > base + 0x100 * PAGE_SIZE:
            raise ValueError("the kernel's .bss area is full")
        pages = self._placed_pages
        done = 0
        while done < len(data):
            paddr = cursor + done
            pfn, offset = divmod(paddr, PAGE_SIZE)
            n = min(len(data) - done, PAGE_SIZE - offset)
            page = pages.setdefault(pfn, bytearray(PAGE_SIZE))
            page[offset : offset + n] = data[done : done + n]
            self.phys.set_page(pfn, bytes(page))
            done += n
        self._place_cursor = (cursor + len(data) + 7) // 8 * 8
        return self.kvaddr(cursor)

    def set_vmcoreinfo(self, entries: Mapping[str, int | str | None]) -> None:
        """Change VMCOREINFO keys (None drops one) and rebuild the note text."""
        self.vmcoreinfo_overrides.update(entries)
        self.vmcoreinfo = self._make_vmcoreinfo()

    # ================================================================ the RFC kernel side
    def crash_dump_bitmap_info_values(self) -> dict[str, int]:
        """The struct's fields as the panicking kernel filled them (then overrides)."""
        if self.crash_dump_bitmap_level is None:
            raise ValueError("this kernel has no crash_dump_bitmap_info")
        counts = self._kernel_counts()
        values = {
            "version": CRASH_DUMP_BITMAP_INFO_VERSION,
            "bitmap": self.bitmap_paddr,
            "bitmap_size": self.bitmap_nbytes,
            "cache_pages": counts.cache,
            "cache_private_pages": counts.cache_private,
            "user_pages": counts.user,
            "free_pages": counts.free,
            "hwpoison_pages": counts.hwpoison,
        }
        values.update(self.crash_dump_bitmap_overrides)
        return values

    def crash_dump_bitmap_info_bytes(self) -> bytes:
        v = self.crash_dump_bitmap_info_values()
        return CRASH_DUMP_BITMAP_INFO.pack(
            v["version"],
            v["bitmap"],
            v["bitmap_size"],
            v["cache_pages"],
            v["cache_private_pages"],
            v["user_pages"],
            v["free_pages"],
            v["hwpoison_pages"],
        )

    def _kernel_exclusion(self) -> tuple[np.ndarray, PageCounts]:
        """The kernel's classification, a 1 GiB window at a time (bounded temporaries
        on a TiB machine): no object of order <= 18 crosses an aligned window."""
        level = int(self.crash_dump_bitmap_level or 0)
        nbits = self.bitmap_nbits
        cleared = np.zeros(nbits, dtype=bool)
        counts = PageCounts()
        for lo in range(0, nbits, _ORACLE_WINDOW_PFNS):
            hi = min(nbits, lo + _ORACLE_WINDOW_PFNS)
            scanned = (self.kinds[lo:hi] != PageKind.NONE) & self.has_memmap[
                np.arange(lo, hi) // SECTION_PFNS]
            window, window_counts = self.classifier.exclude(level, scanned, hi,
                                                            kernel_view=True, start=lo)
            cleared[lo:hi] = window
            counts.add(window_counts)
        return cleared, counts

    def _kernel_counts(self) -> PageCounts:
        return self._kernel_exclusion()[1]

    def expected_kernel_bitmap(self) -> np.ndarray:
        """The RFC kernel's bitmap as bools (True = keep), one per pfn < bitmap bits.

        Every pfn starts set; pages the kernel classifies as cache, private cache, user,
        free, hwpoison or offline at its dump level are cleared. Zero pages are not its job.
        """
        cleared, _ = self._kernel_exclusion()
        return ~cleared

    def expected_dumpable_q(self) -> np.ndarray:
        """2nd bitmap of the -q path: 1st bitmap AND the kernel bitmap, minus no-data pages.

        Pfns beyond the kernel's bitmap_size count as excluded (the RFC reads whole pages
        from the bitmap address; the region is zero-padded). Zero pages stay set.
        """
        limit = self.max_mapnr
        kernel = np.zeros(limit, dtype=bool)
        bits = self.expected_kernel_bitmap()[:limit]
        kernel[: len(bits)] = bits
        return self.first_bitmap() & kernel & ~self._nodata(limit)

    def expected_counts_q(self, level: int) -> PageCounts:
        """Report counters of the -q path: the struct's counters (as stored, overrides
        included), offline 0 (no field), zero pages counted at write time when level & 1."""
        v = self.crash_dump_bitmap_info_values()
        counts = PageCounts(
            cache=v["cache_pages"],
            cache_private=v["cache_private_pages"],
            user=v["user_pages"],
            free=v["free_pages"],
            hwpoison=v["hwpoison_pages"],
        )
        if int(level) & DumpLevel.ZERO:
            dumpable = self.expected_dumpable_q()
            zero = self._zero_in_dump(len(dumpable))
            counts.zero = int((dumpable & zero).sum())
        return counts

    def _bitmap_region(self) -> bytes:
        if self._kernel_bitmap is None:
            bits = pack_bitmap(self.expected_kernel_bitmap(), self.bitmap_nbytes)
            self._kernel_bitmap = bits.ljust(self.bitmap_pages * PAGE_SIZE, b"\0")
        return self._kernel_bitmap

    # ================================================================ output
    def loads(self) -> list[LoadPlan]:
        """The PT_LOADs in file order."""
        out = []
        if self.layout == "proc_vmcore":
            # kexec's kernel text segment first (overlaps the direct-map segment)
            out.append(
                LoadPlan(
                    self.image_paddr,
                    self.image_size,
                    self.image_size,
                    self.kvaddr(self.image_paddr),
                )
            )
            for s, e in self.load_ranges:
                out.append(LoadPlan(s, e - s, e - s, self.dvaddr(s)))
        else:
            for s, e in self.load_ranges:
                out.append(LoadPlan(s, e - s, e - s, 0))
        return out

    def elf_builder(self, *, force_xnum: bool = False) -> ElfCoreBuilder:
        """A fresh ElfCoreBuilder for this machine (tweak it before writing to break things)."""
        b = ElfCoreBuilder(self.layout, force_xnum=force_xnum)
        for cpu in range(self.nr_cpus):
            b.add_prstatus(cpu)
        if self.layout == "qemu":
            for cpu in range(self.nr_cpus):
                b.add_qemu_cpustate(cpu)
        b.add_vmcoreinfo(self.vmcoreinfo)
        for load in self.loads():
            b.add_load(
                load.paddr, data=self.phys, memsz=load.memsz, filesz=load.filesz, vaddr=load.vaddr
            )
        return b

    def write(self, path: str | os.PathLike[str], *, force_xnum: bool = False) -> int:
        """Write the vmcore sparse; returns its apparent size."""
        return self.elf_builder(force_xnum=force_xnum).write(path)

    def to_bytes(self) -> bytes:
        return self.elf_builder().build()

    # ================================================================ oracle
    @property
    def classifier(self) -> Classifier:
        if self._classifier is None:
            info = self.vmcoreinfo.decode()
            keys = {line.split("=", 1)[0] for line in info.splitlines() if "=" in line}
            marker = {
                "dtor": "NUMBER(HUGETLB_PAGE_DTOR)",
                "pg_hugetlb": "NUMBER(PG_hugetlb)",
                "page_type": "NUMBER(PAGE_HUGETLB_MAPCOUNT_VALUE)",
            }[self.dialect.hugetlb_encoding]
            self._classifier = Classifier(
                kinds=self.kinds,
                roles=self.roles,
                orders=self.orders,
                order_overrides=self.order_overrides,
                free_area_length=11,
                has_hwpoison="NUMBER(PG_hwpoison)" in keys,
                has_offline="NUMBER(PAGE_OFFLINE_MAPCOUNT_VALUE)" in keys,
                has_hugetlb_marker=marker in keys,
                has_unaccepted="NUMBER(PAGE_UNACCEPTED_MAPCOUNT_VALUE)" in keys,
            )
        return self._classifier

    @property
    def max_mapnr(self) -> int:
        """roundup(max PT_LOAD end) / page, lowered to the end of the last mem_map section."""
        end = max(load.paddr + load.memsz for load in self.loads())
        mapnr = (end + PAGE_SIZE - 1) // PAGE_SIZE
        if self.present_sections:
            mapnr = min(mapnr, (self.present_sections[-1] + 1) * SECTION_PFNS)
        return mapnr

    @property
    def keeps_partial_last_pages(self) -> bool:
        """makedumpfile runs in one cycle (its bitmap file rounds a PT_LOAD's end up) only
        when min(4 MiB, max_mapnr / 4 bytes) holds both bitmaps; otherwise its cyclic
        buffer truncates the end and the segment's partial last page is not present."""
        return min(4 << 20, self.max_mapnr * 2 // 8) * 8 >= self.max_mapnr * 2

    def first_bitmap(self) -> np.ndarray:
        """bool per pfn < max_mapnr: covered by a PT_LOAD, [p_paddr>>12, end>>12) plus
        the partial last page when keeps_partial_last_pages."""
        limit = self.max_mapnr
        round_up = PAGE_SIZE - 1 if self.keeps_partial_last_pages else 0
        bits = np.zeros(limit, dtype=bool)
        for load in self.loads():
            first = load.paddr >> 12
            last = (load.paddr + load.memsz + round_up) >> 12
            bits[first : min(last, limit)] = True
        return bits

    present_pfns = property(first_bitmap)

    def _nodata(self, limit: int) -> np.ndarray:
        bits = np.zeros(limit, dtype=bool)
        for load in self.loads():
            if load.filesz < load.memsz:
                first = (load.paddr + load.filesz + PAGE_SIZE - 1) >> 12
                last = (load.paddr + load.memsz + PAGE_SIZE - 1) >> 12
                bits[first : min(last, limit)] = True
        return bits

    def _in_segs(self, limit: int) -> np.ndarray:
        """Page address inside the file-backed part of some PT_LOAD (is_in_segs)."""
        bits = np.zeros(limit, dtype=bool)
        for load in self.loads():
            first = (load.paddr + PAGE_SIZE - 1) >> 12
            last = (load.paddr + load.filesz + PAGE_SIZE - 1) >> 12
            bits[first : min(last, limit)] = True
        return bits

    def scan_runs(self, level: int) -> bool:
        """Whether makedumpfile's mem_map scan runs at this level."""
        scan_bits = DumpLevel.CACHE | DumpLevel.CACHE_PRI | DumpLevel.USER | DumpLevel.FREE
        return bool(int(level) & scan_bits) or self.classifier.has_hwpoison

    def _exclusion(self, level: int) -> tuple[np.ndarray, PageCounts]:
        limit = self.max_mapnr
        if not self.scan_runs(level):
            return np.zeros(limit, dtype=bool), PageCounts()
        memmap = self.has_memmap[np.arange(limit) // SECTION_PFNS]
        scanned = memmap & self._in_segs(limit) & (self.kinds[:limit] != PageKind.NONE)
        return self.classifier.exclude(level, scanned, limit)

    def expected_dumpable(self, level: int) -> np.ndarray:
        """makedumpfile's 2nd bitmap for the kdump format (zero pages stay set)."""
        cleared, _ = self._exclusion(level)
        return self.first_bitmap() & ~cleared & ~self._nodata(self.max_mapnr)

    def expected_zero_pages(self, level: int) -> np.ndarray:
        """Dumpable pages (at this level) whose data in the dump is all zero."""
        dumpable = self.expected_dumpable(level)
        return dumpable & self._zero_in_dump(len(dumpable), among=dumpable)

    def _zero_in_dump(self, limit: int, among: np.ndarray | None = None) -> np.ndarray:
        """bool per pfn < limit: the page reads as all zero from the dump (only exact for
        pfns in ``among``, which limits the few byte-level checks)."""
        zero = ~self._may_be_nonzero_in_dump(limit)
        wanted = np.ones(limit, dtype=bool) if among is None else among
        candidates = np.flatnonzero(wanted & ~zero)
        # pages that might hold data: check the real bytes of the few special ones
        special = candidates[
            self.phys.content[np.minimum(candidates, self.nr_pfns - 1)] == CONTENT_PROVIDER
        ]
        special = special[~self._never_zero(special)]
        for pfn in special.tolist():
            if not any(self.page_bytes(pfn)):
                zero[pfn] = True
        return zero

    def _never_zero(self, pfns: np.ndarray) -> np.ndarray:
        return self._chunk_section[np.minimum(pfns, self.nr_pfns - 1) // CHUNK_PFNS] >= 0

    def _may_be_nonzero_in_dump(self, limit: int) -> np.ndarray:
        return self.phys.may_be_nonzero(0, limit)

    def expected_counts(self, level: int) -> PageCounts:
        """PageCounts as makedumpfile's report counts them (kdump format)."""
        _, counts = self._exclusion(level)
        if int(level) & DumpLevel.ZERO:
            counts.zero = int(self.expected_zero_pages(level).sum())
        return counts

    def page_bytes(self, pfn: int) -> bytes:
        """The page as the dump holds it: machine data where a PT_LOAD's file part covers it,
        zero elsewhere (partial pages are zero-filled)."""
        base = pfn << 12
        page = bytearray(PAGE_SIZE)
        raw = self.phys.page(pfn) if pfn < self.nr_pfns else bytes(PAGE_SIZE)
        for load in self.loads():
            lo = max(base, load.paddr)
            hi = min(base + PAGE_SIZE, load.paddr + load.filesz)
            if lo < hi:
                page[lo - base : hi - base] = raw[lo - base : hi - base]
        return bytes(page)

    def vtop(self, vaddr: int) -> int | None:
        """The physical address the builder mapped vaddr to (its intent, before plant())."""
        return self.pagetables.vtop(vaddr)

    def kind(self, pfn: int) -> PageKind:
        return PageKind(int(self.kinds[pfn]))

    def pfns_of(self, kind: PageKind, role: Role | None = None) -> np.ndarray:
        mask = self.kinds == kind
        if role is not None:
            mask &= self.roles == role
        return np.flatnonzero(mask)

    def struct_page_bytes(self, pfn: int) -> bytes:
        """The 64-byte struct page the builder wrote for pfn."""
        return self.encoder.encode(np.array([pfn])).tobytes()


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in sorted(r for r in ranges if r[1] > r[0]):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out
