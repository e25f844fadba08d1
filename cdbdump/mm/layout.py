"""Where the fields of struct page are, from VMCOREINFO (never hard-coded).

reference: makedumpfile __exclude_unnecessary_pages (the fields it reads),
init_compound_offset / read_vmcoreinfo (which keys give them). Offsets are
resolved once into a frozen value and a numpy structured dtype, so a chunk of
mem_map is read as one array with no per-page Python work.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from cdbdump.errors import BadVmcoreInfoValue, MissingVmcoreInfoKey
from cdbdump.vmcore.vmcoreinfo import VmcoreInfo

__all__ = ("StructPageLayout",)

_MAX_STRUCT_PAGE = 1024  # 64 on x86_64 distro kernels, 80 with some debug options


class StructPageLayout(NamedTuple):
    """Byte offsets of the struct page fields the classification reads.

    ``None`` means VMCOREINFO does not export the field (makedumpfile's
    NOT_FOUND_STRUCTURE); the classification then behaves as makedumpfile does
    when it is missing. The ``tail_*`` offsets are relative to the first tail
    page (the struct page after the head).
    """

    size: int  # SIZE(page)
    flags: int  # OFFSET(page.flags)
    mapping: int  # OFFSET(page.mapping)
    refcount: int  # OFFSET(page._refcount)
    mapcount: int | None  # OFFSET(page._mapcount), the same word as page_type
    private: int | None  # OFFSET(page.private)
    compound_head: int | None  # OFFSET(page.compound_head) / OFFSET(page.compound_info)
    compound_head_key: str  # which of the two keys gave compound_head
    tail_order: int | None  # order field in the first tail page (<= 6.5)
    tail_dtor: int | None  # compound destructor id in the first tail page (<= 6.5)
    tail_field_width: int  # bytes of tail_order / tail_dtor: 1 (4.16+) or 2 (4.4 .. 4.15)

    @classmethod
    def from_vmcoreinfo(cls, info: VmcoreInfo) -> StructPageLayout:
        """Resolve the layout.

        Raises:
            MissingVmcoreInfoKey: SIZE(page), OFFSET(page.flags), OFFSET(page._refcount)
                or OFFSET(page.mapping) is absent (makedumpfile get_mem_type gives up too).
            BadVmcoreInfoValue: a size or offset that does not fit in struct page.
        """
        size = _required(info, "SIZE(page)", info.get_size("page"))
        if size <= 0 or size % 8 or size > _MAX_STRUCT_PAGE:
            raise BadVmcoreInfoValue("SIZE(page)", str(size), "not a plausible struct page size")

        def field(name: str, width: int, *, required: bool) -> int | None:
            value = info.get_offset(f"page.{name}")
            if value is None:
                if required:
                    raise MissingVmcoreInfoKey(f"OFFSET(page.{name})", "classifying pages")
                return None
            _check_offset(f"OFFSET(page.{name})", value, width, size)
            return value

        flags = field("flags", 8, required=True)
        # Before Linux kernel commit 0139aa7b7fa1 ("mm: rename _count, field of the
        # struct page, to _refcount") (in v4.7) the field was page._count.
        refcount = (field("_refcount", 4, required=False)
                    if "OFFSET(page._refcount)" in info or "OFFSET(page._count)" not in info
                    else field("_count", 4, required=False))
        if refcount is None:
            raise MissingVmcoreInfoKey("OFFSET(page._refcount)", "classifying pages")
        mapping = field("mapping", 8, required=True)
        assert flags is not None and mapping is not None
        mapcount = field("_mapcount", 4, required=False)
        private = field("private", 8, required=False)

        # Linux 7.1 renamed the tail marker word page.compound_head to
        # page.compound_info in VMCOREINFO (makedumpfile commit f50c015).
        compound_head_key = "OFFSET(page.compound_info)"
        compound_head = field("compound_info", 8, required=False)
        if compound_head is None:
            compound_head_key = "OFFSET(page.compound_head)"
            compound_head = field("compound_head", 8, required=False)

        (tail_order, order_key), (tail_dtor, dtor_key) = _tail_fields(info, size)
        width = 1
        if tail_order is not None and tail_dtor is not None and abs(tail_order - tail_dtor) >= 2:
            # Before the struct page rework the two fields were unsigned short
            # (makedumpfile reads USHORT for kernels 4.4 .. 4.15, UCHAR after);
            # the gap between the two offsets tells which.
            width = 2
        for key, value in ((order_key, tail_order), (dtor_key, tail_dtor)):
            if value is not None:
                _check_offset(key, value, width, size)
        return cls(
            size=size, flags=flags, mapping=mapping, refcount=refcount, mapcount=mapcount,
            private=private, compound_head=compound_head, compound_head_key=compound_head_key,
            tail_order=tail_order, tail_dtor=tail_dtor, tail_field_width=width,
        )

    def dtype(self) -> np.dtype[np.void]:
        """A structured dtype over one struct page with the fields the scan reads."""
        names = ["flags", "mapping"]
        formats = ["<u8", "<u8"]
        offsets = [self.flags, self.mapping]
        for name, offset, fmt in (
            ("mapcount", self.mapcount, "<u4"),
            ("private", self.private, "<u8"),
            ("compound_head", self.compound_head, "<u8"),
        ):
            if offset is not None:
                names.append(name)
                formats.append(fmt)
                offsets.append(offset)
        return np.dtype(
            {"names": names, "formats": formats, "offsets": offsets, "itemsize": self.size}
        )


def _required(info: VmcoreInfo, key: str, value: int | None) -> int:
    if value is None:
        raise MissingVmcoreInfoKey(key, "classifying pages")
    return value


def _check_offset(key: str, value: int, width: int, size: int) -> None:
    if value < 0 or value + width > size:
        raise BadVmcoreInfoValue(key, str(value), f"outside struct page of {size} bytes")


def _tail_fields(info: VmcoreInfo, size: int) -> tuple[tuple[int | None, str], ...]:
    """(offset, key) of the order and destructor fields in the first tail page (<= 6.5)."""
    # Since Linux kernel commit 1c5509be58f6 ("mm: remove 'First tail page'
    # members from struct page") (in v6.3) they are folio fields, exported as
    # OFFSET(folio._folio_order/_folio_dtor) from the head; minus SIZE(page)
    # they land in the first tail (makedumpfile commit 446c4f6, 1.7.3).
    out = []
    for folio_name, page_name in (("_folio_order", "compound_order"),
                                  ("_folio_dtor", "compound_dtor")):
        folio_key = f"OFFSET(folio.{folio_name})"
        folio_off = info.get_offset(f"folio.{folio_name}")
        if folio_off is not None:
            offset: int | None = folio_off - size
            key = folio_key
        else:
            offset = info.get_offset(f"page.{page_name}")
            key = f"OFFSET(page.{page_name})"
        # makedumpfile treats an offset of 0 as "not found" (if (order_offset) ...).
        out.append((offset or None, key))
    return tuple(out)
