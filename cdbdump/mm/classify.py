"""Chunks of struct page → makedumpfile's exclusion decisions, vectorised.

reference: makedumpfile __exclude_unnecessary_pages (makedumpfile.c). For each
pfn of a section's mem_map whose page frame is in the dump, makedumpfile walks
an if/else chain; the first row that matches decides, tails of compound pages
are skipped (their head decides for the whole folio), and a decision covering
n > 1 pages clears [pfn, pfn + n) and skips the loop past it. This module
expresses that chain as the ordered DECISION_TABLE and evaluates it for a
whole window of struct pages with numpy, then replays the skip-ahead
semantics exactly (including ranges that run into the next window).
"""

from __future__ import annotations

import enum
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from cdbdump.errors import MissingVmcoreInfoKey
from cdbdump.mm.counts import PageCounts
from cdbdump.mm.levels import DumpLevel
from cdbdump.mm.pageflags import HugetlbTest, OrderSource, PageDialect, flag_test_mask

__all__ = ("DECISION_TABLE", "ChunkClassifier", "Columns", "Decision", "PageClass", "Row",
           "WindowResult")

Bools = npt.NDArray[np.bool_]
I64 = npt.NDArray[np.int64]
U32 = npt.NDArray[np.uint32]
I8 = npt.NDArray[np.int8]

# makedumpfile reads struct pages PGMM_CACHED at a time into a buffer indexed
# by pfn % PGMM_CACHED and never reads the first tail of a head in the last
# slot: "The last pfn of the mem_map cache must not be compound head page".
PGMM_CACHED = 512
_MAX_SHIFT = 62  # 1 << 62 pages is "to the end of memory" after clipping
# struct pages per block of the column pass: 512 KiB of 64-byte struct pages, in L2
_COLUMN_BLOCK = 8192


class PageClass(enum.IntEnum):
    """Decision for one struct page (the row of DECISION_TABLE that matched)."""

    KEEP = 0
    FREE = 1
    UNACCEPTED = 2
    CACHE = 3
    CACHE_PRIVATE = 4  # -d 4 row: counted private or not by PG_private
    USER = 5
    HWPOISON = 6
    OFFLINE = 7


class Row(NamedTuple):
    """One row of makedumpfile's if/else chain."""

    page_class: PageClass
    level: DumpLevel | None  # the -d bit that enables the row; None: always
    pages: str  # how many pages the decision covers
    reference: str


# reference: makedumpfile __exclude_unnecessary_pages; first match wins.
# Row 0 (compound_head & 1: a tail page) is applied before the table: tails
# are never classified themselves.
DECISION_TABLE: tuple[Row, ...] = (
    Row(PageClass.FREE, DumpLevel.FREE, "2^private",
        "page_is_buddy_v3: !isSlab && _mapcount == PAGE_BUDDY_MAPCOUNT_VALUE; "
        "private >= LENGTH(zone.free_area) keeps the page"),
    Row(PageClass.UNACCEPTED, DumpLevel.FREE, "2^(LENGTH(zone.free_area) - 1)",
        "_mapcount == PAGE_UNACCEPTED_MAPCOUNT_VALUE (makedumpfile c1a9301)"),
    Row(PageClass.CACHE, DumpLevel.CACHE, "2^order",
        "is_cache_page && !isPrivate && !isAnon"),
    Row(PageClass.CACHE_PRIVATE, DumpLevel.CACHE_PRI, "2^order",
        "is_cache_page && !isAnon (pfn_cache_private if isPrivate else pfn_cache)"),
    Row(PageClass.USER, DumpLevel.USER, "2^order", "isAnon || isHugetlb(compound_dtor)"),
    Row(PageClass.HWPOISON, None, "2^order", "isHWPOISON: test_bit(PG_hwpoison)"),
    Row(PageClass.OFFLINE, None, "2^order",
        "isOffline: !isSlab && _mapcount == PAGE_OFFLINE_MAPCOUNT_VALUE"),
)

