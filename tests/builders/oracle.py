"""The expected answer: makedumpfile's page exclusion, computed from the builder's intent.

Reference: makedumpfile __exclude_unnecessary_pages (first match wins), its compound
order and hugetlb tests, get_max_mapnr (which pfns are scanned) and create_1st_bitmap. The
input is what the builder *decided* each pfn is (PageKind, Role, order), never the bytes
it wrote, and never cdbdump's scanner.

Semantics reproduced (makedumpfile __exclude_unnecessary_pages, exclude_range,
create_2nd_bitmap, exclude_nodata_pages, write_kdump_pages_cyclic):

* The mem_map scan runs iff the level has CACHE, CACHE_PRI or USER, or NUMBER(PG_hwpoison)
  exists, or the level has FREE (the buddy method is always available here).
* Only pfns < max_mapnr of sections with a mem_map whose page address lies in the
  file-backed part of some PT_LOAD are classified; compound tails are skipped.
* Decision order: buddy (order >= LENGTH(zone.free_area) -> warning, kept), unaccepted
  (2^(LENGTH-1) pages), non-private cache, cache (private or not), user (anon or hugetlb),
  hwpoison, offline. Cache/user/hwpoison/offline clear 2^order pages for a compound head.
* The order of a compound head is the encoded order unless it is >= 64 or the head is not
  aligned to it (then 0); a head that is entry 511 of the 512-struct-page buffer
  (pfn % 512 == 511) reads neither order nor hugetlb marker (order 0, not hugetlb).
* Excluding n > 1 pages skips the scan over them, but only inside the section being
  scanned (the next section's scan starts at its first pfn again).
* Counters grow for every bit cleared below max_mapnr, set or not (holes count too).
  Assumes one cycle (max_mapnr <= 32 Mi pfns = 128 GiB).
* 2nd bitmap (kdump format) = 1st bitmap minus cleared pfns minus "no data" pages (pages
  beyond p_filesz of a PT_LOAD). Zero pages stay set; they are counted (level & 1) among
  the remaining dumpable pages whose content is all zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cdbdump.mm.counts import PageCounts
from cdbdump.mm.levels import DumpLevel
from tests.builders.structpage import KIND_PROPS, PageKind, Role, kind_table

__all__ = ("Classifier", "Decision")

SECTION_PFNS = 1 << 15
PGMM_CACHED = 512


class Decision:
    KEEP = 0
    CACHE = 1
    CACHE_PRIVATE = 2
    USER = 3
    FREE = 4
    HWPOISON = 5
    OFFLINE = 6
    NAMES = ("keep", "cache", "cache_private", "user", "free", "hwpoison", "offline")


def _table(pred: object) -> np.ndarray:
    return kind_table({k: bool(pred(k, p)) for k, p in KIND_PROPS.items()}, False, bool)  # type: ignore[operator]


_IS_LRU = _table(lambda k, p: "PG_lru" in p.flags)
_IS_SWAPCACHE = _table(lambda k, p: "PG_owner_priv_1" in p.flags)
_IS_SWAPBACKED = _table(lambda k, p: "PG_swapbacked" in p.flags)
_IS_PRIVATE = _table(lambda k, p: "PG_private" in p.flags)
_IS_ANON_MAPPING = _table(lambda k, p: p.mapping in ("anon", "ksm"))
_IS_SLAB = _table(lambda k, p: k in (PageKind.SLAB, PageKind.SLAB_COMPOUND))
_IS_HWPOISON = _table(lambda k, p: "PG_hwpoison" in p.flags)
_IS_OFFLINE = _table(lambda k, p: p.page_type == "offline")
_IS_HUGETLB = _table(lambda k, p: p.hugetlb)
_IS_COMPOUND = _table(lambda k, p: p.compound)


@dataclass
class Classifier:
    """Per-pfn intent arrays plus what VMCOREINFO exports, ready to answer per dump level."""

    kinds: np.ndarray  # uint8 PageKind per pfn
    roles: np.ndarray  # uint8 Role per pfn
    orders: np.ndarray  # uint8 layout order of heads
    order_overrides: dict[int, int]  # head pfn -> order byte written in the first tail
    free_area_length: int  # LENGTH(zone.free_area)
    has_hwpoison: bool  # NUMBER(PG_hwpoison) exported
    has_offline: bool  # NUMBER(PAGE_OFFLINE_MAPCOUNT_VALUE) exported
    has_hugetlb_marker: bool  # HUGETLB_PAGE_DTOR / PG_hugetlb / PAGE_HUGETLB_... exported
    has_unaccepted: bool  # NUMBER(PAGE_UNACCEPTED_MAPCOUNT_VALUE) exported

    # -- per-object decisions -------------------------------------------------------------
    def decisions(
        self, level: int, pfns: np.ndarray, *, kernel_view: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """(decision, nr_pages) for the given head/single pfns at this level.

        kernel_view: the panicking kernel's own classification (RFC bitmap): true orders,
        no makedumpfile artefacts, hwpoison always known.
        """
        level = int(level)
        kinds = self.kinds[pfns]
        roles = self.roles[pfns]
        layout_order = self.orders[pfns].astype(np.int64)
        head = roles == Role.HEAD
        compound = head & _IS_COMPOUND[kinds]

        order = layout_order.copy()
        hugetlb = _IS_HUGETLB[kinds] & compound & self.has_hugetlb_marker
        if not kernel_view:
            for i in np.flatnonzero(compound).tolist():
                pfn = int(pfns[i])
                if pfn in self.order_overrides:
                    order[i] = self.order_overrides[pfn]
            bad = (order >= 64) | ((pfns & ((1 << np.minimum(order, 62)) - 1)) != 0)
            order = np.where(bad, 0, order)
            last_in_buffer = (pfns % PGMM_CACHED) == PGMM_CACHED - 1
            order = np.where(last_in_buffer, 0, order)
            hugetlb &= ~last_in_buffer
        else:
            hugetlb = _IS_HUGETLB[kinds] & compound
        order = np.where(compound, order, 0)

        slab = _IS_SLAB[kinds]
        buddy = head & (kinds == PageKind.FREE) & ~slab
        unaccepted = head & (kinds == PageKind.UNACCEPTED) & self.has_unaccepted
        cache = _IS_LRU[kinds] | (_IS_SWAPCACHE[kinds] & _IS_SWAPBACKED[kinds])
        private = _IS_PRIVATE[kinds]
        anon = _IS_ANON_MAPPING[kinds] & ~slab
        hwpoison = _IS_HWPOISON[kinds] & (self.has_hwpoison or kernel_view)
        offline = _IS_OFFLINE[kinds] & ~slab & self.has_offline

        free_lvl = bool(level & DumpLevel.FREE)
        bad_free = buddy & (layout_order >= self.free_area_length)
        conds = [
            free_lvl & buddy & bad_free,
            free_lvl & buddy,
            free_lvl & unaccepted,
            bool(level & DumpLevel.CACHE) & cache & ~private & ~anon,
            bool(level & DumpLevel.CACHE_PRI) & cache & ~anon & private,
            bool(level & DumpLevel.CACHE_PRI) & cache & ~anon,
            bool(level & DumpLevel.USER) & (anon | hugetlb),
            hwpoison,
            offline,
        ]
        choices = [
            Decision.KEEP,
            Decision.FREE,
            Decision.FREE,
            Decision.CACHE,
            Decision.CACHE_PRIVATE,
            Decision.CACHE,
            Decision.USER,
            Decision.HWPOISON,
            Decision.OFFLINE,
        ]
        decision = np.select(conds, choices, Decision.KEEP).astype(np.int8)
        nr = np.left_shift(np.int64(1), order)
        nr = np.where(buddy, np.left_shift(np.int64(1), np.minimum(layout_order, 62)), nr)
        nr = np.where(unaccepted & ~buddy, np.int64(1) << np.int64(self.free_area_length - 1), nr)
        return decision, nr

    # -- whole-machine exclusion ----------------------------------------------------------
    def exclude(
        self,
        level: int,
        scanned: np.ndarray,
        limit: int,
        *,
        kernel_view: bool = False,
        start: int = 0,
    ) -> tuple[np.ndarray, PageCounts]:
        """Cleared pfns (bool[limit - start], from pfn ``start``) and counters, scanning
        the pfns where scanned is True.

        scanned: bool per pfn of [start, limit) = has a mem_map, is in a file-backed
        PT_LOAD part. A window [start, limit) must not cut an object in two.
        """
        size = limit - start
        cleared = np.zeros(size, dtype=bool)
        counts = PageCounts()
        roles = self.roles[start:limit]
        candidates = np.flatnonzero(scanned[:size] & (roles != Role.TAIL)) + start
        if len(candidates) == 0:
            return cleared, counts
        decision, nr = self.decisions(level, candidates, kernel_view=kernel_view)
        excluded = decision != Decision.KEEP
        pfns = candidates[excluded]
        decision = decision[excluded]
        nr = nr[excluded]
        multi = nr > 1
        swallowed = np.zeros(size, dtype=bool)
        multi_idx = np.flatnonzero(multi)
        effective_multi = np.zeros(len(pfns), dtype=bool)
        covered_until = -1
        cur_section = -1
        for i in multi_idx.tolist():
            first = int(pfns[i])
            section = first // SECTION_PFNS
            if section == cur_section and first < covered_until:
                # makedumpfile's scan jumps over the pages it just excluded; the kernel
                # walks objects with their true sizes, which never overlap
                assert not kernel_view, f"kernel objects overlap at pfn {first:#x}"
                continue  # skipped: inside an earlier excluded range of the same section
            effective_multi[i] = True
            end = first + int(nr[i])
            covered_until = end
            cur_section = section
            sec_end = (section + 1) * SECTION_PFNS
            swallowed[first + 1 - start : min(end, sec_end, limit) - start] = True
        single_ok = ~multi & ~swallowed[pfns - start]
        per_class = np.zeros(7, dtype=np.int64)
        single_pfns = pfns[single_ok]
        cleared[single_pfns - start] = True
        np.add.at(per_class, decision[single_ok].astype(np.int64), 1)
        for i in np.flatnonzero(effective_multi).tolist():
            first = int(pfns[i])
            end = min(first + int(nr[i]), limit)
            cleared[first - start : end - start] = True
            per_class[decision[i]] += end - first
        counts.cache = int(per_class[Decision.CACHE])
        counts.cache_private = int(per_class[Decision.CACHE_PRIVATE])
        counts.user = int(per_class[Decision.USER])
        counts.free = int(per_class[Decision.FREE])
        counts.hwpoison = int(per_class[Decision.HWPOISON])
        counts.offline = int(per_class[Decision.OFFLINE])
        return cleared, counts
