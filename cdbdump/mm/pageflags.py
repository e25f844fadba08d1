"""The kernel's page-flag dialect, resolved once from VMCOREINFO contents.

Which PG_* bits exist, how page types are encoded in the _mapcount/page_type
word, and where a compound page's order and hugetlb marker live all change
between kernel releases (makedumpfile __exclude_unnecessary_pages, isSlab,
isHugetlb). They are detected from which
VMCOREINFO keys exist, never from OSRELEASE, and frozen into a PageDialect
that the chunk classifier (mm.classify) runs against.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

from cdbdump.errors import BadVmcoreInfoValue, MissingVmcoreInfoKey
from cdbdump.mm.layout import StructPageLayout
from cdbdump.vmcore.vmcoreinfo import VmcoreInfo

__all__ = ("HugetlbTest", "OrderSource", "PageDialect", "flag_test_mask")

_U32 = 0xFFFFFFFF


class OrderSource(enum.Enum):
    """Where a compound head's order is read (always from the first tail page)."""

    NONE = "none"  # no key tells: every compound page counts as order 0
    TAIL_FIELD = "first-tail order field"  # <= 6.5: compound_order / folio._folio_order
    TAIL_FLAGS = "first-tail flags low byte"  # 6.6+: folio._flags_1 & 0xff


class HugetlbTest(enum.Enum):
    """How a compound head is recognised as a hugetlbfs folio."""

    NONE = "none"
    DTOR = "first-tail dtor == HUGETLB_PAGE_DTOR"  # <= 6.5
    TAIL_FLAG = "first-tail flags & (1 << PG_hugetlb)"  # 6.6 .. 6.8
    PAGE_TYPE = "head page_type == PAGE_HUGETLB_MAPCOUNT_VALUE"  # 6.9+


def flag_test_mask(nr: int) -> int:
    """The 64-bit mask makedumpfile's test_bit(nr, flags) really tests.

    test_bit builds ``int mask = 1 << (nr & 0x1f)`` and ands it with an
    unsigned long, so only bit nr & 31 is tested, and for nr & 31 == 31 the
    negative int sign-extends to bits 31..63 (makedumpfile.h test_bit).
    """
    bit = nr & 0x1F
    return 0xFFFFFFFF80000000 if bit == 31 else 1 << bit


def _release(info: VmcoreInfo) -> tuple[int, int]:
    """(major, minor) of OSRELEASE, (0, 0) when absent or unparsable."""
    parts = (info.osrelease or "").split(".")
    try:
        return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or "0")
    except (ValueError, IndexError):
        return 0, 0


def is_page_type_value(value: int) -> bool:
    """A 32-bit page_type word the kernel can define, never a real _mapcount.

    Before Linux v6.12 a type is one cleared bit above PAGE_MAPCOUNT_RESERVE
    (~0x80 PageBuddy, ~0x100 PageOffline, ... : ~value a power of two >= 0x80);
    since Linux kernel commit 4ffca5a96678 ("mm: support only one page_type per
    page") it is PGTY_x << 24 with PGTY_x >= 0xf0 and the low 24 bits free.
    """
    inverted = ~value & _U32
    old_style = inverted >= 0x80 and inverted & (inverted - 1) == 0
    new_style = value & 0xFFFFFF == 0 and value >> 24 >= 0xF0 and value >> 24 != 0xFF
    return old_style or new_style