# PageCounts field of each class; CACHE_PRIVATE is resolved per page.
_COUNTER_NAMES = ("", "free", "free", "cache", "cache_private", "user", "hwpoison", "offline")
_NR_COUNTERS = len(_COUNTER_NAMES)
# numpy scalars: comparing an int8 array with an IntEnum member goes through int64
_KEEP, _FREE, _UNACCEPTED = (np.int8(c) for c in (PageClass.KEEP, PageClass.FREE,
                                                  PageClass.UNACCEPTED))


class WindowResult(NamedTuple):
    """What one window of struct pages decided."""

    cleared: Bools  # pfns of the window to clear from the 2nd bitmap
    beyond: list[tuple[int, int]]  # [start, end) pfns past the window to clear too


class Decision(NamedTuple):
    """What the rows decided for one window, before the skip-ahead (ChunkClassifier.decide).

    Holds no reference to the window's struct page bytes, so their buffer can be
    reused as soon as it is made.
    """

    code: npt.NDArray[np.int8]  # PageClass of each pfn (KEEP where no row matched)
    exponent: I8  # the decision covers 2^exponent pages (at most _MAX_SHIFT)
    nr_invalid_free: int = 0  # buddy pages kept for an invalid free order
    first_invalid_free_pfn: int = -1


class Columns(NamedTuple):
    """The words of a window of struct pages that the rows test, as contiguous arrays.

    One strided pass over the window fills all of them (ChunkClassifier.columns),
    block by block so that each block of struct pages is read from memory once;
    every test after that runs over these small arrays, not the window.
    """

    low: U32  # flags, bits 0..31
    high: U32 | None  # flags, bits 32..63: only when a tested bit lies there
    mapcount: U32 | None  # _mapcount / page_type
    odd_mapping: Bools  # mapping & PAGE_MAPPING_ANON
    tail: Bools | None  # compound_head & 1: a tail page


class _Problems:
    __slots__ = ("first_invalid_free_pfn", "invalid_free_order")

    def __init__(self) -> None:
        self.invalid_free_order = 0
        self.first_invalid_free_pfn = -1


