"""Kernel dialects: how each kernel generation encodes struct page and what VMCOREINFO says.

Values come from the kernel headers of each generation (include/linux/page-flags.h,
include/linux/mm_types.h, kernel/vmcore_info.c) and makedumpfile's
isHugetlb/isSlab/page_is_buddy; the 6.1 offsets are those of a real Debian 6.1 VMCOREINFO. Flag bit
numbers are what the kernel exports; they move between releases, which is the point:
a scanner must read them from VMCOREINFO.

This module is the builders' *specification* of each dialect. It never looks at cdbdump's
scanner code.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

__all__ = ("DIALECTS", "Dialect", "get_dialect")

OrderEncoding = Literal["compound", "folio", "flags1"]
HugetlbEncoding = Literal["dtor", "pg_hugetlb", "page_type"]
SlabEncoding = Literal["pg_slab", "page_type"]

# enum compound_dtor_id (include/linux/mm.h, <= 6.5)
NULL_COMPOUND_DTOR = 0
COMPOUND_PAGE_DTOR = 1
HUGETLB_PAGE_DTOR = 2
TRANSHUGE_PAGE_DTOR = 3


def _pgty(value: int) -> int:
    """PGTY_x << 24 as the kernel prints it: an int expression, so the top bit makes it negative.

    Since v6.12 ("mm: support only one page_type per page"; makedumpfile commit 72c3414),
    page types are one byte in the top of page_type.
    """
    raw = (value << 24) & 0xFFFFFFFF
    return raw - (1 << 32) if raw & 0x80000000 else raw


# Flag bit numbers ---------------------------------------------------------------------------
# Before "mm: move PG_writeback/PG_head into the bottom byte" reorders (<= 6.5 here).
_FLAGS_OLD = {
    "PG_locked": 0,
    "PG_referenced": 1,
    "PG_uptodate": 2,
    "PG_dirty": 3,
    "PG_lru": 4,
    "PG_active": 5,
    "PG_workingset": 6,
    "PG_waiters": 7,
    "PG_error": 8,
    "PG_slab": 9,
    "PG_owner_priv_1": 10,  # == PG_swapcache (and PG_checked for filesystems)
    "PG_arch_1": 11,
    "PG_reserved": 12,
    "PG_private": 13,
    "PG_private_2": 14,
    "PG_writeback": 15,
    "PG_head": 16,
    "PG_mappedtodisk": 17,
    "PG_reclaim": 18,
    "PG_swapbacked": 19,
    "PG_unevictable": 20,
    "PG_mlocked": 21,
    "PG_uncached": 22,
    "PG_hwpoison": 23,
}
# 6.6 - 6.9: PG_writeback and PG_head in the first byte (issue #21 reports PG_lru = 5 on 6.6).
_FLAGS_66 = {
    "PG_locked": 0,
    "PG_writeback": 1,
    "PG_referenced": 2,
    "PG_uptodate": 3,
    "PG_dirty": 4,
    "PG_lru": 5,
    "PG_head": 6,
    "PG_waiters": 7,
    "PG_active": 8,
    "PG_workingset": 9,
    "PG_error": 10,
    "PG_slab": 11,
    "PG_owner_priv_1": 12,
    "PG_arch_1": 13,
    "PG_reserved": 14,
    "PG_private": 15,
    "PG_private_2": 16,
    "PG_mappedtodisk": 17,
    "PG_reclaim": 18,
    "PG_swapbacked": 19,
    "PG_unevictable": 20,
    "PG_mlocked": 21,
    "PG_uncached": 22,
    "PG_hwpoison": 23,
}


def _renumber(flags: dict[str, int], removed: tuple[str, ...]) -> dict[str, int]:
    names = [n for n, _ in sorted(flags.items(), key=lambda kv: kv[1]) if n not in removed]
    return {n: i for i, n in enumerate(names)}


# Since Linux kernel commit 46df8e73a4a3 ("mm: free up PG_slab") (in v6.10), no PG_slab.
_FLAGS_610 = _renumber(_FLAGS_66, ("PG_slab",))
# Since v6.12 ("mm: remove PG_error"), no PG_error.
_FLAGS_612 = _renumber(_FLAGS_66, ("PG_slab", "PG_error"))


@dataclass(frozen=True)
class Dialect:
    """Everything the builders need to encode struct pages for one kernel generation."""

    name: str
    osrelease: str
    flags: dict[str, int]  # every PG_* bit number (exported or not)
    order_encoding: OrderEncoding
    hugetlb_encoding: HugetlbEncoding
    slab_encoding: SlabEncoding
    # page_type values as the kernel prints them (NUMBER(PAGE_*_MAPCOUNT_VALUE), signed)
    page_types: dict[str, int]
    uts_name_offset: int = 0
    compound_field: str = "compound_head"  # 7.1+: compound_info
    # Since v6.2 slab.slabs overlays page.mapping, so it may be odd (makedumpfile commit
    # 5f17bdd: slab pages must not count as anonymous).
    slab_mapping_may_be_odd: bool = False
    has_unaccepted: bool = False
    # offsets in struct page (x86_64, SIZE(page) = 64)
    offsets: dict[str, int] = field(
        default_factory=lambda: {
            "flags": 0,
            "lru": 8,
            "compound_head": 8,
            "mapping": 24,
            "index": 32,
            "private": 40,
            "_mapcount": 48,
            "_refcount": 52,
        }
    )
    compound_dtor_offset: int = 16  # byte in the first tail page (<= 6.5)
    compound_order_offset: int = 17

    @property
    def pg_head_mask(self) -> int:
        return 1 << self.flags["PG_head"]

    def flag(self, name: str) -> int:
        """1 << PG_name (0 when the flag does not exist in this dialect)."""
        bit = self.flags.get(name)
        return 0 if bit is None else 1 << bit

    def with_(self, **changes: object) -> Dialect:
        return replace(self, **changes)  # type: ignore[arg-type]


_OLD_TYPES = {"buddy": -129, "offline": -257, "table": -513, "guard": -1025}

DIALECTS: dict[str, Dialect] = {
    "5.10": Dialect(
        name="5.10",
        osrelease="5.10.0-35-amd64",
        flags=_FLAGS_OLD,
        order_encoding="compound",
        hugetlb_encoding="dtor",
        slab_encoding="pg_slab",
        page_types=dict(_OLD_TYPES),
        uts_name_offset=4,  # struct uts_namespace { struct kref kref; struct new_utsname name; }
    ),
    "6.1": Dialect(
        name="6.1",
        osrelease="6.1.0-57-cloud-amd64",
        flags=_FLAGS_OLD,
        order_encoding="compound",
        hugetlb_encoding="dtor",
        slab_encoding="pg_slab",
        page_types=dict(_OLD_TYPES),
    ),
    # Since v6.3 the first tail's fields are exported as folio._folio_dtor/_folio_order
    # (makedumpfile commit 446c4f6).
    "6.3": Dialect(
        name="6.3",
        osrelease="6.3.13-generic",
        flags=_FLAGS_OLD,
        order_encoding="folio",
        hugetlb_encoding="dtor",
        slab_encoding="pg_slab",
        page_types=dict(_OLD_TYPES),
        slab_mapping_may_be_odd=True,
    ),
    # Since v6.6 ("mm: remove HUGETLB_PAGE_DTOR"; makedumpfile commit 9661c1d): order in the
    # low byte of folio._flags_1, hugetlb as PG_hugetlb (== PG_active) of the first tail.
    "6.6": Dialect(
        name="6.6",
        osrelease="6.6.58-amd64",
        flags={**_FLAGS_66, "PG_hugetlb": _FLAGS_66["PG_active"]},
        order_encoding="flags1",
        hugetlb_encoding="pg_hugetlb",
        slab_encoding="pg_slab",
        page_types=dict(_OLD_TYPES),
        slab_mapping_may_be_odd=True,
    ),
    # Since v6.9 ("mm: turn folio_test_hugetlb into a PageType"; makedumpfile commit
    # 985e575): hugetlb is a page type of the head.
    "6.9": Dialect(
        name="6.9",
        osrelease="6.9.12-amd64",
        flags=_FLAGS_66,
        order_encoding="flags1",
        hugetlb_encoding="page_type",
        slab_encoding="pg_slab",
        page_types={**_OLD_TYPES, "hugetlb": -2049},
        slab_mapping_may_be_odd=True,
    ),
    # Since Linux kernel commit 46df8e73a4a3 ("mm: free up PG_slab") (in v6.10): slab is a
    # page type, NUMBER(PG_slab) is gone (makedumpfile commit bad2a7c).
    "6.10": Dialect(
        name="6.10",
        osrelease="6.10.14-amd64",
        flags=_FLAGS_610,
        order_encoding="flags1",
        hugetlb_encoding="page_type",
        slab_encoding="page_type",
        page_types={**_OLD_TYPES, "hugetlb": -2049, "slab": -4097},
        slab_mapping_may_be_odd=True,
    ),
    # Since v6.12 ("mm: support only one page_type per page"; makedumpfile commit 72c3414):
    # PGTY_x << 24, compared on the low 32 bits.
    "6.12": Dialect(
        name="6.12",
        osrelease="6.12.57+deb13-amd64",
        flags=_FLAGS_612,
        order_encoding="flags1",
        hugetlb_encoding="page_type",
        slab_encoding="page_type",
        page_types={
            "buddy": _pgty(0xF0),
            "offline": _pgty(0xF1),
            "table": _pgty(0xF2),
            "guard": _pgty(0xF3),
            "hugetlb": _pgty(0xF4),
            "slab": _pgty(0xF5),
        },
        slab_mapping_may_be_odd=True,
    ),
    # Since v6.16 unaccepted memory is a page type: NUMBER(PAGE_UNACCEPTED_MAPCOUNT_VALUE)
    # (CONFIG_UNACCEPTED_MEMORY; makedumpfile commit c1a9301).
    "6.16": Dialect(
        name="6.16",
        osrelease="6.16.3-amd64",
        flags=_FLAGS_612,
        order_encoding="flags1",
        hugetlb_encoding="page_type",
        slab_encoding="page_type",
        page_types={
            "buddy": _pgty(0xF0),
            "offline": _pgty(0xF1),
            "table": _pgty(0xF2),
            "guard": _pgty(0xF3),
            "hugetlb": _pgty(0xF4),
            "slab": _pgty(0xF5),
            "unaccepted": _pgty(0xF7),
        },
        slab_mapping_may_be_odd=True,
        has_unaccepted=True,
    ),
    # 7.1: the tail marker word is exported as OFFSET(page.compound_info)
    # (makedumpfile commit f50c015).
    "7.1": Dialect(
        name="7.1",
        osrelease="7.1.0-rc1-amd64",
        flags=_FLAGS_612,
        order_encoding="flags1",
        hugetlb_encoding="page_type",
        slab_encoding="page_type",
        page_types={
            "buddy": _pgty(0xF0),
            "offline": _pgty(0xF1),
            "table": _pgty(0xF2),
            "guard": _pgty(0xF3),
            "hugetlb": _pgty(0xF4),
            "slab": _pgty(0xF5),
            "unaccepted": _pgty(0xF7),
        },
        compound_field="compound_info",
        slab_mapping_may_be_odd=True,
        has_unaccepted=True,
    ),
}


def get_dialect(name: str | Dialect) -> Dialect:
    """Look a dialect up by name: 5.10 6.1 6.3 6.6 6.9 6.10 6.12 6.16 7.1."""
    if isinstance(name, Dialect):
        return name
    try:
        return DIALECTS[name]
    except KeyError:
        raise ValueError(f"unknown dialect {name!r}; known: {sorted(DIALECTS)}") from None