class PageDialect(NamedTuple):
    """Everything the classifier needs to know about this kernel's struct page.

    PG_* numbers are bit numbers or None when not exported; *_type values are
    page_type words normalised to their low 32 bits, because makedumpfile
    compares the unsigned 32-bit _mapcount with (int)NUMBER(...) (the kernel
    prints -129 on 5.x and PGTY_buddy << 24 from 6.12).
    """

    layout: StructPageLayout
    pg_lru: int | None
    pg_private: int | None
    pg_swapcache: int | None
    pg_swapbacked: int | None  # None: kernels before 4.10 (swapcache alone decides)
    pg_slab: int | None  # None from 6.10: "never set", not a shift by -1
    pg_hwpoison: int | None  # None without CONFIG_MEMORY_FAILURE
    pg_head_mask: int | None
    pg_hugetlb: int | None  # 6.6 .. 6.8 only
    hugetlb_dtor: int | None  # NUMBER(HUGETLB_PAGE_DTOR), <= 6.5
    buddy_type: int | None
    offline_type: int | None
    slab_type: int | None  # 6.10+
    hugetlb_type: int | None  # 6.9+
    unaccepted_type: int | None  # 6.16+ with CONFIG_UNACCEPTED_MEMORY
    free_area_length: int | None  # LENGTH(zone.free_area) = MAX_ORDER + 1
    order_source: OrderSource
    hugetlb_test: HugetlbTest
    problems: tuple[str, ...] = ()  # absurd values ignored (pages kept), for the report
    swapcache_trusted: bool = True  # False: PG_swapcache alone never makes a cache page

    @property
    def has_buddy_method(self) -> bool:
        """makedumpfile setup_page_is_buddy: page_is_buddy_v3 needs these three."""
        return (
            self.buddy_type is not None
            and self.layout.private is not None
            and self.layout.mapcount is not None
        )

    @classmethod
    def from_vmcoreinfo(cls, info: VmcoreInfo) -> PageDialect:
        """Resolve the dialect.

        Raises:
            MissingVmcoreInfoKey: a struct page key every kernel exports is absent.
            BadVmcoreInfoValue: a PG_* number outside 0..63, or a mask of 0.
        """
        layout = StructPageLayout.from_vmcoreinfo(info)

        def bit(name: str) -> int | None:
            value = info.get_number(name)
            if value is not None and not 0 <= value < 64:
                raise BadVmcoreInfoValue(f"NUMBER({name})", str(value), "not a bit number")
            return value

        problems: list[str] = []

        def page_type(name: str) -> int | None:
            value = info.get_number(name)
            if value is None:
                return None
            if not is_page_type_value(value & _U32):
                # -1 is the _mapcount of every unmapped page: trusting it would drop them
                problems.append(
                    f"NUMBER({name})={value} is not a page type value; pages of that type "
                    "are kept, not excluded"
                )
                return None
            return value & _U32

        # Linux kernel commit 1cbf29da3628 ("kdump: export PG_swapbacked to
        # VMCOREINFO") (in v4.17): from then on its absence is damage, and
        # PG_swapcache (PG_owner_priv_1, also a file-system flag) alone would call
        # file-system pages cache: keep them instead. Older kernels: swapcache decides.
        swapcache_trusted = True
        if (info.get_number("PG_swapbacked") is None and _release(info) >= (4, 17)
                and info.get_number("PG_swapcache") is not None):
            swapcache_trusted = False
            problems.append("NUMBER(PG_swapbacked) is missing on a kernel that exports it; "
                            "swap-cache pages not on an LRU list are kept")

        head_mask = info.get_number("PG_head_mask")
        if head_mask is not None and head_mask <= 0:
            raise BadVmcoreInfoValue("NUMBER(PG_head_mask)", str(head_mask), "empty mask")
        free_area_length = info.get_length("zone.free_area")
        if free_area_length is not None and not 1 <= free_area_length <= 64:
            raise BadVmcoreInfoValue(
                "LENGTH(zone.free_area)", str(free_area_length), "not a buddy order count"
            )

        hugetlb_type = page_type("PAGE_HUGETLB_MAPCOUNT_VALUE")
        pg_hugetlb = bit("PG_hugetlb")
        hugetlb_dtor = info.get_number("HUGETLB_PAGE_DTOR")
        # reference: makedumpfile __exclude_unnecessary_pages, the compound head branch.
        if hugetlb_type is not None:
            # Since Linux kernel commit d99e3140a4d3 ("mm: turn folio_test_hugetlb
            # into a PageType") (in v6.9) hugetlb is a page type of the head
            # (makedumpfile commit 985e575, 1.7.6); the order stays in _flags_1.
            order_source, hugetlb_test = OrderSource.TAIL_FLAGS, HugetlbTest.PAGE_TYPE
        elif pg_hugetlb is not None:
            # Since Linux kernel commit ebc1baf5c9b4 ("mm: free up a word in the
            # first tail page") (in v6.6) the order is the low byte of the first
            # tail's flags and hugetlb a flag there (makedumpfile commit 9661c1d, 1.7.4).
            order_source, hugetlb_test = OrderSource.TAIL_FLAGS, HugetlbTest.TAIL_FLAG
        else:
            order_source = (OrderSource.TAIL_FIELD if layout.tail_order is not None
                            else OrderSource.NONE)
            hugetlb_test = (HugetlbTest.DTOR if layout.tail_dtor is not None
                            and hugetlb_dtor is not None else HugetlbTest.NONE)

        return cls(
            layout=layout,
            pg_lru=bit("PG_lru"),
            pg_private=bit("PG_private"),
            pg_swapcache=bit("PG_swapcache"),
            pg_swapbacked=bit("PG_swapbacked"),
            # Since Linux kernel commit 46df8e73a4a3 ("mm: free up PG_slab") (in
            # v6.10) slab is a page type and NUMBER(PG_slab) is gone (makedumpfile
            # commit bad2a7c, 1.7.6).
            pg_slab=bit("PG_slab"),
            pg_hwpoison=bit("PG_hwpoison"),
            pg_head_mask=head_mask,
            pg_hugetlb=pg_hugetlb,
            hugetlb_dtor=hugetlb_dtor,
            # Since Linux kernel commit 4ffca5a96678 ("mm: support only one
            # page_type per page") (in v6.12) the values are PGTY_x << 24; the
            # low 32 bits compare the same way either way (makedumpfile 72c3414).
            buddy_type=page_type("PAGE_BUDDY_MAPCOUNT_VALUE"),
            offline_type=page_type("PAGE_OFFLINE_MAPCOUNT_VALUE"),
            slab_type=page_type("PAGE_SLAB_MAPCOUNT_VALUE"),
            hugetlb_type=hugetlb_type,
            # Linux v6.16 exports PAGE_UNACCEPTED_MAPCOUNT_VALUE with
            # CONFIG_UNACCEPTED_MEMORY (makedumpfile commit c1a9301, 1.7.8).
            unaccepted_type=page_type("PAGE_UNACCEPTED_MAPCOUNT_VALUE"),
            free_area_length=free_area_length,
            order_source=order_source,
            hugetlb_test=hugetlb_test,
            problems=tuple(problems),
            swapcache_trusted=swapcache_trusted,
        )

    def require_cache_flags(self) -> tuple[int, int, int]:
        """PG_lru, PG_private, PG_swapcache, needed by the -d 2 / -d 4 tests."""
        for name, value in (("PG_lru", self.pg_lru), ("PG_private", self.pg_private),
                            ("PG_swapcache", self.pg_swapcache)):
            if value is None:
                raise MissingVmcoreInfoKey(f"NUMBER({name})", "excluding cache pages")
        assert self.pg_lru is not None and self.pg_private is not None
        assert self.pg_swapcache is not None
        return self.pg_lru, self.pg_private, self.pg_swapcache

    def describe(self) -> dict[str, str]:
        """A short human-readable summary (for `cdbdump info` and debug logs)."""
        return {
            "struct page": f"{self.layout.size} bytes",
            "tail marker": self.layout.compound_head_key,
            "slab test": ("page type" if self.slab_type is not None else "")
            + (" + PG_slab" if self.pg_slab is not None else ""),
            "compound order": self.order_source.value,
            "hugetlb test": self.hugetlb_test.value,
            "free pages": "buddy page type" if self.has_buddy_method else "free lists",
            "page type encoding": (
                "PGTY << 24" if self.buddy_type is not None and self.buddy_type >> 24 != 0xFF
                else "inverted bit"
            ),
        }
