"""Synthetic crashed x86_64 machines as ELF vmcores, plus the expected answer for each.

Written from the kernel's headers and makedumpfile's own rules (diskdump_mod.h,
__exclude_unnecessary_pages, the crash_dump_bitmap RFC), never from cdbdump's reader or
scanner. Builders import only cdbdump.formats.* and cdbdump.mm.{levels,counts}.

Quick start (the ``tiny_kernel`` fixture in tests/conftest.py does the first two lines)::

    from tests.builders import SyntheticKernel, DumpLevel, pack_bitmap

    k = SyntheticKernel("6.12", seed=3)          # 64 MiB machine, RAM below and above 4 GiB
    k.write(tmp_path / "vmcore")                  # sparse ELF vmcore (/proc/vmcore layout)
    k.max_mapnr                                   # int
    k.first_bitmap()                              # bool[max_mapnr]: pfns covered by PT_LOADs
    k.expected_dumpable(31)                       # bool[max_mapnr]: makedumpfile's 2nd bitmap
    k.expected_counts(31)                         # cdbdump.mm.counts.PageCounts
    k.expected_zero_pages(1)                      # bool[max_mapnr]
    k.page_bytes(pfn)                             # 4096 bytes as the dump holds that page
    pack_bitmap(k.expected_dumpable(31))          # makedumpfile bitmap bytes (LSB first)

The machine (SyntheticKernel keyword arguments, all optional):

* dialect: "5.10" "6.1" "6.3" "6.6" "6.9" "6.10" "6.12" "6.16" "7.1" (tests/builders/
  dialects.py says what each encodes differently); layout: "proc_vmcore" | "qemu";
  five_level; seed; nr_cpus.
* ram=[(start, end), ...] e820 usable bytes, or ram_size=N (e.g. 256 << 20, 64 << 30; big
  machines want data_fraction=0.01 so that few pages hold data); crashkernel=(paddr, size)
  leaves a hole in the PT_LOADs (proc_vmcore); rom=True adds QEMU's BIOS LOAD at 0xfffc0000.
* mix={"free": .., "mixed": .., "anon_thp": .., "file_thp": .., "hugetlb": ..,
  "hugetlb_free": .., "slab": .., "kernel": .., "free_split": .., "unaccepted": ..}: chunk
  (2 MiB) type weights; catalog=True puts one chunk with every page class and the corner
  cases (bad order, unaligned heads, invalid free order) in every machine;
  gigantic_hugetlb=N adds 1 GiB hugetlb folios.
* crash_dump_bitmap=LEVEL: the RFC kernel side (SYMBOL(crash_dump_bitmap_info) + bitmap
  filled at LEVEL); crash_dump_bitmap_info={"version": 2, "bitmap": 0, ...} overrides
  fields to make broken inputs. k.expected_kernel_bitmap(), k.crash_dump_bitmap_info_values(),
  k.expected_dumpable_q() (1st bitmap AND kernel bitmap) and k.expected_counts_q(level)
  (the struct's counters + zero pages at level & 1) for the -q path.
* sme_mask=1 << 47 (C-bit in every page-table entry and NUMBER(sme_mask)),
  section_flag_bit5=True (§4.4 mask trap), mem_section_size=32, vmemmap_4k_sections=(0,),
  vmcoreinfo_overrides={"NUMBER(phys_base)": 5}, vmcoreinfo_drop=("NUMBER(PG_hwpoison)",),
  crashtime=None.

Inspecting the machine: k.vmcoreinfo (bytes), k.symbols, k.phys_base, k.kerneloffset,
k.page_offset_base, k.vmemmap_base, k.vtop(vaddr) (builder's intended translation),
k.pagetables (PageTableBuilder: plant(vaddr, depth, value), plant_outside, plant_self_loop,
entry_location), k.kind(pfn) / k.pfns_of(PageKind.X, Role.HEAD), k.struct_page_bytes(pfn),
k.struct_page_vaddr(pfn), k.loads(), k.scan_runs(level), k.catalog_chunk.

Breaking the ELF: ``b = k.elf_builder(); b.override_ehdr(e_phnum=3); b.loads[1].overrides
["p_filesz"] = 0x1000; b.notes_raw = b"junk"; b.write(path)`` (also force_xnum=True for
PN_XNUM). Low level: ElfCoreBuilder(layout).add_prstatus(cpu) / add_vmcoreinfo(text) /
add_load(paddr, data=bytes|PhysSource|None, memsz=, filesz=, vaddr=) / build() / write();
make_vmcoreinfo("6.6", drop=(...), crashtime=..., **{"SYMBOL(mem_section)": 0x...}).

Oracle semantics (tests/builders/oracle.py): makedumpfile >= 1.7.6 behaviour, one cycle:
a PT_LOAD ending mid-page makes that page present and dumpable (1.7.2 drops it); counters
grow per cleared bit below max_mapnr; pages beyond p_filesz are cleared but not counted;
zero pages stay in the kdump 2nd bitmap and are counted among dumpable pages at level & 1.
"""

from __future__ import annotations

from cdbdump.mm.counts import PageCounts
from cdbdump.mm.levels import DumpLevel
from tests.builders.dialects import DIALECTS, Dialect, get_dialect
from tests.builders.elfcore import ElfCoreBuilder, make_note, make_prstatus
from tests.builders.kernel import (
    CRASH_DUMP_BITMAP_INFO,
    CRASH_DUMP_BITMAP_INFO_VERSION,
    SyntheticKernel,
    default_ram,
    pack_bitmap,
)
from tests.builders.pagetables import PageTableBuilder
from tests.builders.physmem import PhysImage, describe_word, pattern_pages
from tests.builders.structpage import PageKind, Role
from tests.builders.vmcoreinfo import make_vmcoreinfo

__all__ = (
    "CRASH_DUMP_BITMAP_INFO",
    "CRASH_DUMP_BITMAP_INFO_VERSION",
    "DIALECTS",
    "Dialect",
    "DumpLevel",
    "ElfCoreBuilder",
    "PageCounts",
    "PageKind",
    "PageTableBuilder",
    "PhysImage",
    "Role",
    "SyntheticKernel",
    "default_ram",
    "describe_word",
    "get_dialect",
    "make_note",
    "make_prstatus",
    "make_vmcoreinfo",
    "pack_bitmap",
    "pattern_pages",
)