class ChunkClassifier:
    """Applies DECISION_TABLE to consecutive windows of one dump's mem_map.

    Windows must be fed in ascending pfn order. State carried between them:
    the counters, and the skip-ahead of a range that runs past a window end.
    """

    def __init__(
        self,
        dialect: PageDialect,
        level: DumpLevel,
        *,
        max_mapnr: int,
        pages_per_section: int,
    ) -> None:
        self.dialect = dialect
        self.level = level
        self.max_mapnr = max_mapnr
        self.pages_per_section = pages_per_section
        self.counts = PageCounts()
        self._problems = _Problems()
        self._shadow_until = 0  # pfns below this (in the same section) are skipped
        self._rows = self._enabled_rows()
        # the values a decision can take (a -d 4 page without PG_private is CACHE)
        self._values = sorted({int(r) for r in self._rows}
                              | ({int(PageClass.CACHE)} if PageClass.CACHE_PRIVATE in self._rows
                                 else set()))
        self._dtype = dialect.layout.dtype()
        d = dialect
        masks = [flag_test_mask(nr) for nr in (d.pg_lru, d.pg_private, d.pg_swapcache,
                                               d.pg_swapbacked, d.pg_hwpoison) if nr is not None]
        masks += [1 << nr for nr in (d.pg_slab, d.pg_hugetlb) if nr is not None]
        masks += [d.pg_head_mask or 0]
        self._need_high = any(m >> 32 for m in masks)

    # -- setup ----------------------------------------------------------------------

    def _enabled_rows(self) -> tuple[PageClass, ...]:
        d = self.dialect
        rows = []
        for row in DECISION_TABLE:
            if row.level is not None and not self.level & row.level:
                continue
            if row.page_class is PageClass.FREE and not d.has_buddy_method:
                continue  # the free-list walk (scan.py) handles free pages instead
            if row.page_class is PageClass.UNACCEPTED:
                if d.unaccepted_type is None:
                    continue
                if d.free_area_length is None:
                    raise MissingVmcoreInfoKey("LENGTH(zone.free_area)",
                                               "excluding unaccepted memory")
            if row.page_class in (PageClass.CACHE, PageClass.CACHE_PRIVATE):
                d.require_cache_flags()
            if row.page_class is PageClass.HWPOISON and d.pg_hwpoison is None:
                continue
            if row.page_class is PageClass.OFFLINE and d.offline_type is None:
                continue
            rows.append(row.page_class)
        return tuple(rows)

    @property
    def dtype(self) -> np.dtype[np.void]:
        return self._dtype

    @property
    def problems(self) -> list[str]:
        out = []
        if self._problems.invalid_free_order:
            out.append(
                f"{self._problems.invalid_free_order} buddy pages with an invalid free order "
                f"(first at pfn {self._problems.first_invalid_free_pfn:#x}) were kept, "
                "as makedumpfile does (\"WARNING: Invalid free page order\")"
            )
        return out

    # -- one window ---------------------------------------------------------------------

    def classify(
        self,
        start_pfn: int,
        raw: npt.NDArray[np.uint8],
        candidate: Bools,
        readable: Bools,
    ) -> WindowResult:
        """Decide a window of struct pages for pfns [start_pfn, start_pfn + n).

        ``raw`` holds the n struct pages (n * SIZE(page) bytes); ``candidate``
        marks pfns makedumpfile would look at (page frame in the dump and
        struct page readable); ``readable`` marks struct pages whose bytes are
        valid (a head's first tail is only used when readable).
        """
        return self.apply(start_pfn, self.decide(start_pfn, raw, candidate, readable))

    def decide(
        self,
        start_pfn: int,
        raw: npt.NDArray[np.uint8],
        candidate: Bools,
        readable: Bools,
        columns: Columns | None = None,
    ) -> Decision:
        """The first half of classify: the rows' decisions for one window.

        Depends on nothing but its arguments and the dialect, so windows may be
        decided on several threads at once (numpy releases the GIL); their
        Decisions must then be applied in ascending pfn order. ``columns``, the
        window's Columns when the caller made them already (on another thread).
        """
        n = candidate.size
        size = self.dialect.layout.size
        cols = self.columns(raw) if columns is None else columns
        return self._decide(start_pfn, cols, raw.view(self._dtype), raw.reshape(n, size),
                            candidate, readable)

    def columns(self, raw: npt.NDArray[np.uint8]) -> Columns:
        """The Columns of a window of struct pages (``raw``: n * SIZE(page) bytes)."""
        layout = self.dialect.layout
        size = layout.size
        n = raw.size // size

        def word(offset: int, dtype: type[np.uint32] | type[np.uint8]
                 ) -> npt.NDArray[np.uint32] | npt.NDArray[np.uint8]:
            return np.ndarray((n,), dtype=np.dtype(dtype).newbyteorder("<"), buffer=raw,
                              offset=offset, strides=(size,))

        cols = Columns(
            low=np.empty(n, dtype=np.uint32),
            high=np.empty(n, dtype=np.uint32) if self._need_high else None,
            mapcount=np.empty(n, dtype=np.uint32) if layout.mapcount is not None else None,
            odd_mapping=np.empty(n, dtype=np.bool_),
            tail=np.empty(n, dtype=np.bool_) if layout.compound_head is not None else None,
        )
        one = np.uint8(1)
        pairs: list[tuple[npt.NDArray[np.generic], npt.NDArray[np.generic], bool]] = [
            (cols.low, word(layout.flags, np.uint32), False),
            (cols.odd_mapping.view(np.uint8), word(layout.mapping, np.uint8), True),
        ]
        if cols.high is not None:
            pairs.append((cols.high, word(layout.flags + 4, np.uint32), False))
        if cols.mapcount is not None and layout.mapcount is not None:
            pairs.append((cols.mapcount, word(layout.mapcount, np.uint32), False))
        if cols.tail is not None and layout.compound_head is not None:
            pairs.append((cols.tail.view(np.uint8), word(layout.compound_head, np.uint8), True))
        for lo in range(0, n, _COLUMN_BLOCK):
            hi = min(n, lo + _COLUMN_BLOCK)
            for out, src, low_bit in pairs:
                if low_bit:
                    np.bitwise_and(src[lo:hi], one, out=out[lo:hi])
                else:
                    np.copyto(out[lo:hi], src[lo:hi])
        return cols

    def apply(self, start_pfn: int, decision: Decision) -> WindowResult:
        """The second half of classify: skip-ahead, counting; windows in pfn order."""
        if decision.nr_invalid_free:
            self._note_invalid_free(decision.first_invalid_free_pfn, decision.nr_invalid_free)
        return self._apply(start_pfn, decision)

    def _decide(
        self,
        start_pfn: int,
        cols: Columns,
        rec: npt.NDArray[np.void],
        raw2d: npt.NDArray[np.uint8],
        candidate: Bools,
        readable: Bools,
    ) -> Decision:
        d = self.dialect
        n = candidate.size
        mapcount = cols.mapcount if cols.mapcount is not None else np.zeros(n, dtype=np.uint32)

        # Row 0: tail pages are skipped; only the head's decision covers them.
        cand = candidate
        if cols.tail is not None:
            cand = cand & ~cols.tail

        def test_bit(nr: int) -> Bools:
            return _flag_set(cols, flag_test_mask(nr))

        slab = np.zeros(n, dtype=np.bool_)
        if d.slab_type is not None:
            slab |= mapcount == np.uint32(d.slab_type)
        if d.pg_slab is not None:
            # isSlab uses a real shift: flags & (1UL << NUMBER(PG_slab))
            slab |= _flag_set(cols, 1 << d.pg_slab)
        not_slab = ~slab
        # isAnon: PAGE_MAPPING_ANON and not a slab page; since v6.2 slab.slabs
        # overlays page.mapping and may be odd (makedumpfile commit 5f17bdd, 1.7.3).
        anon = cols.odd_mapping & not_slab

        order, hugetlb = self._compound(start_pfn, cols, rec, mapcount, raw2d, cand, readable)

        is_private: Bools | None = None
        cache: Bools | None = None
        conds: list[tuple[Bools, int]] = []
        for page_class in self._rows:
            if page_class is PageClass.FREE:
                assert d.buddy_type is not None
                cond = (mapcount == np.uint32(d.buddy_type)) & not_slab
            elif page_class is PageClass.UNACCEPTED:
                assert d.unaccepted_type is not None
                cond = mapcount == np.uint32(d.unaccepted_type)
            elif page_class in (PageClass.CACHE, PageClass.CACHE_PRIVATE):
                if cache is None or is_private is None:
                    lru, priv, swapcache = d.require_cache_flags()
                    cache = (test_bit(swapcache) if d.swapcache_trusted
                             else np.zeros_like(anon))
                    if d.pg_swapbacked is not None:
                        # PG_swapcache only counts with PG_swapbacked (kernels >= 4.10)
                        cache &= test_bit(d.pg_swapbacked)
                    cache |= test_bit(lru)
                    cache &= ~anon
                    is_private = test_bit(priv)
                if page_class is PageClass.CACHE:
                    cond = cache & ~is_private
                else:
                    cond = cache
                    if PageClass.CACHE not in self._rows:
                        # the -d 4 row counts a page without PG_private as cache
                        # (pfn_cache): give those CACHE's value, which comes first
                        conds.append((cache & ~is_private, int(PageClass.CACHE)))
            elif page_class is PageClass.USER:
                cond = anon | hugetlb
            elif page_class is PageClass.HWPOISON:
                assert d.pg_hwpoison is not None
                cond = test_bit(d.pg_hwpoison)
            else:
                assert d.offline_type is not None
                cond = (mapcount == np.uint32(d.offline_type)) & not_slab
            conds.append((cond, int(page_class)))
        code = _first_match(conds, cand)

        # Pages covered by the decision: 2^exponent.
        exponent = order
        nr_invalid, first_invalid = 0, -1
        free = code == _FREE
        if d.layout.private is not None and free.any():
            private: npt.NDArray[np.uint64] = rec["private"]
            exponent = exponent.copy()
            where = np.flatnonzero(free)
            orders = private[where]
            if d.free_area_length is not None:
                bad = orders >= np.uint64(d.free_area_length)
                if bad.any():
                    # "WARNING: Invalid free page order" → continue (page kept)
                    code[where[bad]] = _KEEP
                    nr_invalid, first_invalid = int(bad.sum()), start_pfn + int(where[bad][0])
                    where, orders = where[~bad], orders[~bad]
            exponent[where] = np.minimum(orders, np.uint64(_MAX_SHIFT)).astype(np.int8)
        unaccepted = code == _UNACCEPTED
        if unaccepted.any():
            assert d.free_area_length is not None
            if exponent is order:
                exponent = exponent.copy()
            exponent[unaccepted] = min(d.free_area_length - 1, _MAX_SHIFT)
        return Decision(code, exponent, nr_invalid, first_invalid)

    def _compound(
        self,
        start_pfn: int,
        cols: Columns,
        rec: npt.NDArray[np.void],
        mapcount: npt.NDArray[np.uint32],
        raw2d: npt.NDArray[np.uint8],
        cand: Bools,
        readable: Bools,
    ) -> tuple[I8, Bools]:
        """Folio order (0 unless a valid compound head) and the hugetlb marker."""
        d = self.dialect
        n = cand.size
        order = np.zeros(n, dtype=np.int8)
        hugetlb = np.zeros(n, dtype=np.bool_)
        if d.hugetlb_test is HugetlbTest.DTOR and d.hugetlb_dtor == 0:
            hugetlb[:] = True  # compound_dtor reads 0 for every non-head page
        if d.pg_head_mask is None:
            return order, hugetlb
        if d.order_source is OrderSource.NONE and d.hugetlb_test is HugetlbTest.NONE:
            return order, hugetlb
        heads = np.flatnonzero(cand & _flag_set(cols, d.pg_head_mask))
        if heads.size == 0:
            return order, hugetlb
        pfns = heads + start_pfn
        keep = ((pfns % PGMM_CACHED) != PGMM_CACHED - 1) & (heads + 1 < n)
        heads, pfns = heads[keep], pfns[keep]
        keep = readable[heads + 1]
        heads, pfns = heads[keep], pfns[keep]
        if heads.size == 0:
            return order, hugetlb
        tails = heads + 1
        layout = d.layout
        flags: npt.NDArray[np.uint64] = rec["flags"]  # only the first tails are read

        def tail_field(offset: int) -> I64:
            value: I64 = raw2d[tails, offset].astype(np.int64)
            if layout.tail_field_width == 2:
                value |= raw2d[tails, offset + 1].astype(np.int64) << 8
            return value

        if d.order_source is OrderSource.TAIL_FLAGS:
            head_order = (flags[tails] & np.uint64(0xFF)).astype(np.int64)
        elif d.order_source is OrderSource.TAIL_FIELD:
            assert layout.tail_order is not None
            head_order = tail_field(layout.tail_order)
        else:
            head_order = np.zeros(heads.size, dtype=np.int64)

        if d.hugetlb_test is HugetlbTest.PAGE_TYPE:
            assert d.hugetlb_type is not None
            hugetlb[heads] = mapcount[heads] == np.uint32(d.hugetlb_type)
        elif d.hugetlb_test is HugetlbTest.TAIL_FLAG:
            assert d.pg_hugetlb is not None
            hugetlb[heads] = (flags[tails] & np.uint64(1 << d.pg_hugetlb)) != 0
        elif d.hugetlb_test is HugetlbTest.DTOR:
            assert layout.tail_dtor is not None
            hugetlb[heads] = tail_field(layout.tail_dtor) == d.hugetlb_dtor

        # check_order: an order >= 64 or a head not aligned to 2^order is order 0
        valid = head_order < 64
        safe = np.where(valid, head_order, 0).astype(np.uint64)
        misaligned = (pfns.astype(np.uint64) & ((np.uint64(1) << safe) - np.uint64(1))) != 0
        head_order[~valid | misaligned] = 0
        order[heads] = np.minimum(head_order, _MAX_SHIFT).astype(np.int8)
        return order, hugetlb

    def _note_invalid_free(self, pfn: int, count: int) -> None:
        if self._problems.first_invalid_free_pfn < 0:
            self._problems.first_invalid_free_pfn = pfn
        self._problems.invalid_free_order += count

    # -- skip-ahead, clearing and counting ------------------------------------------------

    def _apply(self, start_pfn: int, decided: Decision) -> WindowResult:
        code, exponent = decided.code, decided.exponent
        n = code.size
        excluded = code != _KEEP
        heads = np.flatnonzero((exponent > 0) & excluded)  # decisions covering n > 1 pages
        carry = self._shadow_until - start_pfn

        if carry <= 0 and heads.size == 0:
            self._add_counts(self._class_counts(code))
            return WindowResult(cleared=excluded, beyond=[])

        nr = np.left_shift(np.int64(1), exponent[heads].astype(np.int64))
        section_end = ((heads + start_pfn) // self.pages_per_section + 1) * \
            self.pages_per_section - start_pfn
        reach = np.minimum(heads + nr, section_end)  # where the loop resumes
        active = _active_ranges(heads, reach, max(carry, 0))
        a_heads, a_reach, a_nr = heads[active], reach[active], nr[active]

        # Pages skipped because an earlier range covers them (not the head itself).
        first = np.zeros(1, dtype=np.int64)
        shadowed = _ranges_mask(np.concatenate((first, a_heads + 1)),
                                np.concatenate((first + max(carry, 0), a_reach)), n)

        # Pages cleared: every reached decision, and the whole range of a reached head
        # (clipped at max_mapnr, the end of makedumpfile's cycle).
        ends = np.minimum(a_heads + a_nr, self.max_mapnr - start_pfn)
        cleared = _ranges_mask(a_heads, ends, n)
        cleared |= excluded & ~shadowed
        beyond = [(start_pfn + n, start_pfn + int(e)) for e in ends[ends > n].tolist()]
        if a_reach.size and int(a_reach.max()) > n:
            self._shadow_until = max(self._shadow_until, start_pfn + int(a_reach.max()))

        # Counted: one per reached decision, and the rest of the range of a reached head.
        reached: I8 = np.multiply(code.view(np.uint8), (~shadowed).view(np.uint8)).view(np.int8)
        rest = np.bincount(code[a_heads].astype(np.intp), weights=ends - a_heads - 1,
                           minlength=_NR_COUNTERS)
        self._add_counts(self._class_counts(reached) + rest.astype(np.int64))
        return WindowResult(cleared=cleared, beyond=beyond)

    def _class_counts(self, code: I8) -> npt.NDArray[np.int64]:
        """Pages of each PageClass value in ``code`` (KEEP not counted)."""
        counts = np.zeros(_NR_COUNTERS, dtype=np.int64)
        for value in self._values:
            counts[value] = np.count_nonzero(code == value)
        return counts

    def _add_counts(self, counts: npt.NDArray[np.int64]) -> None:
        values = [int(v) for v in counts.tolist()]
        c = self.counts
        c.free += values[PageClass.FREE] + values[PageClass.UNACCEPTED]
        c.cache += values[PageClass.CACHE]
        c.cache_private += values[PageClass.CACHE_PRIVATE]
        c.user += values[PageClass.USER]
        c.hwpoison += values[PageClass.HWPOISON]
        c.offline += values[PageClass.OFFLINE]


def _ranges_mask(starts: I64, ends: I64, n: int) -> Bools:
    """A mask of [0, n) true in the union of the [start, end) ranges (starts ascending).

    Overlapping ranges are merged with a running maximum of their ends; the
    mask is then written as alternating runs (np.repeat), one pass over n.
    """
    starts = np.clip(starts, 0, n)
    ends = np.maximum(np.clip(ends, 0, n), starts)
    if starts.size == 0:
        return np.zeros(n, dtype=np.bool_)
    run_end = np.maximum.accumulate(ends)
    opens = np.ones(starts.size, dtype=np.bool_)
    opens[1:] = starts[1:] > run_end[:-1]
    firsts = np.flatnonzero(opens)
    lasts = np.append(firsts[1:] - 1, starts.size - 1)
    bounds = np.empty(2 * firsts.size + 2, dtype=np.int64)
    bounds[0], bounds[-1] = 0, n
    bounds[1:-1:2] = starts[firsts]
    bounds[2:-1:2] = run_end[lasts]
    values = np.zeros(bounds.size - 1, dtype=np.bool_)
    values[1::2] = True
    mask: Bools = np.repeat(values, np.diff(bounds))
    return mask


def _first_match(conds: list[tuple[Bools, int]], cand: Bools) -> I8:
    """The value of the first true condition of each page (KEEP where none, or not cand).

    The rows' values grow with their order in DECISION_TABLE, so the first
    match is the smallest value among the true conditions: each condition
    becomes ``value`` where true and 255 where false (cond * (value + 1) - 1 in
    uint8) and is folded in with a minimum; a few passes over bytes, no masked
    stores.
    """
    acc = np.full(cand.size, 255, dtype=np.uint8)
    scratch = np.empty(cand.size, dtype=np.uint8)
    for cond, value in conds:
        np.multiply(cond.view(np.uint8), np.uint8(value + 1), out=scratch)
        np.subtract(scratch, np.uint8(1), out=scratch)
        np.minimum(acc, scratch, out=acc)
    np.add(acc, np.uint8(1), out=acc)  # no match: 255 -> 0; a match: value + 1
    np.maximum(acc, np.uint8(1), out=acc)
    np.subtract(acc, np.uint8(1), out=acc)
    np.multiply(acc, cand.view(np.uint8), out=acc)
    code: I8 = acc.view(np.int8)
    return code


def _flag_set(cols: Columns, mask: int) -> Bools:
    """flags & mask != 0 for a 64-bit mask, from the flag words of ``cols``."""
    tested: Bools = (cols.low & np.uint32(mask & 0xFFFFFFFF)) != 0
    if mask >> 32:
        assert cols.high is not None  # ChunkClassifier asks for it whenever a mask needs it
        tested |= (cols.high & np.uint32(mask >> 32)) != 0
    return tested


def _active_ranges(heads: I64, reach: I64, carry: int) -> Bools:
    """Which multi-page heads makedumpfile really reaches (not skipped over).

    Sequentially, a head is skipped when an earlier *reached* range covers it,
    and the loop then resumes at that range's ``reach``. Buddy blocks and
    folios are naturally aligned, so ranges either nest or are disjoint and a
    cumulative maximum over all ranges gives the answer; anything else (only
    corrupt struct pages) falls back to the exact sequential walk.
    """
    if heads.size == 0:
        return np.zeros(0, dtype=np.bool_)
    running = np.maximum.accumulate(reach)
    before = np.empty_like(running)
    before[0] = carry
    np.maximum(running[:-1], carry, out=before[1:])
    skipped = before > heads
    if not skipped.any() or bool(np.all(reach[skipped] <= before[skipped])):
        return ~skipped
    active = np.zeros(heads.size, dtype=np.bool_)
    resume = carry
    for k, (head, until) in enumerate(zip(heads.tolist(), reach.tolist(), strict=True)):
        if head >= resume:
            active[k] = True
            resume = until
    return active
