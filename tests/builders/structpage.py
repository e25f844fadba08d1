"""struct page: what each page *is* (PageKind) and how a dialect encodes it (vectorised).

The builder first decides, per pfn, a kind (what the page is used for), a role (a single
page, the head of a compound page / buddy block, a compound tail, or a non-compound member
of a buddy block) and, for heads, an order. ``StructPageEncoder`` turns those arrays into
64-byte struct pages exactly as the chosen kernel dialect lays them out (include/linux/
mm_types.h, page-flags.h), with numpy over whole pfn arrays (no per-page Python loops).

Realism details that a scanner must survive: zone bits in the top of page->flags, LRU list
pointers in the lru word (even, so not a tail marker), TAIL_MAPPING (0xdead000000000400) in
the mapping word of compound tails, _entire_mapcount = -1 and _folio_nr_pages in the first
tail on 6.6+, slab.slabs (odd) overlaying page.mapping on 6.2+.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from tests.builders.dialects import (
    COMPOUND_PAGE_DTOR,
    HUGETLB_PAGE_DTOR,
    TRANSHUGE_PAGE_DTOR,
    Dialect,
)

__all__ = (
    "KIND_PROPS",
    "PageKind",
    "Role",
    "StructPageEncoder",
    "kind_table",
)

SIZE_PAGE = 64
TAIL_MAPPING = 0xDEAD000000000400  # (void *)0x400 + POISON_POINTER_DELTA
ZONES_PGSHIFT = 62  # ZONES_WIDTH = 2 at the top of page->flags (no NUMA node bits used)
ZONE_DMA, ZONE_DMA32, ZONE_NORMAL = 0, 1, 2
MAX_DMA_PFN = 0x1000  # 16 MiB
MAX_DMA32_PFN = 0x100000  # 4 GiB


class Role(enum.IntEnum):
    SINGLE = 0  # order-0 page, not part of anything
    HEAD = 1  # compound head, or first page of a buddy / unaccepted block
    TAIL = 2  # compound tail: compound_head = head | 1, never classified itself
    BLOCK = 3  # non-compound member of a buddy / unaccepted block (looks like a plain page)


class PageKind(enum.IntEnum):
    """What the builder decided a page is. Values are also the pattern tag of its data."""

    NONE = 0  # no struct page (section absent) or beyond RAM
    HOLE = 1  # struct page of a non-RAM pfn inside a present section: PG_reserved
    KERNEL = 2  # kernel image / memblock-reserved: PG_reserved
    KERNEL_META = 3  # the builder's own structures (page tables, mem_map, bitmap): PG_reserved
    KERNEL_ALLOC = 4  # page allocated by the kernel, no flags
    PGTABLE = 5  # page type "table"
    FREE = 6  # buddy: head has the buddy page type and private = order
    UNACCEPTED = 7  # 6.16+: first page of a MAX_ORDER block has the unaccepted page type
    CACHE = 8  # PG_lru, file mapping
    CACHE_PRIVATE = 9  # PG_lru | PG_private (buffer heads)
    SWAPCACHE = 10  # PG_swapcache | PG_swapbacked, not on LRU, no mapping (shmem in swap cache)
    OWNER_PRIV1 = 11  # PG_owner_priv_1 (== PG_swapcache) without PG_swapbacked: fs PG_checked
    SHMEM = 12  # PG_lru | PG_swapbacked, shmem mapping (not anon): cache
    ANON = 13  # PG_lru | PG_swapbacked, mapping = anon_vma | 1
    ANON_SWAPCACHE = 14  # anon page also in the swap cache
    ANON_KSM = 15  # mapping = stable_node | 3
    ANON_NOLRU = 16  # anon page isolated from the LRU
    MOVABLE = 17  # non-LRU movable page: mapping = movable_ops | 2 (not anon)
    SLAB = 18  # PG_slab or slab page type; mapping word may be odd on 6.2+
    HWPOISON = 19  # PG_hwpoison
    CACHE_HWPOISON = 20  # page-cache page with PG_hwpoison (cache wins at -d 2/4)
    OFFLINE = 21  # page type offline (virtio-mem, hot-unplug)
    OFFLINE_BALLOON = 22  # balloon page: offline type and mapping | 2
    KERNEL_COMPOUND = 23  # compound page of kernel memory (kept)
    ANON_THP = 24  # anonymous THP / mTHP folio
    FILE_FOLIO = 25  # large page-cache folio
    PRIVATE_FOLIO = 26  # large page-cache folio with PG_private
    HUGETLB = 27  # hugetlbfs folio in use
    HUGETLB_FREE = 28  # hugetlb folio free in the pool (still "user" for makedumpfile)
    SLAB_COMPOUND = 29  # multi-page slab
    HWPOISON_COMPOUND = 30  # compound head with PG_hwpoison
    ROM = 31  # not RAM: firmware / ROM contents in a QEMU PT_LOAD


@dataclass(frozen=True)
class KindProps:
    """Facts about a kind, used both to encode it and by the oracle."""

    flags: tuple[str, ...] = ()  # PG_* names set on the head / single page
    mapping: str = "none"  # none | file | anon | ksm | movable | slab
    compound: bool = False  # HEAD role is a compound head (PG_head)
    page_type: str | None = None  # buddy | unaccepted | offline | table | slab | hugetlb
    refcount: int = 1
    mapcount: int = -1  # when no page type
    private: str = "none"  # none | order | pointer | swap
    hugetlb: bool = False
    dtor: int = COMPOUND_PAGE_DTOR
    p_data: float = 0.8  # probability that the page holds (pattern) data


KIND_PROPS: dict[PageKind, KindProps] = {
    PageKind.NONE: KindProps(refcount=0, p_data=0.0),
    PageKind.HOLE: KindProps(flags=("PG_reserved",), p_data=0.0),
    PageKind.KERNEL: KindProps(flags=("PG_reserved",), p_data=1.0),
    PageKind.KERNEL_META: KindProps(flags=("PG_reserved",), p_data=0.0),
    PageKind.KERNEL_ALLOC: KindProps(p_data=0.9),
    PageKind.PGTABLE: KindProps(page_type="table", p_data=0.5),
    PageKind.FREE: KindProps(page_type="buddy", refcount=0, private="order", p_data=0.3),
    PageKind.UNACCEPTED: KindProps(page_type="unaccepted", refcount=0, p_data=0.0),
    PageKind.CACHE: KindProps(flags=("PG_lru", "PG_uptodate"), mapping="file", p_data=0.9),
    PageKind.CACHE_PRIVATE: KindProps(
        flags=("PG_lru", "PG_uptodate", "PG_private"), mapping="file", private="pointer"
    ),
    PageKind.SWAPCACHE: KindProps(
        flags=("PG_owner_priv_1", "PG_swapbacked", "PG_uptodate"), private="swap"
    ),
    PageKind.OWNER_PRIV1: KindProps(flags=("PG_owner_priv_1", "PG_uptodate"), mapping="none"),
    PageKind.SHMEM: KindProps(
        flags=("PG_lru", "PG_swapbacked", "PG_uptodate"), mapping="file", mapcount=0
    ),
    PageKind.ANON: KindProps(
        flags=("PG_lru", "PG_swapbacked", "PG_uptodate"), mapping="anon", mapcount=0, refcount=2
    ),
    PageKind.ANON_SWAPCACHE: KindProps(
        flags=("PG_lru", "PG_swapbacked", "PG_owner_priv_1", "PG_uptodate"),
        mapping="anon",
        mapcount=0,
        private="swap",
        refcount=3,
    ),
    PageKind.ANON_KSM: KindProps(
        flags=("PG_lru", "PG_swapbacked", "PG_uptodate"), mapping="ksm", mapcount=1, refcount=3
    ),
    PageKind.ANON_NOLRU: KindProps(
        flags=("PG_swapbacked", "PG_uptodate"), mapping="anon", mapcount=0, refcount=3
    ),
    PageKind.MOVABLE: KindProps(flags=("PG_private",), mapping="movable", private="pointer"),
    PageKind.SLAB: KindProps(flags=("PG_slab",), mapping="slab", page_type="slab"),
    PageKind.HWPOISON: KindProps(flags=("PG_hwpoison",), p_data=1.0),
    PageKind.CACHE_HWPOISON: KindProps(
        flags=("PG_lru", "PG_uptodate", "PG_hwpoison"), mapping="file"
    ),
    PageKind.OFFLINE: KindProps(page_type="offline", p_data=0.0),
    PageKind.OFFLINE_BALLOON: KindProps(page_type="offline", mapping="movable", p_data=0.0),
    PageKind.KERNEL_COMPOUND: KindProps(compound=True),
    PageKind.ANON_THP: KindProps(
        flags=("PG_lru", "PG_swapbacked", "PG_uptodate"),
        mapping="anon",
        compound=True,
        dtor=TRANSHUGE_PAGE_DTOR,
    ),
    PageKind.FILE_FOLIO: KindProps(
        flags=("PG_lru", "PG_uptodate"), mapping="file", compound=True, p_data=0.9
    ),
    PageKind.PRIVATE_FOLIO: KindProps(
        flags=("PG_lru", "PG_uptodate", "PG_private"),
        mapping="file",
        compound=True,
        private="pointer",
    ),
    PageKind.HUGETLB: KindProps(
        flags=("PG_uptodate",),
        mapping="file",
        compound=True,
        page_type="hugetlb",
        hugetlb=True,
        dtor=HUGETLB_PAGE_DTOR,
        p_data=0.6,
    ),
    PageKind.HUGETLB_FREE: KindProps(
        compound=True,
        page_type="hugetlb",
        hugetlb=True,
        dtor=HUGETLB_PAGE_DTOR,
        refcount=0,
        p_data=0.1,
    ),
    PageKind.SLAB_COMPOUND: KindProps(
        flags=("PG_slab",), mapping="slab", compound=True, page_type="slab"
    ),
    PageKind.HWPOISON_COMPOUND: KindProps(flags=("PG_hwpoison",), compound=True, p_data=1.0),
    PageKind.ROM: KindProps(refcount=0, p_data=1.0),
}

NR_KINDS = max(PageKind) + 1


def kind_table(values: Mapping[PageKind, Any], default: object, dtype: npt.DTypeLike) -> np.ndarray:
    """A lookup table indexed by PageKind value."""
    table = np.full(NR_KINDS, default, dtype=dtype)
    for kind, value in values.items():
        table[kind] = value
    return table


def _signed32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


class StructPageEncoder:
    """Encode struct pages for arbitrary pfn arrays, given the per-pfn intent arrays.

    kinds/roles/orders: per-pfn arrays (index = pfn). order_overrides: pfn -> order byte
    actually written in the first tail (to plant corrupt orders). vmemmap_base: struct page
    of pfn is at vmemmap_base + pfn * 64 (compound_head pointers use it).
    """

    def __init__(
        self,
        dialect: Dialect,
        kinds: np.ndarray,
        roles: np.ndarray,
        orders: np.ndarray,
        *,
        vmemmap_base: int,
        page_offset_base: int,
        order_overrides: dict[int, int] | None = None,
        zero_block_members: bool = False,
    ) -> None:
        self.dialect = dialect
        # struct pages of free-block members (not heads) all zero: both scans jump over
        # them from the head, and a TiB machine's mem_map then stays sparse on disk
        self.zero_block_members = zero_block_members
        self.kinds = kinds
        self.roles = roles
        self.orders = orders
        self.vmemmap_base = vmemmap_base
        self.page_offset_base = page_offset_base
        self.order_overrides = order_overrides if order_overrides is not None else {}
        self._heads: np.ndarray | None = None
        d = dialect
        flags: dict[PageKind, int] = {}
        page_type: dict[PageKind, int] = {}
        mapcount: dict[PageKind, int] = {}
        for kind, props in KIND_PROPS.items():
            value = 0
            for name in props.flags:
                if name == "PG_slab" and d.slab_encoding != "pg_slab":
                    continue
                value |= d.flag(name)
            flags[kind] = value
            mapcount[kind] = props.mapcount
            pt = props.page_type
            if pt == "slab" and d.slab_encoding == "pg_slab":
                pt = None
            if pt == "hugetlb" and d.hugetlb_encoding != "page_type":
                pt = None
            if pt is not None and pt in d.page_types:
                page_type[kind] = d.page_types[pt]
        self._flags = kind_table(flags, 0, np.uint64)
        self._compound = kind_table({k: p.compound for k, p in KIND_PROPS.items()}, False, np.bool_)
        self._has_type = kind_table(dict.fromkeys(page_type, True), False, np.bool_)
        self._type_value = kind_table(page_type, 0, np.int64)
        self._mapcount = kind_table(mapcount, -1, np.int64)
        self._refcount = kind_table({k: p.refcount for k, p in KIND_PROPS.items()}, 1, np.int64)
        self._mapping_style = {
            style: kind_table({k: p.mapping == style for k, p in KIND_PROPS.items()}, False, bool)
            for style in ("file", "anon", "ksm", "movable", "slab")
        }
        self._private_style = {
            style: kind_table({k: p.private == style for k, p in KIND_PROPS.items()}, False, bool)
            for style in ("order", "pointer", "swap")
        }
        self._lru = kind_table(
            {k: "PG_lru" in p.flags for k, p in KIND_PROPS.items()} | {PageKind.FREE: True},
            False,
            bool,
        )
        self._dtor = kind_table({k: p.dtor for k, p in KIND_PROPS.items()}, 1, np.uint8)
        self._hugetlb = kind_table({k: p.hugetlb for k, p in KIND_PROPS.items()}, False, bool)

    # -- helpers -----------------------------------------------------------------------
    @property
    def head_pfns(self) -> np.ndarray:
        """Sorted pfns whose role is HEAD (compound heads and block heads)."""
        if self._heads is None:
            self._heads = np.flatnonzero(self.roles == Role.HEAD)
        return self._heads

    def invalidate(self) -> None:
        self._heads = None

    def head_of(self, pfns: np.ndarray) -> np.ndarray:
        """The head pfn of each tail pfn (the last HEAD at or before it)."""
        heads = self.head_pfns
        idx = np.searchsorted(heads, pfns, side="right") - 1
        return np.where(idx >= 0, heads[np.maximum(idx, 0)], 0)

    def page_vaddr(self, pfns: np.ndarray) -> np.ndarray:
        return np.uint64(self.vmemmap_base) + pfns.astype(np.uint64) * np.uint64(SIZE_PAGE)

    # -- encoding ----------------------------------------------------------------------
    def encode(self, pfns: np.ndarray) -> np.ndarray:
        """struct pages for the given pfns: uint8 array of shape (len(pfns), 64)."""
        d = self.dialect
        off = d.offsets
        pfns = np.asarray(pfns, dtype=np.int64)
        n = len(pfns)
        out = np.zeros((n, SIZE_PAGE), dtype=np.uint8)
        if n == 0:
            return out
        kinds = self.kinds[pfns]
        roles = self.roles[pfns]
        orders = self.orders[pfns].astype(np.int64)
        upfns = pfns.astype(np.uint64)
        is_tail = roles == Role.TAIL
        is_block = roles == Role.BLOCK
        is_head = roles == Role.HEAD
        lead = ~is_tail & ~is_block  # singles and heads carry the kind's own fields
        compound_head = is_head & self._compound[kinds]

        def u64(offset: int) -> np.ndarray:
            return out[:, offset : offset + 8].view("<u8").reshape(n)

        def i32(offset: int) -> np.ndarray:
            return out[:, offset : offset + 4].view("<i4").reshape(n)

        # page->flags: zone bits everywhere, kind flags on singles/heads, PG_head on heads
        zone = np.where(
            pfns < MAX_DMA_PFN, ZONE_DMA, np.where(pfns < MAX_DMA32_PFN, ZONE_DMA32, ZONE_NORMAL)
        ).astype(np.uint64)
        flags = zone << np.uint64(ZONES_PGSHIFT)
        flags |= np.where(lead, self._flags[kinds], np.uint64(0))
        flags |= np.where(compound_head, np.uint64(d.pg_head_mask), np.uint64(0))
        u64(off["flags"])[:] = flags

        # lru / compound_head word: list pointers (even) for LRU and buddy pages
        listed = lead & self._lru[kinds]
        neighbour = self.page_vaddr(pfns + 1) + np.uint64(off["lru"])
        u64(off["lru"])[:] = np.where(listed, neighbour, np.uint64(0))
        u64(off["lru"] + 8)[:] = np.where(listed, neighbour + np.uint64(0x40), np.uint64(0))

        # mapping
        mapping = np.zeros(n, dtype=np.uint64)
        obj = (
            np.uint64(self.page_offset_base)
            + ((upfns >> np.uint64(9)) % np.uint64(4093)) * np.uint64(0x2C0)
            + np.uint64(0x1_0000_0000)
        )
        ms = self._mapping_style
        mapping = np.where(lead & ms["file"][kinds], obj, mapping)
        mapping = np.where(lead & ms["anon"][kinds], obj | np.uint64(1), mapping)
        mapping = np.where(lead & ms["ksm"][kinds], obj | np.uint64(3), mapping)
        mapping = np.where(lead & ms["movable"][kinds], obj | np.uint64(2), mapping)
        if d.slab_mapping_may_be_odd:
            # slab.slabs / counters overlay page.mapping since 6.2: odd values happen
            slab_word = (upfns % np.uint64(61)) * np.uint64(2) + np.uint64(1)
        else:
            slab_word = obj  # slab_cache pointer (<= 6.1)
        mapping = np.where(lead & ms["slab"][kinds], slab_word, mapping)
        u64(off["mapping"])[:] = mapping
        u64(off["index"])[:] = np.where(
            lead & (ms["file"][kinds] | ms["anon"][kinds]), upfns & np.uint64(0xFFFFF), 0
        )

        # private
        ps = self._private_style
        private = np.zeros(n, dtype=np.uint64)
        private = np.where(lead & ps["order"][kinds], orders.astype(np.uint64), private)
        private = np.where(lead & ps["pointer"][kinds], obj + np.uint64(0x80), private)
        private = np.where(
            lead & ps["swap"][kinds], (upfns << np.uint64(8)) | np.uint64(0x3E), private
        )
        u64(off["private"])[:] = private

        # _mapcount (page_type) and _refcount
        mapcount = np.where(
            lead & self._has_type[kinds], self._type_value[kinds], self._mapcount[kinds]
        )
        mapcount = np.where(lead, mapcount, -1)
        i32(off["_mapcount"])[:] = mapcount.astype(np.int32)
        refcount = np.where(lead, self._refcount[kinds], 0)
        i32(off["_refcount"])[:] = refcount.astype(np.int32)

        # compound tails
        if is_tail.any():
            self._encode_tails(out, pfns, is_tail, u64)
        if self.zero_block_members:
            out[is_block] = 0
        return out

    def _encode_tails(self, out: np.ndarray, pfns: np.ndarray, is_tail: np.ndarray, u64) -> None:  # type: ignore[no-untyped-def]
        d = self.dialect
        off = d.offsets
        n = len(pfns)
        tail_idx = np.flatnonzero(is_tail)
        tails = pfns[tail_idx]
        heads = self.head_of(tails)
        marker = self.page_vaddr(heads) | np.uint64(1)
        ch = u64(off["compound_head"])
        ch[tail_idx] = marker
        first = tails == heads + 1
        later_idx = tail_idx[~first]
        u64(off["mapping"])[later_idx] = np.uint64(TAIL_MAPPING)
        first_idx = tail_idx[first]
        if len(first_idx) == 0:
            return
        head_pfns = heads[first]
        head_kinds = self.kinds[head_pfns]
        order = self.orders[head_pfns].astype(np.int64)
        if self.order_overrides:
            for j, hp in enumerate(head_pfns.tolist()):
                if hp in self.order_overrides:
                    order[j] = self.order_overrides[hp]
        hugetlb = self._hugetlb[head_kinds]
        nr_pages = np.left_shift(np.int64(1), np.minimum(order, 62))
        if d.order_encoding in ("compound", "folio"):
            out[first_idx, d.compound_dtor_offset] = self._dtor[head_kinds]
            out[first_idx, d.compound_order_offset] = (order & 0xFF).astype(np.uint8)
            # compound_mapcount = -1 at 20, compound_nr at 28 (mm_types.h, 6.1)
            out[first_idx, 20:24] = 0xFF
            out[first_idx, 28:32] = (
                (nr_pages & 0xFFFFFFFF).astype("<u4").view(np.uint8).reshape(-1, 4)
            )
        else:
            # folio._flags_1: order in the low byte (+ PG_hugetlb on 6.6 - 6.8)
            flags1 = u64(off["flags"])
            value = flags1[first_idx] | (order & 0xFF).astype(np.uint64)
            if d.hugetlb_encoding == "pg_hugetlb":
                value |= np.where(hugetlb, np.uint64(d.flag("PG_hugetlb")), np.uint64(0))
            flags1[first_idx] = value
            # _entire_mapcount = -1 at 16, _folio_nr_pages at 28 (mm_types.h, 6.6)
            out[first_idx, 16:20] = 0xFF
            out[first_idx, 28:32] = (
                (nr_pages & 0xFFFFFFFF).astype("<u4").view(np.uint8).reshape(-1, 4)
            )
        del n
