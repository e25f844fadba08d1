"""locate_mem_map on hand-made mem_section arrays.

TinyKernel (reused by test_classify and test_scan) lays out a small x86_64
kernel in a PhysImage: page tables, the SPARSEMEM_EXTREME root array in the
direct map, struct mem_section entries, and a vmemmap backed by 2 MiB pages.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from cdbdump.errors import CorruptDumpError, MissingVmcoreInfoKey, UnsupportedError
from cdbdump.memory.kernel import KernelMemory
from cdbdump.memory.physical import ElfMemory
from cdbdump.memory.x86_64 import PageTableWalker
from cdbdump.mm.memmodel import MemMapRun, locate_mem_map
from cdbdump.vmcore.vmcoreinfo import VmcoreInfo
from tests.unit.test_x86_64 import MIB, PAGE, PageTables, PhysImage

PAGE_OFFSET = 0xFFFF888000000000
VMEMMAP = 0xFFFFEA0000000000
PAGES_PER_SECTION = 1 << 15
SIZE_PAGE = 64

# A 6.1-like VMCOREINFO (offsets of a real Debian 6.1 kernel, makedumpfile.md §4.7)
BASE_INFO: dict[str, int | str] = {
    "PAGESIZE": 4096,
    "SIZE(page)": 64,
    "OFFSET(page.flags)": 0,
    "OFFSET(page._refcount)": 52,
    "OFFSET(page.mapping)": 24,
    "OFFSET(page.lru)": 8,
    "OFFSET(page._mapcount)": 48,
    "OFFSET(page.private)": 40,
    "OFFSET(page.compound_dtor)": 16,
    "OFFSET(page.compound_order)": 17,
    "OFFSET(page.compound_head)": 8,
    "SIZE(mem_section)": 16,
    "OFFSET(mem_section.section_mem_map)": 0,
    "NUMBER(SECTION_SIZE_BITS)": 27,
    "NUMBER(MAX_PHYSMEM_BITS)": 46,
    "LENGTH(mem_section)": 2048,
    "NUMBER(PG_lru)": 4,
    "NUMBER(PG_private)": 13,
    "NUMBER(PG_swapcache)": 10,
    "NUMBER(PG_swapbacked)": 19,
    "NUMBER(PG_slab)": 9,
    "NUMBER(PG_head_mask)": 1 << 16,
    "NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)": -129,
    "NUMBER(HUGETLB_PAGE_DTOR)": 2,
    "NUMBER(PAGE_OFFLINE_MAPCOUNT_VALUE)": -257,
    "LENGTH(zone.free_area)": 11,
    "NUMBER(phys_base)": 0,
    "NUMBER(pgtable_l5_enabled)": 0,
    "NUMBER(sme_mask)": 0,
}


class TinyKernel:
    """A small machine: RAM [0, ram), sections with mem_map listed in ``sections``."""

    ROOT_ARRAY = 0x80000  # physical address of the mem_section root array
    ROOT_PAGES = 0x90000  # struct mem_section pages (one per root)
    VMEMMAP_BACKING = 0x1000000  # struct pages live here (16 MiB +)

    def __init__(self, ram: int, sections: list[int] | None = None,
                 info: dict[str, int | str] | None = None) -> None:
        self.ram = ram
        self.image = PhysImage(ram)
        self.pt = PageTables(self.image, alloc_at=0x40000)
        self.pt.map(PAGE_OFFSET, 0, max(ram, 32 * MIB) // (2 * MIB) * 2 * MIB, 2 * MIB)
        self.info: dict[str, int | str] = dict(BASE_INFO)
        self.info.update(info or {})
        self.info["SYMBOL(mem_section)"] = f"{PAGE_OFFSET + self.ROOT_ARRAY:x}"
        self.info["SYMBOL(init_top_pgt)"] = f"{self.pt.root + 0xFFFFFFFF80000000:x}"
        nr = -(-ram // (PAGES_PER_SECTION * PAGE))
        self.sections = list(range(nr)) if sections is None else sections
        self.backing: dict[int, int] = {}
        next_backing = self.VMEMMAP_BACKING
        for nr in self.sections:
            root = nr // 256
            root_page = self.ROOT_PAGES + root * PAGE
            self.image.write_u64(self.ROOT_ARRAY + 8 * root, PAGE_OFFSET + root_page)
            # one 2 MiB vmemmap page holds 32768 struct pages = one section
            vaddr = VMEMMAP + nr * PAGES_PER_SECTION * SIZE_PAGE
            self.pt.map(vaddr, next_backing, 2 * MIB, 2 * MIB)
            self.backing[nr] = next_backing
            next_backing += 2 * MIB
            coded = VMEMMAP  # mem_map - section_start_pfn * SIZE(page)
            self.set_section_word(nr, coded | 0x1 | 0x2 | 0x4 | 0x8)

    def set_section_word(self, nr: int, word: int) -> None:
        root_page = self.ROOT_PAGES + (nr // 256) * PAGE
        self.image.write_u64(root_page + (nr % 256) * 16, word)

    def struct_page_paddr(self, pfn: int) -> int:
        nr = pfn // PAGES_PER_SECTION
        return self.backing[nr] + (pfn % PAGES_PER_SECTION) * SIZE_PAGE

    def set_page(self, pfn: int, *, flags: int = 0, mapping: int = 0, private: int = 0,
                 mapcount: int = -1, compound_head: int = 0, refcount: int = 1,
                 raw: dict[int, bytes] | None = None) -> None:
        page = bytearray(SIZE_PAGE)
        struct.pack_into("<Q", page, 0, flags)
        struct.pack_into("<Q", page, 8, compound_head)
        struct.pack_into("<Q", page, 24, mapping)
        struct.pack_into("<Q", page, 40, private)
        struct.pack_into("<I", page, 48, mapcount & 0xFFFFFFFF)
        struct.pack_into("<I", page, 52, refcount)
        for off, data in (raw or {}).items():
            page[off : off + len(data)] = data
        self.image.write(self.struct_page_paddr(pfn), bytes(page))

    def vmcoreinfo(self) -> VmcoreInfo:
        text = "".join(f"{k}={v}\n" for k, v in self.info.items())
        return VmcoreInfo.parse(text.encode())

    def build(self, path: Path, segments: list[tuple[int, int]] | None = None,
              filesz: dict[int, int] | None = None) -> tuple[KernelMemory, VmcoreInfo]:
        info = self.vmcoreinfo()
        phys = self.image.to_phys(path, segments, filesz)
        return KernelMemory.from_vmcoreinfo(phys, info), info


def kernel_for(phys: ElfMemory, root: int) -> KernelMemory:
    return KernelMemory(phys, PageTableWalker(phys, root), phys_base=0, page_offset=PAGE_OFFSET)


def test_contiguous_sections_coalesce(tmp_path: Path) -> None:
    tk = TinyKernel(4 * 128 * MIB)
    kernel, info = tk.build(tmp_path / "mem")
    mm = locate_mem_map(kernel, info, tk.ram // PAGE)
    assert mm.model == "SPARSEMEM_EX"
    assert mm.runs == (MemMapRun(0, 4 * PAGES_PER_SECTION, VMEMMAP),)
    assert mm.max_mapnr == 4 * PAGES_PER_SECTION
    assert mm.nr_sections_present == 4 and mm.problems == ()


def test_gaps_and_max_mapnr_lowering(tmp_path: Path) -> None:
    # sections 0, 1 and 3 have a mem_map; a PT_LOAD reaches 6 sections
    tk = TinyKernel(6 * 128 * MIB, sections=[0, 1, 3])
    kernel, info = tk.build(tmp_path / "mem")
    mm = locate_mem_map(kernel, info, 6 * PAGES_PER_SECTION)
    assert mm.runs == (
        MemMapRun(0, 2 * PAGES_PER_SECTION, VMEMMAP),
        MemMapRun(3 * PAGES_PER_SECTION, 4 * PAGES_PER_SECTION,
                  VMEMMAP + 3 * PAGES_PER_SECTION * SIZE_PAGE),
    )
    assert mm.max_mapnr == 4 * PAGES_PER_SECTION  # lowered to the last mem_map


def test_max_mapnr_mid_section_clips_the_run(tmp_path: Path) -> None:
    tk = TinyKernel(2 * 128 * MIB)
    kernel, info = tk.build(tmp_path / "mem")
    mm = locate_mem_map(kernel, info, PAGES_PER_SECTION + 100)
    assert mm.runs == (MemMapRun(0, PAGES_PER_SECTION + 100, VMEMMAP),)
    assert mm.max_mapnr == PAGES_PER_SECTION + 100


def test_not_present_and_flag_bit_5(tmp_path: Path) -> None:
    tk = TinyKernel(3 * 128 * MIB)
    tk.set_section_word(1, VMEMMAP | 0x2)  # has a map but not SECTION_MARKED_PRESENT
    tk.set_section_word(2, VMEMMAP | 0x20 | 0x1)  # bit 5 (IS_VMEMMAP_PREINIT) set
    kernel, info = tk.build(tmp_path / "mem")
    mm = locate_mem_map(kernel, info, 3 * PAGES_PER_SECTION)
    # ~0x1f would have left 32 bytes of error in section 2's mem_map
    assert mm.runs == (
        MemMapRun(0, PAGES_PER_SECTION, VMEMMAP),
        MemMapRun(2 * PAGES_PER_SECTION, 3 * PAGES_PER_SECTION,
                  VMEMMAP + 2 * PAGES_PER_SECTION * SIZE_PAGE),
    )


def test_retry_through_the_pointer(tmp_path: Path) -> None:
    # older kernels: SYMBOL(mem_section) is a pointer to the root array
    tk = TinyKernel(128 * MIB)
    pointer_paddr = 0x70000
    tk.image.write_u64(pointer_paddr, PAGE_OFFSET + tk.ROOT_ARRAY)
    tk.info["SYMBOL(mem_section)"] = f"{PAGE_OFFSET + pointer_paddr:x}"
    kernel, info = tk.build(tmp_path / "mem")
    mm = locate_mem_map(kernel, info, PAGES_PER_SECTION)
    assert mm.runs == (MemMapRun(0, PAGES_PER_SECTION, VMEMMAP),)


def test_invalid_mem_section_is_a_typed_error(tmp_path: Path) -> None:
    tk = TinyKernel(128 * MIB)
    tk.set_section_word(0, 0x1234000 | 0x1)  # present, decoded mem_map not a kernel address
    kernel, info = tk.build(tmp_path / "mem")
    with pytest.raises(CorruptDumpError) as err:
        locate_mem_map(kernel, info, PAGES_PER_SECTION)
    assert err.value.field == "SYMBOL(mem_section)"


def test_mem_section_pointer_into_nowhere(tmp_path: Path) -> None:
    tk = TinyKernel(128 * MIB)
    tk.info["SYMBOL(mem_section)"] = "ffff88ffff000000"  # unmapped
    kernel, info = tk.build(tmp_path / "mem")
    with pytest.raises(CorruptDumpError):
        locate_mem_map(kernel, info, PAGES_PER_SECTION)


def test_root_pointing_outside_the_dump_degrades(tmp_path: Path) -> None:
    tk = TinyKernel(2 * 128 * MIB, sections=[0])
    # root 1 (sections 256..511) points at an unmapped kernel address
    tk.image.write_u64(tk.ROOT_ARRAY + 8, 0xFFFF88FFFF000000)
    kernel, info = tk.build(tmp_path / "mem")
    mm = locate_mem_map(kernel, info, 300 * PAGES_PER_SECTION)
    assert mm.runs == (MemMapRun(0, PAGES_PER_SECTION, VMEMMAP),)
    assert mm.max_mapnr == PAGES_PER_SECTION
    assert any("could not be read" in p for p in mm.problems)


def test_missing_keys(tmp_path: Path) -> None:
    tk = TinyKernel(128 * MIB)
    del tk.info["SIZE(mem_section)"]
    kernel, info = tk.build(tmp_path / "mem")
    with pytest.raises(MissingVmcoreInfoKey) as err:
        locate_mem_map(kernel, info, PAGES_PER_SECTION)
    assert err.value.key == "SIZE(mem_section)"
    tk = TinyKernel(128 * MIB)
    del tk.info["SYMBOL(mem_section)"]
    tk.info["SYMBOL(mem_map)"] = "ffffffff82000000"
    kernel, info = tk.build(tmp_path / "mem2")
    with pytest.raises(UnsupportedError):
        locate_mem_map(kernel, info, PAGES_PER_SECTION)


def test_32_byte_mem_section(tmp_path: Path) -> None:
    # Fedora 6.2: SIZE(mem_section)=32, LENGTH(mem_section)=4096 → 128 sections per root
    tk = TinyKernel(128 * MIB, sections=[])
    tk.info.update({"SIZE(mem_section)": 32, "LENGTH(mem_section)": 4096})
    for nr in (0, 129):  # 129 is in root 1 when a root holds 128 sections
        root, idx = divmod(nr, 128)
        root_page = tk.ROOT_PAGES + root * PAGE
        tk.image.write_u64(tk.ROOT_ARRAY + 8 * root, PAGE_OFFSET + root_page)
        tk.image.write_u64(root_page + idx * 32, VMEMMAP | 0x3)
    kernel, info = tk.build(tmp_path / "mem")
    mm = locate_mem_map(kernel, info, 130 * PAGES_PER_SECTION)
    assert [r.start_pfn // PAGES_PER_SECTION for r in mm.runs] == [0, 129]
    assert mm.max_mapnr == 130 * PAGES_PER_SECTION
