"""The builders, checked independently of cdbdump's readers.

ELF structure through pyelftools and binutils readelf; translation through a tiny page-table
walk written here; struct page fields decoded here from the dialect's VMCOREINFO; and, when
makedumpfile is installed, the oracle against makedumpfile itself.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from elftools.elf.elffile import ELFFile

from tests.builders import (
    CRASH_DUMP_BITMAP_INFO,
    DIALECTS,
    DumpLevel,
    ElfCoreBuilder,
    PageKind,
    Role,
    SyntheticKernel,
    make_vmcoreinfo,
    pack_bitmap,
)
from tests.builders.pagetables import PAGE_1G, PAGE_2M, PAGE_4K

START_KERNEL_MAP = 0xFFFFFFFF80000000
PAGE = 4096


# -- an independent reader: pyelftools for the headers, plain file reads for the data --------
class Dump:
    def __init__(self, path: Path) -> None:
        self.path = path
        with path.open("rb") as f:
            elf = ELFFile(f)
            self.loads = [
                (s["p_paddr"], s["p_filesz"], s["p_memsz"], s["p_offset"], s["p_vaddr"])
                for s in elf.iter_segments()
                if s["p_type"] == "PT_LOAD"
            ]
            self.notes = [
                (n["n_name"], n["n_type"], n["n_descdata"])
                for s in elf.iter_segments()
                if s["p_type"] == "PT_NOTE"
                for n in s.iter_notes()
            ]
        info = next(d for name, _, d in self.notes if name == "VMCOREINFO")
        text = info.decode() if isinstance(info, bytes) else info
        self.info = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
        self.fd = path.open("rb")

    def close(self) -> None:
        self.fd.close()

    def read(self, paddr: int, size: int) -> bytes:
        for start, filesz, _, offset, _ in self.loads:
            if start <= paddr and paddr + size <= start + filesz:
                self.fd.seek(offset + paddr - start)
                return self.fd.read(size)
        raise LookupError(f"{paddr:#x} not in the dump")

    def u64(self, paddr: int) -> int:
        return int.from_bytes(self.read(paddr, 8), "little")

    def number(self, key: str) -> int:
        return int(self.info[f"NUMBER({key})"])

    def symbol(self, name: str) -> int:
        return int(self.info[f"SYMBOL({name})"], 16)

    def vtop(self, vaddr: int) -> int | None:
        """x86_64 walk from init_top_pgt (makedumpfile.md §4.6)."""
        levels = 5 if self.number("pgtable_l5_enabled") else 4
        mask = 0x000FFFFFFFFFF000 & ~self.number("sme_mask")
        table = self.symbol("init_top_pgt") - START_KERNEL_MAP + self.number("phys_base")
        shifts = (48, 39, 30, 21, 12)[5 - levels :]
        for depth, shift in enumerate(shifts):
            entry = self.u64(table + ((vaddr >> shift) & 511) * 8)
            if not entry & 1:
                return None
            leaf = depth == levels - 1 or (entry & 0x80 and shift in (30, 21))
            if leaf:
                return (entry & mask) + (vaddr & ((1 << shift) - 1))
            table = entry & mask
        raise AssertionError("unreachable")


@pytest.fixture
def dump_of(tmp_path: Path) -> Callable[[SyntheticKernel], Dump]:
    opened: list[Dump] = []

    def make(kernel: SyntheticKernel) -> Dump:
        path = tmp_path / f"vmcore-{len(opened)}"
        kernel.write(path)
        dump = Dump(path)
        opened.append(dump)
        return dump

    yield make  # type: ignore[misc]
    for dump in opened:
        dump.close()


def _readelf(path: Path) -> str:
    if shutil.which("readelf") is None:
        pytest.skip("binutils readelf not installed")
    return subprocess.run(
        ["readelf", "-lnW", str(path)], check=True, capture_output=True, text=True
    ).stdout


# -- ElfCoreBuilder ---------------------------------------------------------------------------
def test_proc_vmcore_layout_parses(tmp_path: Path) -> None:
    b = ElfCoreBuilder("proc_vmcore")
    for cpu in range(3):
        b.add_prstatus(cpu)
    b.add_vmcoreinfo(make_vmcoreinfo("6.1"))
    page = bytes(range(256)) * 16
    b.add_load(0x1000, data=page * 2, vaddr=0xFFFF888000001000)
    b.add_load(0x9F000, data=page[:0xC00], vaddr=0xFFFF88800009F000)  # ends mid-page
    b.add_load(0x100000, memsz=0x3000, filesz=0x1000, data=page)  # p_filesz < p_memsz
    path = tmp_path / "core"
    b.write(path)
    with path.open("rb") as f:
        elf = ELFFile(f)
        assert elf["e_type"] == "ET_CORE" and elf["e_machine"] == "EM_X86_64"
        assert elf["e_phoff"] == 64 and elf.num_segments() == 4
        segs = list(elf.iter_segments())
        assert segs[0]["p_type"] == "PT_NOTE" and segs[0]["p_offset"] == 0x1000
        notes = list(segs[0].iter_notes())
        assert [(n["n_name"], n["n_type"]) for n in notes][:3] == [("CORE", "NT_PRSTATUS")] * 3
        assert notes[3]["n_name"] == "VMCOREINFO"
        for seg in segs[1:]:
            assert seg["p_offset"] % PAGE == seg["p_paddr"] % PAGE
        assert segs[2]["p_filesz"] == 0xC00
        assert (segs[3]["p_filesz"], segs[3]["p_memsz"]) == (0x1000, 0x3000)
        assert segs[1].data()[: len(page)] == page
        assert segs[2].data() == page[:0xC00]
    out = _readelf(path)
    assert len(re.findall(r"^\s+LOAD\s", out, re.M)) == 3
    assert "VMCOREINFO" in out and out.count("NT_PRSTATUS") == 3


def test_qemu_layout_parses(tmp_path: Path) -> None:
    b = ElfCoreBuilder("qemu")
    b.add_prstatus(0)
    b.add_qemu_cpustate(0)
    b.add_vmcoreinfo(make_vmcoreinfo("6.1"))
    b.add_load(0, data=bytes(range(256)) * 64)
    b.add_load(0x100000000, memsz=0x2000, data=None)
    path = tmp_path / "qemu.elf"
    b.write(path)
    raw = path.read_bytes()
    e_phoff, e_shoff = struct.unpack_from("<QQ", raw, 32)
    e_ehsize, _, e_phnum, _, e_shnum, e_shstrndx = struct.unpack_from("<HHHHHH", raw, 52)
    assert (e_phoff, e_shoff, e_ehsize, e_phnum, e_shnum, e_shstrndx) == (192, 64, 8, 3, 2, 1)
    with path.open("rb") as f:
        elf = ELFFile(f)
        assert [s.name for s in elf.iter_sections()] == ["", ".shstrtab"]
        loads = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
        assert all(s["p_vaddr"] == 0 for s in loads)
        assert loads[0]["p_offset"] % PAGE != 0  # packed, not page aligned
        assert loads[0].data() == bytes(range(256)) * 64
    assert len(re.findall(r"^\s+LOAD\s", _readelf(path), re.M)) == 2


@pytest.mark.parametrize("nr_loads", [3, 0xFFFF + 2])
def test_pn_xnum(tmp_path: Path, nr_loads: int) -> None:
    b = ElfCoreBuilder("proc_vmcore", force_xnum=True)
    b.add_vmcoreinfo(make_vmcoreinfo("6.1"))
    for i in range(nr_loads):
        b.add_load(i * PAGE, memsz=PAGE, filesz=0)
    path = tmp_path / "xnum"
    b.write(path)
    raw = path.read_bytes()
    assert struct.unpack_from("<H", raw, 56)[0] == 0xFFFF
    e_shoff = struct.unpack_from("<Q", raw, 40)[0]
    assert struct.unpack_from("<I", raw, e_shoff + 44)[0] == nr_loads + 1  # sh_info
    with path.open("rb") as f:
        assert ELFFile(f).num_segments() == nr_loads + 1
    if nr_loads < 10:
        assert len(re.findall(r"^\s+LOAD\s", _readelf(path), re.M)) == nr_loads


def test_ehdr_and_phdr_overrides(tmp_path: Path) -> None:
    b = ElfCoreBuilder()
    b.add_vmcoreinfo(make_vmcoreinfo("6.1"))
    b.add_load(0, data=bytes(PAGE), overrides={"p_filesz": 0x123456789})
    b.override_ehdr(e_phnum=7, e_machine=3)
    raw = b.build()
    assert struct.unpack_from("<H", raw, 18)[0] == 3
    assert struct.unpack_from("<H", raw, 56)[0] == 7
    assert struct.unpack_from("<Q", raw, 64 + 56 + 32)[0] == 0x123456789
    with pytest.raises(ValueError, match="unknown Ehdr"):
        b.override_ehdr(e_bogus=1)


# -- VMCOREINFO -------------------------------------------------------------------------------
def _keys(text: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.decode().splitlines())


@pytest.mark.parametrize(
    ("dialect", "present", "absent"),
    [
        ("5.10", ["OFFSET(page.compound_dtor)", "NUMBER(PG_slab)", "NUMBER(HUGETLB_PAGE_DTOR)"],
         ["OFFSET(folio._folio_order)", "NUMBER(PAGE_HUGETLB_MAPCOUNT_VALUE)"]),
        ("6.1", ["OFFSET(page.compound_order)", "NUMBER(PAGE_OFFLINE_MAPCOUNT_VALUE)"],
         ["NUMBER(PG_hugetlb)"]),
        ("6.3", ["OFFSET(folio._folio_dtor)", "OFFSET(folio._folio_order)"],
         ["OFFSET(page.compound_order)"]),
        ("6.6", ["NUMBER(PG_hugetlb)", "NUMBER(PG_slab)"],
         ["NUMBER(HUGETLB_PAGE_DTOR)", "OFFSET(folio._folio_order)"]),
        ("6.9", ["NUMBER(PAGE_HUGETLB_MAPCOUNT_VALUE)", "NUMBER(PG_slab)"], ["NUMBER(PG_hugetlb)"]),
        ("6.10", ["NUMBER(PAGE_SLAB_MAPCOUNT_VALUE)"], ["NUMBER(PG_slab)"]),
        ("6.16", ["NUMBER(PAGE_UNACCEPTED_MAPCOUNT_VALUE)"], ["NUMBER(PG_slab)"]),
        ("7.1", ["OFFSET(page.compound_info)"], ["OFFSET(page.compound_head)"]),
    ],
)  # fmt: skip
def test_vmcoreinfo_dialect_keys(dialect: str, present: list[str], absent: list[str]) -> None:
    keys = _keys(make_vmcoreinfo(dialect))
    for key in [*present, "OSRELEASE", "SYMBOL(mem_section)", "NUMBER(phys_base)", "KERNELOFFSET"]:
        assert key in keys, key
    for key in absent:
        assert key not in keys, key


def test_vmcoreinfo_values_and_format() -> None:
    text = make_vmcoreinfo(
        "6.12",
        drop=("NUMBER(PG_hwpoison)",),
        crashtime=123,
        **{"NUMBER(phys_base)": -614465536, "SYMBOL(mem_section)": 0xFFFF8EA37FFD6000},
    )
    assert text.endswith(b"\nCRASHTIME=123\n")
    keys = _keys(text)
    assert keys["NUMBER(phys_base)"] == "-614465536"
    assert keys["SYMBOL(mem_section)"] == "ffff8ea37ffd6000"
    assert "NUMBER(PG_hwpoison)" not in keys
    assert int(keys["SIZE(mem_section)"]) == 16 and keys["LENGTH(zone.free_area)"] == "11"
    # 6.12: PGTY_x << 24 (compare low 32 bits)
    types = {
        "PAGE_BUDDY_MAPCOUNT_VALUE": 0xF0,
        "PAGE_OFFLINE_MAPCOUNT_VALUE": 0xF1,
        "PAGE_HUGETLB_MAPCOUNT_VALUE": 0xF4,
        "PAGE_SLAB_MAPCOUNT_VALUE": 0xF5,
    }
    for name, pgty in types.items():
        assert int(keys[f"NUMBER({name})"]) & 0xFFFFFFFF == pgty << 24
    assert int(_keys(make_vmcoreinfo("6.1"))["NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)"]) == -129
    assert _keys(make_vmcoreinfo("6.16"))["NUMBER(PAGE_UNACCEPTED_MAPCOUNT_VALUE)"] == str(
        (0xF7 << 24) - (1 << 32)
    )


# -- the machine, read back independently -------------------------------------------------------
@pytest.mark.parametrize("dialect", sorted(DIALECTS))
def test_machine_translates(dialect: str, tiny_kernel, dump_of) -> None:  # type: ignore[no-untyped-def]
    k = tiny_kernel(dialect, seed=11)
    dump = dump_of(k)
    info = dump.info
    assert info["OSRELEASE"] == DIALECTS[dialect].osrelease
    assert int(info["NUMBER(phys_base)"]) == k.phys_base
    # the kernel image: init_top_pgt maps itself, utsname readable through the walk
    top = dump.symbol("init_top_pgt")
    assert dump.vtop(top) == top - START_KERNEL_MAP + k.phys_base
    uts = dump.vtop(dump.symbol("init_uts_ns") + int(info["OFFSET(uts_namespace.name)"]))
    assert uts is not None
    assert dump.read(uts + 65 * 2, 65).rstrip(b"\0") == info["OSRELEASE"].encode()
    # the direct map and the vmemmap agree with the builder's intent
    rng = np.random.default_rng(1)
    for pfn in rng.choice(np.flatnonzero(k.is_ram), 20).tolist():
        vaddr = k.page_offset_base + pfn * PAGE + 0x18
        assert dump.vtop(vaddr) == k.vtop(vaddr) == pfn * PAGE + 0x18
        sp = k.vmemmap_base + pfn * 64
        paddr = dump.vtop(sp)
        assert paddr is not None and paddr == k.vtop(sp)
        assert dump.read(paddr, 64) == k.struct_page_bytes(pfn)
    # mem_section: root array -> section -> encoded mem_map
    per_root = PAGE // int(info["SIZE(mem_section)"])
    for sec in range(k.max_mapnr // 32768 + 1):
        root_ptr = dump.u64(dump.vtop(dump.symbol("mem_section") + (sec // per_root) * 8))
        entry = 0
        if root_ptr:
            entry = dump.u64(
                dump.vtop(root_ptr + (sec % per_root) * int(info["SIZE(mem_section)"]))
            )
        assert bool(entry & 1) == (sec in k.present_sections)
        if entry & 1:
            pfn = sec * 32768 + 5
            assert (entry & ~0x3F) + pfn * 64 == k.struct_page_vaddr(pfn)
    dump.close()


def test_page_sizes_and_five_level(tiny_kernel, dump_of) -> None:  # type: ignore[no-untyped-def]
    k = tiny_kernel("6.12", ram_size=5 << 29, data_fraction=0.0, five_level=True, seed=2)
    sizes = {m.page_size for m in k.pagetables.mappings}
    assert sizes == {PAGE_4K, PAGE_2M, PAGE_1G}
    dump = dump_of(k)
    assert dump.number("pgtable_l5_enabled") == 1 and dump.number("MAX_PHYSMEM_BITS") == 52
    for m in k.pagetables.mappings[:: max(1, len(k.pagetables.mappings) // 50)]:
        assert dump.vtop(m.vaddr + m.size - 8) == m.paddr + m.size - 8


def test_sme_mask_and_planted_entries(tiny_kernel) -> None:  # type: ignore[no-untyped-def]
    k = tiny_kernel("6.6", sme_mask=1 << 47, fresh=True)
    top = k.pagetables.tables[k.init_top_pgt_paddr]
    present = top[top & 1 != 0]
    assert len(present) and all(int(e) & (1 << 47) for e in present)
    va = k.page_offset_base + 0x200000
    table, index = k.pagetables.entry_location(va, 1)
    old = k.pagetables.plant_self_loop(va, 1)
    assert int(k.pagetables.tables[table][index]) & 0x000FFFFFFFFFF000 & ~(1 << 47) == table
    assert old & 1
    k.pagetables.plant_outside(va, 0)
    entry = int(k.pagetables.tables[k.init_top_pgt_paddr][(va >> 39) & 511])
    assert entry & 0x000FFFFFFFFFF000 & ~(1 << 47) == 1 << 45
    assert k.vtop(va) == 0x200000  # the intent is unchanged


# -- struct page encodings, decoded with the dialect's VMCOREINFO -----------------------------
@pytest.mark.parametrize("dialect", sorted(DIALECTS))
def test_struct_page_encoding(dialect: str, tiny_kernel) -> None:  # type: ignore[no-untyped-def]
    k = tiny_kernel(dialect, seed=11)
    info = _keys(k.vmcoreinfo)

    def num(key: str) -> int | None:
        return int(info[key]) if key in info else None

    off = {f: int(info[f"OFFSET(page.{f})"]) for f in ("flags", "mapping", "_mapcount", "private")}
    tail_key = "compound_info" if dialect == "7.1" else "compound_head"
    off["tail"] = int(info[f"OFFSET(page.{tail_key})"])

    def field(pfn: int, name: str, fmt: str = "<Q") -> int:
        return struct.unpack_from(fmt, k.struct_page_bytes(pfn), off[name])[0]

    base = k.catalog_chunk * 512
    buddy = base + 64  # FREE order 5
    assert field(buddy, "_mapcount", "<I") == num("NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)") & 0xFFFFFFFF
    assert field(buddy, "private") == 5
    assert field(buddy + 1, "tail") & 1 == 0  # buddy tails are not compound tails
    head_mask = num("NUMBER(PG_head_mask)")
    thp = base + 48  # anon THP order 3
    assert field(thp, "flags") & head_mask and field(thp, "mapping") & 1
    for tail in range(thp + 1, thp + 8):
        assert field(tail, "tail") == k.struct_page_vaddr(thp) | 1
    first_tail = k.struct_page_bytes(thp + 1)
    if "OFFSET(page.compound_order)" in info:
        assert first_tail[int(info["OFFSET(page.compound_order)"])] == 3
    elif "OFFSET(folio._folio_order)" in info:
        assert first_tail[int(info["OFFSET(folio._folio_order)"]) - 64] == 3
    else:
        assert field(thp + 1, "flags") & 0xFF == 3
    # hugetlb marker (unaligned hugetlb head at +257, order 2)
    huge = base + 257
    if "NUMBER(HUGETLB_PAGE_DTOR)" in info:
        dtor_key = "OFFSET(page.compound_dtor)" if dialect in ("5.10", "6.1") else None
        dtor_at = int(info[dtor_key]) if dtor_key else int(info["OFFSET(folio._folio_dtor)"]) - 64
        assert k.struct_page_bytes(huge + 1)[dtor_at] == num("NUMBER(HUGETLB_PAGE_DTOR)")
    elif "NUMBER(PG_hugetlb)" in info:
        assert field(huge + 1, "flags") & (1 << num("NUMBER(PG_hugetlb)"))
    else:
        value = num("NUMBER(PAGE_HUGETLB_MAPCOUNT_VALUE)")
        assert field(huge, "_mapcount", "<I") == value & 0xFFFFFFFF
    # slab: PG_slab or page type; on 6.2+ the mapping word may be odd (not anon!)
    slab = base + 12
    assert k.kind(slab) == PageKind.SLAB
    if "NUMBER(PG_slab)" in info:
        assert field(slab, "flags") & (1 << num("NUMBER(PG_slab)"))
    else:
        assert (
            field(slab, "_mapcount", "<I") == num("NUMBER(PAGE_SLAB_MAPCOUNT_VALUE)") & 0xFFFFFFFF
        )
    assert bool(field(slab, "mapping") & 1) == DIALECTS[dialect].slab_mapping_may_be_odd
    offline = base + 15
    assert (
        field(offline, "_mapcount", "<I") == num("NUMBER(PAGE_OFFLINE_MAPCOUNT_VALUE)") & 0xFFFFFFFF
    )
    lru = base + 2
    assert field(lru, "flags") & (1 << num("NUMBER(PG_lru)"))
    assert field(base + 100 + 1, "flags") & 0xFF == 70 or dialect in ("5.10", "6.1", "6.3")


# -- physical memory and the oracle ------------------------------------------------------------
def test_pattern_pages_encode_pfn(tiny_kernel, dump_of) -> None:  # type: ignore[no-untyped-def]
    k = tiny_kernel("6.1", seed=11)
    dump = dump_of(k)
    cache = k.pfns_of(PageKind.CACHE)
    data = [p for p in cache.tolist() if any(k.page_bytes(p))][:5]
    assert data
    for pfn in data:
        words = np.frombuffer(dump.read(pfn * PAGE, PAGE), dtype="<u8")
        assert (words >> 16 == pfn).all()
        assert ((words >> 9) & 0x7F == PageKind.CACHE).all()
        assert dump.read(pfn * PAGE, PAGE) == k.page_bytes(pfn)
    # the e820 range ends at 0x9fc00: the page is present, its tail zero in the dump
    partial = k.page_bytes(0x9F)
    assert any(partial[:0xC00]) and not any(partial[0xC00:])
    assert k.first_bitmap()[0x9F] and not k.first_bitmap()[0]
    dump.close()


def test_oracle_invariants(tiny_kernel) -> None:  # type: ignore[no-untyped-def]
    k = tiny_kernel("6.10", seed=5)
    first = k.first_bitmap()
    assert k.expected_dumpable(0).sum() == first.sum() - k.expected_counts(0).total
    everything = 0
    for level in range(32):
        counts = k.expected_counts(level)
        dumpable = k.expected_dumpable(level)
        zero = k.expected_zero_pages(level)
        assert not (dumpable & ~first).any()
        assert not (zero & ~dumpable).any()
        assert counts.zero == (int(zero.sum()) if level & DumpLevel.ZERO else 0)
        # each class only appears with its level bit (hwpoison/offline always: PG_hwpoison known)
        assert counts.cache == 0 or level & (DumpLevel.CACHE | DumpLevel.CACHE_PRI)
        assert counts.cache_private == 0 or level & DumpLevel.CACHE_PRI
        assert counts.user == 0 or level & DumpLevel.USER
        assert counts.free == 0 or level & DumpLevel.FREE
        assert counts.hwpoison > 0 and counts.offline == 2
        everything = max(everything, counts.total - counts.zero)
    assert everything == k.expected_counts(30).total
    # corner cases of the catalog at level 31
    base = k.catalog_chunk * 512
    d31 = k.expected_dumpable(31)
    assert d31[base + 18]  # free page with order 11: kept
    assert not d31[base + 100] and d31[base + 101 : base + 104].all()  # order 70 -> 1 page
    assert not d31[base + 105] and d31[base + 106 : base + 109].all()  # unaligned head
    assert not d31[base + 257] and d31[base + 258 : base + 261].all()  # unaligned hugetlb
    assert d31[base + 12] and d31[base + 11]  # slab with odd mapping, movable page: kept
    assert not d31[base + 64 : base + 96].any()  # free order 5
    # without PG_hwpoison the scan does not run at -d 0/1: nothing excluded at all
    k2 = tiny_kernel("6.10", seed=5, vmcoreinfo_drop=("NUMBER(PG_hwpoison)",))
    assert k2.expected_counts(0).total == 0 and (k2.expected_dumpable(1) == first).all()
    assert k2.expected_dumpable(2)[base + 13]  # hwpoison page kept when unknown


def test_max_mapnr_lowered_to_last_mem_map_section(tiny_kernel) -> None:  # type: ignore[no-untyped-def]
    k = tiny_kernel("6.1", layout="qemu", ram_size=1 << 30, data_fraction=0.0)
    assert [(ld.paddr, ld.vaddr) for ld in k.loads()][-1] == (0xFFFC0000, 0)
    assert k.max_mapnr == (1 << 30) // PAGE  # the ROM at 4 GiB-256K is ignored
    k2 = tiny_kernel("6.1")  # RAM to 4 GiB + 32 MiB, sections 0 and 32
    assert k2.max_mapnr == (4 << 30 | 32 << 20) // PAGE
    assert k2.present_sections == [0, 32]


def test_crash_dump_bitmap(tiny_kernel, dump_of) -> None:  # type: ignore[no-untyped-def]
    k = tiny_kernel("6.1", crash_dump_bitmap=31, seed=3)
    assert CRASH_DUMP_BITMAP_INFO.size == 64
    dump = dump_of(k)
    raw = dump.read(dump.vtop(dump.symbol("crash_dump_bitmap_info")), 64)
    version, bitmap, size, cache, cache_pri, user, free, hwpoison = CRASH_DUMP_BITMAP_INFO.unpack(
        raw
    )
    assert version == 1 and size == (k.bitmap_nbits + 7) // 8
    kernel_bits = k.expected_kernel_bitmap()
    assert dump.read(bitmap, size) == pack_bitmap(kernel_bits, size)
    expected = k.expected_counts(31)
    # the kernel counts what it clears (offline pages have no counter in the struct)
    cleared = int((~kernel_bits).sum())
    assert cache + cache_pri + user + free + hwpoison + expected.offline == cleared
    assert (cache, cache_pri, free, hwpoison) == (
        expected.cache,
        expected.cache_private,
        expected.free,
        expected.hwpoison,
    )
    # the kernel knows the true size of the three deliberately corrupted compound pages that
    # makedumpfile reads as order 0 (catalog +100, +105, +257): 3 more tail pages each
    assert user == expected.user + 9
    base = k.catalog_chunk * 512
    corrupt_tails = [base + i for start in (100, 105, 257) for i in range(start + 1, start + 4)]
    anded = k.first_bitmap() & kernel_bits[: k.max_mapnr]
    differ = np.flatnonzero(anded != k.expected_dumpable(31))
    assert differ.tolist() == corrupt_tails
    assert (k.expected_dumpable_q() == anded).all()
    q = k.expected_counts_q(1)
    assert (q.cache, q.user, q.offline) == (cache, user, 0)
    assert q.zero == int((anded & k.expected_zero_pages(0)).sum())
    # every field can be broken
    k2 = tiny_kernel(
        "6.1", crash_dump_bitmap=31, seed=3, crash_dump_bitmap_info={"version": 2, "bitmap": 0}
    )
    d2 = dump_of(k2)
    raw2 = d2.read(d2.vtop(d2.symbol("crash_dump_bitmap_info")), 64)
    assert CRASH_DUMP_BITMAP_INFO.unpack(raw2)[:2] == (2, 0)


def test_every_page_class_present(tiny_kernel) -> None:  # type: ignore[no-untyped-def]
    k = tiny_kernel("6.16", seed=11)
    missing = {kind for kind in PageKind if not len(k.pfns_of(kind))}
    assert missing <= {PageKind.NONE, PageKind.ROM}
    heads = k.pfns_of(PageKind.UNACCEPTED, Role.HEAD)
    assert len(heads) and (heads % 1024 == 0).all()


# -- against makedumpfile itself (Debian 12's 1.7.2; set CDBDUMP_MAKEDUMPFILE to a >= 1.7.6) ------
def _makedumpfile_counts(binary: str, vmcore: Path, out: Path, level: int) -> dict[str, int]:
    proc = subprocess.run(
        [binary, "-d", str(level), "--message-level", "31", str(vmcore), str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    names = {
        "zero": "Pages filled with zero",
        "cache": "Non-private cache pages",
        "cache_private": "Private cache pages",
        "user": "User process data pages",
        "free": "Free pages",
        "hwpoison": "Hwpoison pages",
        "offline": "Offline pages",
    }
    text = proc.stdout + proc.stderr
    return {
        key: int(re.search(re.escape(label) + r"\s*:\s*0x([0-9a-f]+)", text).group(1), 16)  # type: ignore[union-attr]
        for key, label in names.items()
    }


def _second_bitmap(path: Path) -> np.ndarray:
    raw = path.read_bytes()
    block_size, sub_hdr_size, bitmap_blocks = struct.unpack_from("<iiI", raw, 428)
    max_mapnr = struct.unpack_from("<Q", raw, block_size + 96)[0]
    half = bitmap_blocks * block_size // 2
    start = (1 + sub_hdr_size) * block_size + half
    bits = np.unpackbits(np.frombuffer(raw[start : start + half], np.uint8), bitorder="little")
    return bits[:max_mapnr].astype(bool)


@pytest.mark.oracle
@pytest.mark.parametrize("dialect", ["5.10", "6.1", "6.3", "6.6", "6.9", "6.10"])
def test_oracle_matches_makedumpfile(dialect: str, tiny_vmcore, tmp_path: Path, request) -> None:  # type: ignore[no-untyped-def]
    def version_of(binary: str) -> tuple[int, ...]:
        version = subprocess.run([binary, "-v"], capture_output=True, text=True).stdout
        m = re.search(r"version (\d+)\.(\d+)\.(\d+)", version)
        assert m is not None
        return tuple(int(x) for x in m.groups())

    binary = os.environ.get("CDBDUMP_MAKEDUMPFILE") or shutil.which("makedumpfile")
    mdf = version_of(binary) if binary else (0, 0, 0)
    # 6.3 folio fields: 1.7.3; 6.6: 1.7.4; 6.9/6.10 page types: 1.7.6
    needed = {"6.3": (1, 7, 3), "6.6": (1, 7, 4), "6.9": (1, 7, 6), "6.10": (1, 7, 6)}
    if mdf < needed.get(dialect, (1, 7, 0)):  # Debian 13's 1.7.6 (skips/fails if unavailable)
        binary = str(request.getfixturevalue("makedumpfile_new"))
        mdf = version_of(binary)
    k, vmcore = tiny_vmcore(dialect, seed=11)
    out = tmp_path / "out.kdump"
    got = _makedumpfile_counts(binary, vmcore, out, 31)
    assert got == k.expected_counts(31).as_dict()
    expected = k.expected_dumpable(31)
    if mdf < (1, 7, 6):
        expected[0x9F] = False  # a PT_LOAD ending mid-page: 1.7.2-1.7.5 drop that page
    assert (_second_bitmap(out) == expected).all()


def test_section_flag_bit5_trap(tiny_kernel, dump_of) -> None:  # type: ignore[no-untyped-def]
    k = tiny_kernel("6.12", section_flag_bit5=True, data_fraction=0.0)
    dump = dump_of(k)
    root = dump.u64(dump.vtop(dump.symbol("mem_section")))
    entry = dump.u64(dump.vtop(root))  # section 0
    assert entry & 0x2F == 0x2F
    assert (entry & ~0x3F) == k.vmemmap_base
    assert (entry & ~0x1F) == k.vmemmap_base + 32  # makedumpfile's mask: 32 bytes off


def test_qemu_machine_reads_back(tiny_kernel, dump_of) -> None:  # type: ignore[no-untyped-def]
    k = tiny_kernel("6.9", layout="qemu", seed=4)
    dump = dump_of(k)
    with dump.path.open("rb") as f:
        elf = ELFFile(f)
        assert elf["e_phoff"] == 192 and elf["e_ehsize"] == 8
    assert [name for name, _, _ in dump.notes] == ["CORE", "CORE", "QEMU", "QEMU", "VMCOREINFO"]
    assert all(vaddr == 0 for *_, vaddr in dump.loads)
    assert dump.loads[0][0] == 0  # QEMU dumps low RAM from 0, holes included
    assert "CRASHTIME" not in dump.info
    pfn = int(k.pfns_of(PageKind.ANON)[0])
    assert dump.read(dump.vtop(k.struct_page_vaddr(pfn)), 64) == k.struct_page_bytes(pfn)
    assert dump.read(0xA0000, PAGE) == k.page_bytes(0xA0)  # firmware data in the VGA hole
    assert k.first_bitmap()[0] and k.kind(0xA0) == PageKind.HOLE


@pytest.mark.parametrize(("size", "five_level", "length"), [
    (16, False, 2048),  # Debian 12's 6.1 (real-vmcores.md)
    (32, False, 4096),  # a Fedora 6.2 sample with a 32-byte struct mem_section
    (16, True, 131072),
    (32, True, 262144),
])
def test_mem_section_length_is_the_kernels(tiny_kernel, size: int, five_level: bool,  # type: ignore[no-untyped-def]
                                           length: int) -> None:
    # VMCOREINFO_LENGTH(mem_section, NR_SECTION_ROOTS): DIV_ROUND_UP(NR_MEM_SECTIONS,
    # PAGE_SIZE / sizeof(struct mem_section)), NR_MEM_SECTIONS = 2^(MAX_PHYSMEM_BITS - 27)
    k = tiny_kernel("6.10", mem_section_size=size, five_level=five_level, seed=2)
    lines = dict(line.split("=", 1) for line in k.vmcoreinfo.decode().splitlines()
                 if "=" in line)
    bits = int(lines["NUMBER(MAX_PHYSMEM_BITS)"])
    assert int(lines["SIZE(mem_section)"]) == size
    assert int(lines["LENGTH(mem_section)"]) == length == -(-(1 << (bits - 27)) // (4096 // size))
