"""make_vmcoreinfo(): realistic VMCOREINFO note text for each kernel dialect.

The key order follows kernel/vmcore_info.c then arch_crash_save_vmcoreinfo() (x86_64), as
seen in a real Debian 6.1 vmcore; keys are added or removed per dialect as the kernel
commits that introduced or dropped them did. Formatting follows the kernel: SYMBOL() and
KERNELOFFSET are hex without 0x, SIZE/OFFSET/LENGTH/NUMBER are signed decimal, CRASHTIME
(only written on the crash path) is decimal seconds and comes last.

    text = make_vmcoreinfo("6.12", drop=("NUMBER(PG_hwpoison)",),
                           **{"NUMBER(phys_base)": -614465536, "SYMBOL(mem_section)": 0xffff...})
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from tests.builders.dialects import HUGETLB_PAGE_DTOR, Dialect, get_dialect

__all__ = ("make_vmcoreinfo", "vmcoreinfo_items")

Value = int | str | None

# Address-like defaults taken from a real 6.1 guest (only used when the caller does not
# supply a consistent machine; SyntheticKernel always overrides them).
_DEFAULT_SYMBOLS = {
    "init_uts_ns": 0xFFFFFFFF917F9B60,
    "node_online_map": 0xFFFFFFFF9183B480,
    "swapper_pg_dir": 0xFFFFFFFF91610000,
    "_stext": 0xFFFFFFFF8FC00000,
    "vmap_area_list": 0xFFFFFFFF9175A230,
    "mem_section": 0xFFFF8EA37FFD6000,
    "prb": 0xFFFFFFFF916622C0,
    "printk_rb_static": 0xFFFFFFFF916622E0,
    "clear_seq": 0xFFFFFFFF91F16480,
    "kallsyms_names": 0xFFFFFFFF90D75590,
    "kallsyms_num_syms": 0xFFFFFFFF90D75588,
    "kallsyms_token_table": 0xFFFFFFFF90EC9D08,
    "kallsyms_token_index": 0xFFFFFFFF90ECA0A0,
    "kallsyms_offsets": 0xFFFFFFFF90D200B0,
    "kallsyms_relative_base": 0xFFFFFFFF90D75580,
    "init_top_pgt": 0xFFFFFFFF91610000,
    "node_data": 0xFFFFFFFF918368E0,
}

_PRINTK_KEYS: list[tuple[str, Value]] = [
    ("SIZE(printk_ringbuffer)", 88),
    ("OFFSET(printk_ringbuffer.desc_ring)", 0),
    ("OFFSET(printk_ringbuffer.text_data_ring)", 48),
    ("OFFSET(printk_ringbuffer.fail)", 80),
    ("SIZE(prb_desc_ring)", 48),
    ("OFFSET(prb_desc_ring.count_bits)", 0),
    ("OFFSET(prb_desc_ring.descs)", 8),
    ("OFFSET(prb_desc_ring.infos)", 16),
    ("OFFSET(prb_desc_ring.head_id)", 24),
    ("OFFSET(prb_desc_ring.tail_id)", 32),
    ("SIZE(prb_desc)", 24),
    ("OFFSET(prb_desc.state_var)", 0),
    ("OFFSET(prb_desc.text_blk_lpos)", 8),
    ("SIZE(prb_data_blk_lpos)", 16),
    ("OFFSET(prb_data_blk_lpos.begin)", 0),
    ("OFFSET(prb_data_blk_lpos.next)", 8),
    ("SIZE(printk_info)", 88),
    ("OFFSET(printk_info.seq)", 0),
    ("OFFSET(printk_info.ts_nsec)", 8),
    ("OFFSET(printk_info.text_len)", 16),
    ("OFFSET(printk_info.caller_id)", 20),
    ("OFFSET(printk_info.dev_info)", 24),
    ("SIZE(dev_printk_info)", 64),
    ("OFFSET(dev_printk_info.subsystem)", 0),
    ("LENGTH(printk_info_subsystem)", 16),
    ("OFFSET(dev_printk_info.device)", 16),
    ("LENGTH(printk_info_device)", 48),
    ("SIZE(prb_data_ring)", 32),
    ("OFFSET(prb_data_ring.size_bits)", 0),
    ("OFFSET(prb_data_ring.data)", 8),
    ("OFFSET(prb_data_ring.head_lpos)", 16),
    ("OFFSET(prb_data_ring.tail_lpos)", 24),
    ("SIZE(atomic_long_t)", 8),
    ("OFFSET(atomic_long_t.counter)", 0),
]


def _sym(name: str) -> tuple[str, Value]:
    return (f"SYMBOL({name})", _DEFAULT_SYMBOLS[name])


def vmcoreinfo_items(
    dialect: str | Dialect = "6.1",
    *,
    five_level: bool = False,
    crash_dump_bitmap: bool = False,
) -> list[tuple[str, Value]]:
    """The dialect's VMCOREINFO keys in kernel order with default values (before overrides)."""
    d = get_dialect(dialect)
    off = d.offsets
    old = d.name in ("5.10",)
    items: list[tuple[str, Value]] = [
        ("OSRELEASE", d.osrelease),
        ("BUILD-ID", "01d2640d3a13145ee314eb05b155f141b7b7058b"),
        ("PAGESIZE", 4096),
        _sym("init_uts_ns"),
        ("OFFSET(uts_namespace.name)", d.uts_name_offset),
        _sym("node_online_map"),
        _sym("swapper_pg_dir"),
        _sym("_stext"),
    ]
    if d.name in ("5.10", "6.1", "6.3", "6.6"):
        items.append(_sym("vmap_area_list"))
    items += [
        _sym("mem_section"),
        ("LENGTH(mem_section)", 131072 if five_level else 2048),
        ("SIZE(mem_section)", 16),
        ("OFFSET(mem_section.section_mem_map)", 0),
        ("NUMBER(SECTION_SIZE_BITS)", 27),
        ("NUMBER(MAX_PHYSMEM_BITS)", 52 if five_level else 46),
        ("SIZE(page)", 64),
        ("SIZE(pglist_data)", 174208),
        ("SIZE(zone)", 1536),
        ("SIZE(free_area)", 88),
        ("SIZE(list_head)", 16),
        ("SIZE(nodemask_t)", 128),
        ("OFFSET(page.flags)", off["flags"]),
        ("OFFSET(page._refcount)", off["_refcount"]),
        ("OFFSET(page.mapping)", off["mapping"]),
        ("OFFSET(page.lru)", off["lru"]),
        ("OFFSET(page._mapcount)", off["_mapcount"]),
        ("OFFSET(page.private)", off["private"]),
    ]
    if d.order_encoding == "compound":
        items += [
            ("OFFSET(page.compound_dtor)", d.compound_dtor_offset),
            ("OFFSET(page.compound_order)", d.compound_order_offset),
        ]
    elif d.order_encoding == "folio":
        # struct folio: the first tail page's fields sit at SIZE(page) + offset
        items += [
            ("OFFSET(folio._folio_dtor)", 64 + d.compound_dtor_offset),
            ("OFFSET(folio._folio_order)", 64 + d.compound_order_offset),
        ]
    items.append((f"OFFSET(page.{d.compound_field})", off["compound_head"]))
    items += [
        ("OFFSET(pglist_data.node_zones)", 0),
        ("OFFSET(pglist_data.nr_zones)", 171552),
        ("OFFSET(pglist_data.node_start_pfn)", 171560),
        ("OFFSET(pglist_data.node_spanned_pages)", 171576),
        ("OFFSET(pglist_data.node_id)", 171584),
        ("OFFSET(zone.free_area)", 256),
        ("OFFSET(zone.vm_stat)", 1344),
        ("OFFSET(zone.spanned_pages)", 144),
        ("OFFSET(free_area.free_list)", 0),
        ("OFFSET(list_head.next)", 0),
        ("OFFSET(list_head.prev)", 8),
        ("OFFSET(vmap_area.va_start)", 0),
        ("OFFSET(vmap_area.list)", 40),
        ("LENGTH(zone.free_area)", 11),
        _sym("prb"),
        _sym("printk_rb_static"),
        _sym("clear_seq"),
        *_PRINTK_KEYS,
    ]
    if not old:
        items += [("SIZE(latched_seq)", 24), ("OFFSET(latched_seq.val)", 8)]
    items += [
        ("LENGTH(free_area.free_list)", 5),
        ("NUMBER(NR_FREE_PAGES)", 0),
        ("NUMBER(PG_lru)", d.flags["PG_lru"]),
        ("NUMBER(PG_private)", d.flags["PG_private"]),
        ("NUMBER(PG_swapcache)", d.flags["PG_owner_priv_1"]),
        ("NUMBER(PG_swapbacked)", d.flags["PG_swapbacked"]),
    ]
    if d.slab_encoding == "pg_slab":
        items.append(("NUMBER(PG_slab)", d.flags["PG_slab"]))
    else:
        items.append(("NUMBER(PAGE_SLAB_MAPCOUNT_VALUE)", d.page_types["slab"]))
    # CONFIG_MEMORY_FAILURE (distro generic kernels; Debian's cloud kernel lacks it: drop it)
    items += [
        ("NUMBER(PG_hwpoison)", d.flags["PG_hwpoison"]),
        ("NUMBER(PG_head_mask)", d.pg_head_mask),
        ("NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)", d.page_types["buddy"]),
    ]
    if d.hugetlb_encoding == "dtor":
        items.append(("NUMBER(HUGETLB_PAGE_DTOR)", HUGETLB_PAGE_DTOR))
    elif d.hugetlb_encoding == "pg_hugetlb":
        items.append(("NUMBER(PG_hugetlb)", d.flags["PG_hugetlb"]))
    else:
        items.append(("NUMBER(PAGE_HUGETLB_MAPCOUNT_VALUE)", d.page_types["hugetlb"]))
    items.append(("NUMBER(PAGE_OFFLINE_MAPCOUNT_VALUE)", d.page_types["offline"]))
    if d.has_unaccepted:
        items.append(("NUMBER(PAGE_UNACCEPTED_MAPCOUNT_VALUE)", d.page_types["unaccepted"]))
    if crash_dump_bitmap:
        # the RFC kernel (crash dump bitmap, 2013): VMCOREINFO_SYMBOL(crash_dump_bitmap_info)
        items.append(("SYMBOL(crash_dump_bitmap_info)", 0xFFFFFFFF91F20000))
    if not old:
        items += [
            _sym("kallsyms_names"),
            _sym("kallsyms_num_syms"),
            _sym("kallsyms_token_table"),
            _sym("kallsyms_token_index"),
            _sym("kallsyms_offsets"),
            _sym("kallsyms_relative_base"),
        ]
    # arch_crash_save_vmcoreinfo (arch/x86/kernel/machine_kexec_64.c)
    items += [
        ("NUMBER(phys_base)", 459276288),
        _sym("init_top_pgt"),
        ("NUMBER(pgtable_l5_enabled)", 1 if five_level else 0),
        _sym("node_data"),
        ("LENGTH(node_data)", 1024),
        ("KERNELOFFSET", 0xEC00000),
        ("NUMBER(KERNEL_IMAGE_SIZE)", 1 << 30),
        ("NUMBER(sme_mask)", 0),
    ]
    return items


