"""DECISION_TABLE row by row on hand-made struct page arrays.

Expected answers are worked out from makedumpfile's rules
(makedumpfile __exclude_unnecessary_pages), not from the code.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

from cdbdump.errors import BadVmcoreInfoValue, MissingVmcoreInfoKey
from cdbdump.mm.classify import DECISION_TABLE, ChunkClassifier, PageClass
from cdbdump.mm.counts import PageCounts
from cdbdump.mm.levels import DumpLevel
from cdbdump.mm.pageflags import HugetlbTest, OrderSource, PageDialect, flag_test_mask
from cdbdump.vmcore.vmcoreinfo import VmcoreInfo
from tests.unit.test_memmodel import BASE_INFO

LRU, PRIVATE, SWAPCACHE, SWAPBACKED = 1 << 4, 1 << 13, 1 << 10, 1 << 19
SLAB, HWPOISON = 1 << 9, 1 << 23
HEAD = 1 << 16
SECTION = 1 << 15


def info_of(extra: dict[str, int | str | None]) -> VmcoreInfo:
    items = dict(BASE_INFO)
    for key, value in extra.items():
        if value is None:
            items.pop(key, None)
        else:
            items[key] = value
    return VmcoreInfo.parse("".join(f"{k}={v}\n" for k, v in items.items()).encode())


class Pages:
    """n struct pages of 64 bytes, 6.1 layout; unset pages are plain in-use kernel pages."""

    def __init__(self, n: int) -> None:
        self.raw = np.zeros((n, 64), dtype=np.uint8)
        for i in range(n):
            self.set(i)

    def set(self, i: int, *, flags: int = 0, mapping: int = 0, private: int = 0,
            mapcount: int = -1, compound_head: int = 0, raw: dict[int, bytes] | None = None,
            ) -> None:
        page = bytearray(64)
        struct.pack_into("<QQ", page, 0, flags, compound_head)
        struct.pack_into("<Q", page, 24, mapping)
        struct.pack_into("<Q", page, 40, private)
        struct.pack_into("<Ii", page, 48, mapcount & 0xFFFFFFFF, 1)
        for off, data in (raw or {}).items():
            page[off : off + len(data)] = data
        self.raw[i] = np.frombuffer(bytes(page), dtype=np.uint8)

    def folio(self, head: int, order: int, *, flags: int = 0, mapping: int = 0,
              dtor: int = 1, tail_flags: int = 0, mapcount: int = -1) -> None:
        """A compound page in the 6.1 layout (order and dtor bytes in the first tail)."""
        self.set(head, flags=flags | HEAD, mapping=mapping, mapcount=mapcount)
        head_vaddr = 0xFFFFEA0000000000 + head * 64
        for t in range(1, 1 << order):
            raw = {16: bytes([dtor, order])} if t == 1 else None
            self.set(head + t, flags=tail_flags if t == 1 else 0,
                     compound_head=head_vaddr | 1, raw=raw)


def run(pages: Pages, level: int, *, info: VmcoreInfo | None = None, start_pfn: int = 0,
        candidate: np.ndarray | None = None, window: int | None = None,
        max_mapnr: int | None = None) -> tuple[np.ndarray, PageCounts, ChunkClassifier]:
    """Classify ``pages`` for pfns [start_pfn, ...); return the cleared mask over them."""
    dialect = PageDialect.from_vmcoreinfo(info or info_of({}))
    n = pages.raw.shape[0]
    classifier = ChunkClassifier(dialect, DumpLevel(level),
                                 max_mapnr=max_mapnr or start_pfn + n,
                                 pages_per_section=SECTION)
    cand = np.ones(n, dtype=np.bool_) if candidate is None else candidate
    cleared = np.zeros(n, dtype=np.bool_)
    step = window or n
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        result = classifier.classify(start_pfn + lo, pages.raw[lo:hi].reshape(-1).copy(),
                                     cand[lo:hi], np.ones(hi - lo, dtype=np.bool_))
        cleared[lo:hi] |= result.cleared
        for b_lo, b_hi in result.beyond:
            cleared[b_lo - start_pfn : b_hi - start_pfn] = True
    return cleared, classifier.counts, classifier


def pfns(mask: np.ndarray) -> list[int]:
    return np.flatnonzero(mask).tolist()


def test_table_order_matches_makedumpfile() -> None:
    assert [r.page_class for r in DECISION_TABLE] == [
        PageClass.FREE, PageClass.UNACCEPTED, PageClass.CACHE, PageClass.CACHE_PRIVATE,
        PageClass.USER, PageClass.HWPOISON, PageClass.OFFLINE,
    ]
    assert all(r.reference for r in DECISION_TABLE)


def test_plain_pages_are_kept_at_every_level() -> None:
    cleared, counts, _ = run(Pages(1024), 31)
    assert not cleared.any() and counts.total == 0


def test_buddy_block_is_freed_whole_and_skips_what_it_covers() -> None:
    p = Pages(1024)
    p.set(64, mapcount=-129, private=3)  # free block of 8 pages at pfn 64
    p.set(66, flags=LRU)  # stale flags inside the block: never classified
    p.set(80, mapcount=-129, private=0)  # an order-0 free page
    cleared, counts, _ = run(p, 16)
    assert pfns(cleared) == [*range(64, 72), 80]
    assert counts == PageCounts(free=9)
    cleared, counts, _ = run(p, 31)
    assert pfns(cleared) == [*range(64, 72), 80]
    assert counts == PageCounts(free=9)
    cleared, counts, _ = run(p, 2)  # free pages not asked for: pfn 66 is cache now
    assert pfns(cleared) == [66] and counts == PageCounts(cache=1)


def test_invalid_buddy_order_keeps_the_page_and_is_reported() -> None:
    p = Pages(64)
    p.set(0, mapcount=-129, private=11, flags=HWPOISON)  # LENGTH(zone.free_area)=11
    info = info_of({"NUMBER(PG_hwpoison)": 23})
    cleared, counts, classifier = run(p, 16, info=info)
    # "continue": the page is kept without looking at the later rows (hwpoison)
    assert not cleared.any() and counts.total == 0
    assert any("invalid free order" in msg for msg in classifier.problems)


def test_slab_page_is_never_buddy_nor_anon() -> None:
    p = Pages(64)
    p.set(1, flags=SLAB, mapcount=-129, private=2)
    p.set(2, flags=SLAB, mapping=0xFFFF888000001001)  # slab.slabs overlaying mapping (6.2)
    cleared, counts, _ = run(p, 31)
    assert not cleared.any() and counts.total == 0


def test_cache_rows_and_their_counters() -> None:
    p = Pages(64)
    p.set(1, flags=LRU, mapping=0xFFFF888012345600)  # page cache
    p.set(2, flags=LRU | PRIVATE, mapping=0xFFFF888012345600)  # with buffer heads
    p.set(3, flags=LRU, mapping=0xFFFF888012345601)  # anonymous on the LRU
    p.set(4, flags=SWAPCACHE)  # swapcache without swapbacked: not cache
    p.set(5, flags=SWAPCACHE | SWAPBACKED)  # swap cache
    p.set(6, flags=SWAPCACHE | SWAPBACKED, mapping=0xFFFF888000000003)  # KSM/anon
    cleared, counts, _ = run(p, 2)
    assert pfns(cleared) == [1, 5] and counts == PageCounts(cache=2)
    cleared, counts, _ = run(p, 4)
    assert pfns(cleared) == [1, 2, 5] and counts == PageCounts(cache=2, cache_private=1)
    cleared, counts, _ = run(p, 6)  # row 3 takes the non-private ones first
    assert pfns(cleared) == [1, 2, 5] and counts == PageCounts(cache=2, cache_private=1)
    cleared, counts, _ = run(p, 8)
    assert pfns(cleared) == [3, 6] and counts == PageCounts(user=2)
    cleared, counts, _ = run(p, 14)
    assert pfns(cleared) == [1, 2, 3, 5, 6]
    assert counts == PageCounts(cache=2, cache_private=1, user=2)


def test_swapcache_alone_counts_without_pg_swapbacked() -> None:
    p = Pages(16)
    p.set(4, flags=SWAPCACHE)
    cleared, _, _ = run(p, 2, info=info_of({"NUMBER(PG_swapbacked)": None}))
    assert pfns(cleared) == [4]


def test_folios_are_excluded_whole_tails_never_alone() -> None:
    p = Pages(2048)
    p.folio(512, 9, flags=LRU, mapping=0xFFFF888000000001)  # anon THP: 512 pages
    p.folio(1024, 9, dtor=2)  # hugetlb folio (HUGETLB_PAGE_DTOR=2), not on the LRU
    p.folio(1536, 2, flags=LRU, mapping=0xFFFF888000100000)  # file folio, order 2
    p.set(1537, flags=LRU, compound_head=(0xFFFFEA0000000000 + 1536 * 64) | 1,
          raw={16: bytes([1, 2])})  # a tail with LRU set: still only its head decides
    cleared, counts, _ = run(p, 8)
    assert pfns(cleared) == [*range(512, 1024), *range(1024, 1536)]
    assert counts == PageCounts(user=1024)
    cleared, counts, _ = run(p, 2)
    assert pfns(cleared) == list(range(1536, 1540)) and counts == PageCounts(cache=4)


def test_order_rules_alignment_and_the_512_buffer() -> None:
    p = Pages(2048)
    p.folio(4, 3, flags=LRU, mapping=0xFFFF888000100000)  # misaligned: order 0
    p.set(511, flags=LRU | HEAD, mapping=0xFFFF888000100000)  # last slot: order not read
    p.set(512, raw={16: bytes([1, 1])})
    p.set(1024, flags=LRU | HEAD, mapping=0xFFFF888000100000)  # absurd order 64
    p.set(1025, compound_head=(0xFFFFEA0000000000 + 1024 * 64) | 1, raw={16: bytes([1, 64])})
    cleared, counts, _ = run(p, 2)
    assert pfns(cleared) == [4, 511, 1024] and counts == PageCounts(cache=3)


def test_non_candidates_are_not_classified_but_ranges_cover_them() -> None:
    p = Pages(64)
    p.set(8, mapcount=-129, private=2)  # free block 8..11
    p.set(20, mapcount=-129, private=0)
    cand = np.ones(64, dtype=np.bool_)
    cand[9] = False  # inside the block: still cleared and counted
    cand[20] = False  # not in the dump: never looked at
    cleared, counts, _ = run(p, 16, candidate=cand)
    assert pfns(cleared) == [8, 9, 10, 11] and counts == PageCounts(free=4)


def test_hwpoison_and_offline_are_excluded_at_level_0() -> None:
    p = Pages(64)
    p.set(3, flags=HWPOISON)
    p.set(4, mapcount=-257)  # offline
    p.set(5, mapcount=-257, flags=SLAB)  # slab is never offline
    p.folio(8, 2, flags=HWPOISON)  # a poisoned compound head: the whole folio
    info = info_of({"NUMBER(PG_hwpoison)": 23})
    cleared, counts, _ = run(p, 0, info=info)
    assert pfns(cleared) == [3, 4, 8, 9, 10, 11]
    assert counts == PageCounts(hwpoison=5, offline=1)
    # without NUMBER(PG_hwpoison) there is no hwpoison row
    cleared, counts, _ = run(p, 0)
    assert pfns(cleared) == [4] and counts == PageCounts(offline=1)


def test_ranges_cross_windows_and_stop_at_max_mapnr() -> None:
    p = Pages(2048)
    p.set(1024, mapcount=-129, private=10)  # 1024 pages: crosses the 512-page windows
    p.set(1500, flags=LRU, mapping=0x1000)  # covered, never classified
    cleared, counts, _ = run(p, 31, window=512)
    assert pfns(cleared) == list(range(1024, 2048)) and counts == PageCounts(free=1024)
    # max_mapnr in the middle of the block: the range is clipped and so is the count
    q = Pages(1100)
    q.set(1024, mapcount=-129, private=10)
    cleared, counts, _ = run(q, 16, window=512)
    assert pfns(cleared) == list(range(1024, 1100)) and counts == PageCounts(free=76)


def test_skip_ahead_ends_at_the_section_boundary() -> None:
    # a (corrupt) free order-16 block at pfn 0 covers two sections: makedumpfile's loop
    # skips to the end of the section's mem_map and classifies the next section again
    p = Pages(2 * SECTION)
    p.set(0, mapcount=-129, private=16)
    p.set(10, flags=LRU, mapping=0x1000)  # skipped
    p.set(SECTION + 10, flags=LRU, mapping=0x1000)  # classified again, counted again
    info = info_of({"LENGTH(zone.free_area)": 20})
    cleared, counts, _ = run(p, 31, info=info, window=8192)
    assert cleared.all()
    assert counts == PageCounts(free=2 * SECTION, cache=1)


def test_overlapping_misaligned_ranges_follow_the_sequential_loop() -> None:
    p = Pages(64)
    p.set(2, mapcount=-129, private=2)  # 2..5 (misaligned, as only corruption makes)
    p.set(4, mapcount=-129, private=3)  # skipped: inside 2..5, even though it reaches 11
    p.set(8, flags=LRU, mapping=0x1000)  # so this one is classified on its own
    cleared, counts, _ = run(p, 31)
    assert pfns(cleared) == [2, 3, 4, 5, 8]
    assert counts == PageCounts(free=4, cache=1)


def _info_612(**extra: int | str | None) -> VmcoreInfo:
    def pgty(t: int) -> int:
        raw = t << 24
        return raw - (1 << 32)

    return info_of({
        "NUMBER(PG_slab)": None, "NUMBER(HUGETLB_PAGE_DTOR)": None,
        "OFFSET(page.compound_dtor)": None, "OFFSET(page.compound_order)": None,
        "NUMBER(PG_lru)": 5, "NUMBER(PG_head_mask)": 1 << 6, "NUMBER(PG_private)": 14,
        "NUMBER(PG_swapcache)": 11, "NUMBER(PG_swapbacked)": 18,
        "NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)": pgty(0xF0),
        "NUMBER(PAGE_OFFLINE_MAPCOUNT_VALUE)": pgty(0xF1),
        "NUMBER(PAGE_HUGETLB_MAPCOUNT_VALUE)": pgty(0xF4),
        "NUMBER(PAGE_SLAB_MAPCOUNT_VALUE)": pgty(0xF5),
        **extra,
    })


def test_612_page_types_and_flags1_order() -> None:
    info = _info_612()
    d = PageDialect.from_vmcoreinfo(info)
    assert d.pg_slab is None and d.slab_type == 0xF5000000
    assert d.order_source is OrderSource.TAIL_FLAGS and d.hugetlb_test is HugetlbTest.PAGE_TYPE
    lru6, head6 = 1 << 5, 1 << 6
    p = Pages(2048)
    p.set(0, mapcount=0xF0000000, private=2)  # buddy, order 2
    p.set(8, mapcount=0xF5000000, mapping=0x1001)  # slab: not anon
    p.set(9, flags=1 << 63)  # bit 63: a missing PG_slab must not mean 1 << -1
    # hugetlb folio: head page_type PGTY_hugetlb, order in the first tail's flags low byte
    p.set(512, flags=head6, mapcount=0xF4000000)
    for t in range(1, 512):
        p.set(512 + t, flags=9 if t == 1 else 0, compound_head=0xFFFFEA0000008001)
    p.set(1024, flags=lru6 | head6, mapping=0x2000)  # file folio order 3
    for t in range(1, 8):
        p.set(1024 + t, flags=3 if t == 1 else 0, compound_head=0xFFFFEA0000010001)
    cleared, counts, _ = run(p, 31, info=info)
    assert pfns(cleared) == [0, 1, 2, 3, *range(512, 1024), *range(1024, 1032)]
    assert counts == PageCounts(free=4, user=512, cache=8)


def test_66_pg_hugetlb_in_the_first_tail() -> None:
    info = info_of({
        "NUMBER(HUGETLB_PAGE_DTOR)": None, "OFFSET(page.compound_dtor)": None,
        "OFFSET(page.compound_order)": None, "NUMBER(PG_hugetlb)": 8,
        "NUMBER(PG_head_mask)": 1 << 6,
    })
    d = PageDialect.from_vmcoreinfo(info)
    assert d.hugetlb_test is HugetlbTest.TAIL_FLAG
    p = Pages(1024)
    p.set(512, flags=1 << 6)
    for t in range(1, 512):
        p.set(512 + t, flags=(1 << 8) | 9 if t == 1 else 0, compound_head=0xFFFFEA0000008001)
    cleared, counts, _ = run(p, 8, info=info)
    assert pfns(cleared) == list(range(512, 1024)) and counts == PageCounts(user=512)


def test_63_folio_offsets_minus_size_of_page() -> None:
    info = info_of({
        "OFFSET(page.compound_dtor)": None, "OFFSET(page.compound_order)": None,
        "OFFSET(folio._folio_dtor)": 64 + 16, "OFFSET(folio._folio_order)": 64 + 17,
    })
    d = PageDialect.from_vmcoreinfo(info)
    assert (d.layout.tail_dtor, d.layout.tail_order) == (16, 17)
    p = Pages(1024)
    p.folio(512, 9, dtor=2)
    cleared, counts, _ = run(p, 8, info=info)
    assert pfns(cleared) == list(range(512, 1024)) and counts == PageCounts(user=512)


def test_616_unaccepted_memory() -> None:
    info = _info_612(**{"NUMBER(PAGE_UNACCEPTED_MAPCOUNT_VALUE)": (0xF7 << 24) - (1 << 32)})
    p = Pages(2048)
    p.set(1024, mapcount=0xF7000000)  # 2^(11-1) = 1024 pages
    cleared, counts, _ = run(p, 16, info=info)
    assert pfns(cleared) == list(range(1024, 2048)) and counts == PageCounts(free=1024)
    cleared, counts, _ = run(p, 8, info=info)
    assert counts.total == 0
    with pytest.raises(MissingVmcoreInfoKey):
        run(p, 16, info=_info_612(**{"NUMBER(PAGE_UNACCEPTED_MAPCOUNT_VALUE)": -150994944,
                                     "LENGTH(zone.free_area)": None}))


def test_71_compound_info() -> None:
    info = _info_612(**{"OFFSET(page.compound_head)": None, "OFFSET(page.compound_info)": 8})
    d = PageDialect.from_vmcoreinfo(info)
    assert d.layout.compound_head == 8 and "compound_info" in d.layout.compound_head_key
    p = Pages(16)
    p.set(5, flags=1 << 5, mapping=0x2000, compound_head=0xFFFFEA0000000001)  # a tail
    cleared, _, _ = run(p, 2, info=info)
    assert not cleared.any()


def test_test_bit_emulation() -> None:
    assert flag_test_mask(4) == 1 << 4
    assert flag_test_mask(36) == 1 << 4  # nr & 31
    assert flag_test_mask(31) == 0xFFFFFFFF80000000  # sign-extended int mask


def test_dialect_errors() -> None:
    with pytest.raises(MissingVmcoreInfoKey) as err:
        PageDialect.from_vmcoreinfo(info_of({"SIZE(page)": None}))
    assert err.value.key == "SIZE(page)"
    with pytest.raises(BadVmcoreInfoValue):
        PageDialect.from_vmcoreinfo(info_of({"OFFSET(page.mapping)": 60}))
    with pytest.raises(BadVmcoreInfoValue):
        PageDialect.from_vmcoreinfo(info_of({"NUMBER(PG_lru)": 99}))
    with pytest.raises(MissingVmcoreInfoKey):
        run(Pages(8), 2, info=info_of({"NUMBER(PG_lru)": None}))
    # without the buddy value the FREE row is left to the free-list walk
    d = PageDialect.from_vmcoreinfo(info_of({"NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)": None}))
    assert not d.has_buddy_method


# -- the vectorised pieces against their one-page-at-a-time definitions --------------------


def test_row_values_grow_in_table_order() -> None:
    # _first_match takes the smallest value of the true rows as the first match
    values = [int(row.page_class) for row in DECISION_TABLE]
    assert values == sorted(values) and len(set(values)) == len(values)
    assert min(values) > PageClass.KEEP


def test_first_match_is_the_first_true_row() -> None:
    from cdbdump.mm.classify import _first_match

    rng = np.random.default_rng(3)
    n = 4099
    values = [int(row.page_class) for row in DECISION_TABLE]
    for trial in range(20):
        chosen = sorted(rng.choice(values, size=int(rng.integers(0, len(values) + 1)),
                                   replace=False).tolist())
        conds = [(rng.random(n) < rng.random(), v) for v in chosen]
        rng.shuffle(conds)  # the order of the list must not matter, only the values
        cand = rng.random(n) < 0.9
        expected = np.zeros(n, dtype=np.int8)
        for i in range(n):
            if cand[i]:
                hits = [v for c, v in conds if c[i]]
                expected[i] = min(hits) if hits else PageClass.KEEP
        assert np.array_equal(_first_match(conds, cand), expected), trial


def test_ranges_mask_is_the_union_of_the_ranges() -> None:
    from cdbdump.mm.classify import _ranges_mask

    rng = np.random.default_rng(4)
    for trial in range(500):
        n = int(rng.integers(1, 200))
        k = int(rng.integers(0, 10))
        starts = np.sort(rng.integers(-5, n + 5, k)).astype(np.int64)
        ends = (starts + rng.integers(-3, 80, k)).astype(np.int64)  # overlapping, empty
        expected = np.zeros(n, dtype=np.bool_)
        for lo, hi in zip(starts.tolist(), ends.tolist(), strict=True):
            expected[max(lo, 0) : max(min(hi, n), 0)] = True
        assert np.array_equal(_ranges_mask(starts, ends, n), expected), trial