def _format_value(key: str, value: int | str) -> str:
    if isinstance(value, str):
        return value
    if key.startswith("SYMBOL(") or key == "KERNELOFFSET":
        return f"{value & 0xFFFFFFFFFFFFFFFF:x}"
    return str(value)


def make_vmcoreinfo(
    dialect: str | Dialect = "6.1",
    *,
    drop: Iterable[str] = (),
    crashtime: int | None = None,
    five_level: bool = False,
    crash_dump_bitmap: bool = False,
    extra_lines: Iterable[str] = (),
    **overrides: Value,
) -> bytes:
    """VMCOREINFO text (the note descriptor) for a dialect, ending with a newline.

    overrides: exact VMCOREINFO keys, passed with dict unpacking because of the parentheses:
    ``make_vmcoreinfo("6.1", **{"NUMBER(phys_base)": -0x24a00000})``. An int is formatted the
    kernel's way (hex for SYMBOL/KERNELOFFSET, decimal otherwise), a str is written verbatim,
    None drops the key. Unknown keys are appended before CRASHTIME. drop: keys to leave out.
    extra_lines: raw lines appended as they are (for malformed input).
    """
    dropped = set(drop)
    items = vmcoreinfo_items(dialect, five_level=five_level, crash_dump_bitmap=crash_dump_bitmap)
    known = {k for k, _ in items}
    merged: Mapping[str, Value] = {**dict(items), **overrides}
    keys = [k for k, _ in items] + [k for k in overrides if k not in known]
    lines = []
    for key in keys:
        value = merged[key]
        if key in dropped or value is None:
            continue
        lines.append(f"{key}={_format_value(key, value)}")
    if crashtime is not None and "CRASHTIME" not in dropped:
        lines.append(f"CRASHTIME={crashtime}")
    lines.extend(extra_lines)
    return ("\n".join(lines) + "\n").encode()
