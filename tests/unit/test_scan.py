"""exclude_unnecessary_pages and memory_usage on a TinyKernel.

Expected bitmaps and counts are worked out by hand from makedumpfile's rules.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cdbdump.bitmap import Bitmap
from cdbdump.errors import BadVmcoreInfoValue, CorruptDumpError, MissingVmcoreInfoKey
from cdbdump.fileio import MappedFile
from cdbdump.memory.kernel import KernelMemory
from cdbdump.memory.physical import ElfMemory, data_pfn_ranges
from cdbdump.mm.counts import PageCounts
from cdbdump.mm.levels import DumpLevel
from cdbdump.mm.memmodel import MemMap, locate_mem_map
from cdbdump.mm.scan import exclude_unnecessary_pages, memory_usage
from cdbdump.vmcore.elfcore import ElfCore
from cdbdump.vmcore.vmcoreinfo import VmcoreInfo
from tests.builders import SyntheticKernel
from tests.oracles import oracle_unavailable
from tests.unit.test_memmodel import PAGE_OFFSET, PAGES_PER_SECTION, VMEMMAP, TinyKernel
from tests.unit.test_x86_64 import MIB, PAGE

LRU, PRIVATE, HEAD = 1 << 4, 1 << 13, 1 << 16
SECTION_BYTES = PAGES_PER_SECTION * PAGE


def full_bitmap(nr: int) -> Bitmap:
    bm = Bitmap(nr)
    bm.set_range(0, nr)
    return bm


def cleared(bm: Bitmap) -> list[int]:
    return np.flatnonzero(~bm.get_bools(0, bm.nr_bits)).tolist()


@pytest.fixture
def tk() -> TinyKernel:
    k = TinyKernel(2 * SECTION_BYTES)
    k.set_page(100, mapcount=-129, private=2)  # free 100..103 (misaligned is fine)
    k.set_page(200, flags=LRU, mapping=PAGE_OFFSET + 0x5000)  # page cache
    k.set_page(201, flags=LRU | PRIVATE, mapping=PAGE_OFFSET + 0x5000)  # private cache
    k.set_page(300, flags=LRU, mapping=PAGE_OFFSET + 0x5001)  # anon
    k.set_page(400, mapcount=-257)  # offline
    # an order-10 free block straddling the 64 Ki window used below
    k.set_page(PAGES_PER_SECTION - 1024, mapcount=-129, private=10)
    return k


@pytest.mark.parametrize(
    ("level", "expected", "counts"),
    [
        (0, [], PageCounts()),  # no PG_hwpoison: makedumpfile does not scan at all
        (2, [200, 400], PageCounts(cache=1, offline=1)),
        (4, [200, 201, 400], PageCounts(cache=1, cache_private=1, offline=1)),
        (8, [300, 400], PageCounts(user=1, offline=1)),
        (16, [100, 101, 102, 103, 400, *range(PAGES_PER_SECTION - 1024, PAGES_PER_SECTION)],
         PageCounts(free=1028, offline=1)),
        (31, [100, 101, 102, 103, 200, 201, 300, 400,
              *range(PAGES_PER_SECTION - 1024, PAGES_PER_SECTION)],
         PageCounts(free=1028, cache=1, cache_private=1, user=1, offline=1)),
    ],
)
def test_levels(tmp_path: Path, tk: TinyKernel, level: int, expected: list[int],
                counts: PageCounts) -> None:
    kernel, info = tk.build(tmp_path / "mem")
    nr = tk.ram // PAGE
    bm = full_bitmap(nr)
    result = exclude_unnecessary_pages(kernel, info, DumpLevel(level), bm, window=1 << 14)
    if level == 0:
        # -d 0 without NUMBER(PG_hwpoison): makedumpfile does not scan at all
        assert not result.ran and cleared(bm) == [] and result.counts == PageCounts()
        return
    assert result.ran
    assert cleared(bm) == expected
    assert result.counts == counts
    assert result.nr_struct_pages == nr and result.nr_unreadable == 0


def test_level_0_with_hwpoison_scans(tmp_path: Path, tk: TinyKernel) -> None:
    tk.info["NUMBER(PG_hwpoison)"] = 23
    tk.set_page(500, flags=1 << 23)
    kernel, info = tk.build(tmp_path / "mem")
    bm = full_bitmap(tk.ram // PAGE)
    result = exclude_unnecessary_pages(kernel, info, DumpLevel(0), bm)
    assert result.ran and cleared(bm) == [400, 500]
    assert result.counts == PageCounts(hwpoison=1, offline=1)


def test_only_pages_in_the_dump_are_classified(tmp_path: Path, tk: TinyKernel) -> None:
    # a hole over pfns 192..255, and p_filesz of the 2nd PT_LOAD stops at pfn 350
    kernel, info = tk.build(tmp_path / "mem",
                            segments=[(0, 192 * PAGE), (256 * PAGE, 1024 * PAGE),
                                      (1024 * PAGE, tk.ram)],
                            filesz={256 * PAGE: (350 - 256) * PAGE})
    bm = Bitmap(tk.ram // PAGE)
    bm.set_range(0, 192)
    bm.set_range(256, 350)
    bm.set_range(1024, bm.nr_bits)
    result = exclude_unnecessary_pages(kernel, info, DumpLevel(31), bm)
    # 200/201 are in the hole and 400 beyond p_filesz: not classified
    block = range(PAGES_PER_SECTION - 1024, PAGES_PER_SECTION)
    assert cleared(bm) == [100, 101, 102, 103, *range(192, 256), 300, *range(350, 1024),
                           *block]
    assert result.counts == PageCounts(free=1028, user=1)


def test_unreadable_mem_map_degrades(tmp_path: Path, tk: TinyKernel) -> None:
    # the vmemmap backing of section 1 is not in the dump: its pages stay dumpable
    tk.set_page(PAGES_PER_SECTION + 5, flags=LRU, mapping=0x1000)
    backing = tk.backing[1]
    kernel, info = tk.build(tmp_path / "mem", segments=[(0, backing), (backing + 2 * MIB,
                                                                       tk.ram)])
    bm = full_bitmap(tk.ram // PAGE)
    bm.clear_range(backing // PAGE, backing // PAGE + 512)
    result = exclude_unnecessary_pages(kernel, info, DumpLevel(31), bm)
    assert PAGES_PER_SECTION + 5 not in cleared(bm)
    assert result.nr_unreadable == PAGES_PER_SECTION
    assert any("could not be read" in p for p in result.problems)
    assert result.counts.cache == 1  # pfn 200 of section 0 still classified


def test_mem_map_and_max_mapnr_from_the_pipeline(tmp_path: Path) -> None:
    k = TinyKernel(3 * SECTION_BYTES, sections=[0])  # RAM beyond the last mem_map
    k.set_page(7, flags=LRU, mapping=0x2000)
    kernel, info = k.build(tmp_path / "mem")
    mm = locate_mem_map(kernel, info, 3 * PAGES_PER_SECTION)
    assert mm.max_mapnr == PAGES_PER_SECTION
    bm = full_bitmap(mm.max_mapnr)
    progress: list[tuple[int, int]] = []
    result = exclude_unnecessary_pages(kernel, info, DumpLevel(2), bm,
                                       lambda s, d, t: progress.append((d, t)), mem_map=mm,
                                       window=8192)
    assert cleared(bm) == [7] and result.counts == PageCounts(cache=1)
    assert progress[-1] == (PAGES_PER_SECTION, PAGES_PER_SECTION) and len(progress) == 4


def test_free_list_fallback(tmp_path: Path) -> None:
    # no PAGE_BUDDY_MAPCOUNT_VALUE: free pages come from zone free lists (§4.5)
    k = TinyKernel(SECTION_BYTES)
    del k.info["NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)"]
    pgdat = 0x60000
    zone = pgdat + 0x100
    nr_orders, nr_types, list_head, free_area_size = 11, 2, 16, 104
    lru = 8
    k.info.update({
        "SYMBOL(node_online_map)": f"{PAGE_OFFSET + 0x5F000:x}", "SIZE(nodemask_t)": 8,
        "SYMBOL(node_data)": f"{PAGE_OFFSET + 0x5F100:x}", "LENGTH(node_data)": 64,
        "OFFSET(pglist_data.node_zones)": 0x100, "OFFSET(pglist_data.nr_zones)": 0x80,
        "SIZE(zone)": 0x600, "OFFSET(zone.spanned_pages)": 0x40,
        "OFFSET(zone.free_area)": 0x80, "SIZE(free_area)": free_area_size,
        "OFFSET(free_area.free_list)": 0, "SIZE(list_head)": list_head,
        "OFFSET(list_head.next)": 0, "OFFSET(list_head.prev)": 8,
        "LENGTH(free_area.free_list)": nr_types,
    })
    img = k.image
    img.write_u64(0x5F000, 1)  # node 0 online
    img.write_u64(0x5F100, PAGE_OFFSET + pgdat)
    img.write(pgdat + 0x80, (1).to_bytes(4, "little"))  # nr_zones
    img.write_u64(zone + 0x40, PAGES_PER_SECTION)  # spanned_pages
    heads = {}
    for order in range(nr_orders):
        for mtype in range(nr_types):
            head = PAGE_OFFSET + zone + 0x80 + free_area_size * order + list_head * mtype
            heads[order, mtype] = head
            img.write_u64(head - PAGE_OFFSET, head)  # empty: next = prev = head
            img.write_u64(head - PAGE_OFFSET + 8, head)

    def link(order: int, mtype: int, pfn_list: list[int]) -> None:
        head = heads[order, mtype]
        nodes = [VMEMMAP + pfn * 64 + lru for pfn in pfn_list]
        chain = [head, *nodes, head]
        for prev, node, nxt in zip(chain, chain[1:], chain[2:], strict=False):
            paddr = kernel_paddr(node)
            img.write_u64(paddr, nxt)
            img.write_u64(paddr + 8, prev)
        img.write_u64(head - PAGE_OFFSET, chain[1])
        img.write_u64(head - PAGE_OFFSET + 8, chain[-2])

    def kernel_paddr(vaddr: int) -> int:
        if vaddr >= VMEMMAP:
            return k.struct_page_paddr((vaddr - VMEMMAP) // 64) + (vaddr - VMEMMAP) % 64
        return vaddr - PAGE_OFFSET

    link(3, 0, [64, 128])
    link(0, 1, [300])
    kernel, info = k.build(tmp_path / "mem")
    bm = full_bitmap(PAGES_PER_SECTION)
    result = exclude_unnecessary_pages(kernel, info, DumpLevel(16), bm)
    assert result.free_pages_method == "free lists"
    assert cleared(bm) == [*range(64, 72), *range(128, 136), 300]
    assert result.counts == PageCounts(free=17)

    # break the second entry's prev pointer: the first entry stays excluded, the walk
    # of that list stops there, and the problem is named
    img.write_u64(kernel_paddr(VMEMMAP + 128 * 64 + lru) + 8, 0xDEAD000)
    kernel, info = k.build(tmp_path / "mem2")
    bm = full_bitmap(PAGES_PER_SECTION)
    result = exclude_unnecessary_pages(kernel, info, DumpLevel(16), bm)
    assert cleared(bm) == [*range(64, 72), 300]
    assert result.counts == PageCounts(free=9)
    assert any("free list" in p and "broken" in p for p in result.problems)


def test_memory_usage(tmp_path: Path, tk: TinyKernel) -> None:
    for pfn in (600, 601):
        tk.image.write(pfn * PAGE, b"x")  # non-zero data
    kernel, info = tk.build(tmp_path / "mem")
    nr = tk.ram // PAGE
    usage = memory_usage(kernel, info, full_bitmap(nr))
    # everything in the sparse image is zero except page tables, mem_section,
    # struct pages and pfns 600/601
    assert usage.free == 1028 and usage.non_pri_cache == 1 and usage.pri_cache == 1
    assert usage.user == 1 and usage.offline == 1
    assert usage.total_pages == nr == usage.original_pages
    written = {base // PAGE for base in tk.image.pages}
    excluded = {100, 101, 102, 103, 200, 201, 300, 400,
                *range(PAGES_PER_SECTION - 1024, PAGES_PER_SECTION)}
    assert usage.kern_data == len(written - excluded)
    assert usage.zero == nr - len(written | excluded)
    assert [row[0] for row in usage.rows()] == [
        "ZERO", "NON_PRI_CACHE", "PRI_CACHE", "USER", "FREE", "KERN_DATA"]


# -- against the synthetic-kernel builder's oracle -------------------------------------------

DIALECTS = ("5.10", "6.1", "6.3", "6.6", "6.9", "6.10", "6.12", "6.16", "7.1")
LEVELS = (0, 1, 2, 4, 8, 16, 31)


def _open(vmcore: Path) -> tuple[KernelMemory, VmcoreInfo, MemMap]:
    core = ElfCore.parse(MappedFile(vmcore))
    assert core.vmcoreinfo is not None
    phys = ElfMemory(core.file, core.loads, PAGE)
    kernel = KernelMemory.from_vmcoreinfo(phys, core.vmcoreinfo, loads=core.loads)
    max_mapnr = -(-phys.end_paddr // PAGE)
    return kernel, core.vmcoreinfo, locate_mem_map(kernel, core.vmcoreinfo, max_mapnr)


def _pre_scan_bitmap(sk: SyntheticKernel, kernel: KernelMemory, max_mapnr: int) -> Bitmap:
    """The 2nd bitmap before the scan: present pages that hold data (exclude_nodata_pages)."""
    bm = Bitmap(max_mapnr)
    bm.put_bools(0, sk.first_bitmap()[:max_mapnr])
    data = Bitmap(max_mapnr)
    for lo, hi in data_pfn_ranges(kernel.phys, first_byte=False):
        data.set_range(lo, hi)
    bm.bits &= data.bits
    return bm


def _scan_matches_oracle(sk: SyntheticKernel, vmcore: Path, levels: tuple[int, ...]) -> None:
    kernel, info, mm = _open(vmcore)
    assert mm.max_mapnr == sk.max_mapnr
    for level in levels:
        bm = _pre_scan_bitmap(sk, kernel, mm.max_mapnr)
        result = exclude_unnecessary_pages(kernel, info, DumpLevel(level), bm, mem_map=mm)
        got = bm.get_bools(0, bm.nr_bits)
        expected = sk.expected_dumpable(level)
        diff = np.flatnonzero(got != expected)
        assert diff.size == 0, f"level {level}: {diff.size} pfns differ, first {diff[:8]}"
        counts = sk.expected_counts(level)
        counts.zero = 0  # zero pages are found while writing, not by the scan
        assert result.counts == counts, f"level {level}"
        assert result.ran == sk.scan_runs(level)
        assert result.nr_unreadable == 0


@pytest.mark.parametrize("dialect", DIALECTS)
def test_every_dialect_matches_the_oracle(tiny_vmcore: Any, dialect: str) -> None:
    sk, vmcore = tiny_vmcore(dialect, seed=11)
    _scan_matches_oracle(sk, vmcore, LEVELS)
    assert sk.expected_counts(31).total > 0  # the machine has something to exclude


@pytest.mark.parametrize(
    ("dialect", "kwargs"),
    [
        ("6.1", {"layout": "qemu"}),
        ("6.12", {"five_level": True}),
        ("6.6", {"sme_mask": 1 << 47}),
        ("6.9", {"vmemmap_4k_sections": (0, 32)}),
        # the builder exports LENGTH(mem_section) as the kernel does (test_builders.py)
        ("6.10", {"mem_section_size": 32, "section_flag_bit5": True}),
        ("6.12", {"mem_section_size": 32, "five_level": True}),
        ("7.1", {"gigantic_hugetlb": 1, "ram_size": 3 << 30, "data_fraction": 0.01}),
        ("5.10", {"ram_size": 1 << 30, "crashkernel": (0x10000000, 64 << 20),
                  "data_fraction": 0.01}),
        ("6.1", {"vmcoreinfo_overrides": {"NUMBER(PG_hwpoison)": 23}}),
        ("6.16", {"seed": 5}),
    ],
)
def test_machine_variants_match_the_oracle(tiny_vmcore: Any, dialect: str,
                                          kwargs: dict[str, Any]) -> None:
    kwargs = dict(kwargs)
    sk, vmcore = tiny_vmcore(dialect, **{"seed": 2, **kwargs})
    _scan_matches_oracle(sk, vmcore, (0, 2, 8, 16, 31))


def test_broken_vmemmap_mapping_degrades(tiny_kernel: Any, tmp_path: Path) -> None:
    sk = tiny_kernel("6.12", seed=4, fresh=True)
    section = sk.present_sections[-1]
    first = section * PAGES_PER_SECTION
    # the PMD entry mapping this section's struct pages now points far outside memory
    sk.pagetables.plant_outside(sk.struct_page_vaddr(first), 2)
    vmcore = tmp_path / "vmcore"
    sk.write(vmcore)
    kernel, info, mm = _open(vmcore)
    bm = _pre_scan_bitmap(sk, kernel, mm.max_mapnr)
    before = bm.get_bools(0, bm.nr_bits)
    result = exclude_unnecessary_pages(kernel, info, DumpLevel(31), bm, mem_map=mm)
    got = bm.get_bools(0, bm.nr_bits)
    lost = slice(first, min(first + PAGES_PER_SECTION, mm.max_mapnr))
    assert np.array_equal(got[lost], before[lost])  # nothing of that section excluded
    expected = sk.expected_dumpable(31)
    expected[lost] = before[lost]
    assert np.array_equal(got, expected)  # everything else as usual
    assert result.nr_unreadable == int(before[lost].sum()) > 0
    assert any("could not be read" in p for p in result.problems)


def test_bad_vmcoreinfo_is_a_typed_error(tiny_vmcore: Any) -> None:
    for kwargs, error, key in (
        ({"vmcoreinfo_drop": ("SIZE(page)",)}, MissingVmcoreInfoKey, "SIZE(page)"),
        ({"vmcoreinfo_overrides": {"NUMBER(PG_lru)": 77}}, BadVmcoreInfoValue, "NUMBER(PG_lru)"),
        ({"vmcoreinfo_overrides": {"SYMBOL(mem_section)": "ffffc90000000000"}},
         CorruptDumpError, "SYMBOL(mem_section)"),
    ):
        sk, vmcore = tiny_vmcore("6.1", seed=1, **kwargs)
        core = ElfCore.parse(MappedFile(vmcore))
        assert core.vmcoreinfo is not None
        phys = ElfMemory(core.file, core.loads, PAGE)
        kernel = KernelMemory.from_vmcoreinfo(phys, core.vmcoreinfo, loads=core.loads)
        with pytest.raises(error) as err:
            exclude_unnecessary_pages(kernel, core.vmcoreinfo, DumpLevel(31),
                                      Bitmap(sk.max_mapnr))
        assert key in str(err.value)


@pytest.mark.parametrize("dialect", ["5.10", "6.12"])
def test_memory_usage_matches_the_oracle(tiny_vmcore: Any, dialect: str) -> None:
    sk, vmcore = tiny_vmcore(dialect, seed=3)
    kernel, info, mm = _open(vmcore)
    present = Bitmap(mm.max_mapnr)
    present.put_bools(0, sk.first_bitmap())
    usage = memory_usage(kernel, info, present, mem_map=mm)
    counts = sk.expected_counts(31)
    assert (usage.zero, usage.non_pri_cache, usage.pri_cache, usage.user, usage.free) == (
        counts.zero, counts.cache, counts.cache_private, counts.user, counts.free)
    assert usage.original_pages == int(sk.first_bitmap().sum())
    assert usage.kern_data == usage.original_pages - counts.total
    assert usage.zero > 0


def _makedumpfile_2nd_bitmap(vmcore: Path, level: int, out: Path) -> tuple[np.ndarray, str]:
    if shutil.which("makedumpfile") is None:
        oracle_unavailable("makedumpfile is not installed")
    out.unlink(missing_ok=True)
    proc = subprocess.run(["makedumpfile", "-d", str(level), "--message-level", "31",
                           str(vmcore), str(out)], capture_output=True, text=True, check=True)
    data = out.read_bytes()
    block_size, sub_hdr_size, bitmap_blocks = struct.unpack_from("<iiI", data, 428)
    max_mapnr = struct.unpack_from("<Q", data, block_size + 96)[0]  # max_mapnr_64
    half = bitmap_blocks * block_size // 2
    start = (1 + sub_hdr_size) * block_size + half
    bits = np.unpackbits(np.frombuffer(data[start : start + half], dtype=np.uint8),
                         bitorder="little")[:max_mapnr].astype(np.bool_)
    return bits, proc.stdout + proc.stderr


@pytest.mark.oracle
@pytest.mark.parametrize(("dialect", "kwargs"), [
    ("5.10", {}), ("6.1", {"five_level": True}),
])
def test_same_as_makedumpfile(tiny_vmcore: Any, tmp_path: Path, dialect: str,
                              kwargs: dict[str, Any]) -> None:
    # Debian's makedumpfile 1.7.2 is right for kernels up to 6.2
    _, vmcore = tiny_vmcore(dialect, seed=5, **kwargs)
    kernel, info, mm = _open(vmcore)
    labels = {"cache": "Non-private cache pages", "cache_private": "Private cache pages",
              "user": "User process data pages", "free": "Free pages",
              "hwpoison": "Hwpoison pages", "offline": "Offline pages"}
    for level in (0, 4, 31):
        theirs, report = _makedumpfile_2nd_bitmap(vmcore, level, tmp_path / "out.kdump")
        assert theirs.size == mm.max_mapnr
        bm = Bitmap(mm.max_mapnr)
        bm.set_range(0, mm.max_mapnr)
        result = exclude_unnecessary_pages(kernel, info, DumpLevel(level), bm, mem_map=mm)
        ours = bm.get_bools(0, bm.nr_bits)
        # compare what the scan decides: pages holding data (1.7.2 also drops pages a
        # PT_LOAD covers only in part, which is not the scan's business)
        full = np.zeros(mm.max_mapnr, dtype=np.bool_)
        for seg in ElfCore.parse(MappedFile(vmcore)).loads:
            full[-(-seg.paddr // PAGE) : (seg.paddr + seg.filesz) // PAGE] = True
        diff = np.flatnonzero((theirs != ours) & full)
        assert diff.size == 0, f"-d {level}: {diff.size} pfns differ, first {diff[:8]}"
        for name, label in labels.items():
            found = re.search(label + r"\s*:\s*0x([0-9a-f]+)", report)
            assert found is not None, label
            assert getattr(result.counts, name) == int(found.group(1), 16), f"-d {level} {name}"


# -- the read-ahead pipeline: the same answer whatever the window and the timing -----------


@pytest.mark.parametrize(
    ("dialect", "kwargs"),
    [
        ("6.1", {"layout": "qemu"}),  # holes in RAM below 4 GiB
        ("6.9", {"vmemmap_4k_sections": (0, 32)}),  # sections without a 2 MiB mapping
        ("5.10", {"ram_size": 1 << 30, "crashkernel": (0x10000000, 64 << 20),
                  "data_fraction": 0.01}),  # a range missing from the dump
    ],
)
def test_every_window_gives_the_oracle(tiny_vmcore: Any, dialect: str,
                                       kwargs: dict[str, Any]) -> None:
    """Windows that do not divide a section (1536, 2560 pfns), the smallest one (512),
    one past a section (32768 + 512): the windows are read ahead on a thread and
    applied in order, so every one must give the oracle's bitmap and counts."""
    sk, vmcore = tiny_vmcore(dialect, **{"seed": 2, **kwargs})
    kernel, info, mm = _open(vmcore)
    counts = sk.expected_counts(31)
    counts.zero = 0
    for window in (512, 1536, 2560, PAGES_PER_SECTION + 512):
        bm = _pre_scan_bitmap(sk, kernel, mm.max_mapnr)
        result = exclude_unnecessary_pages(kernel, info, DumpLevel(31), bm, mem_map=mm,
                                           window=window)
        diff = np.flatnonzero(bm.get_bools(0, bm.nr_bits) != sk.expected_dumpable(31))
        assert diff.size == 0, f"window {window}: {diff.size} pfns differ, first {diff[:8]}"
        assert result.counts == counts, f"window {window}"


def test_a_failing_read_ahead_raises_in_the_caller(tiny_vmcore: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """An error on the reader thread reaches the caller as itself (no hang, no partial
    success), whichever window it hits."""
    sk, vmcore = tiny_vmcore("6.1", seed=2)
    kernel, info, mm = _open(vmcore)
    real_gather = kernel.gather
    calls = []

    def gather(vaddr: int, scratch: Any) -> Any:
        calls.append(vaddr)
        if len(calls) == 5:
            raise CorruptDumpError("injected read failure", field="mem_map")
        return real_gather(vaddr, scratch)

    monkeypatch.setattr(kernel, "gather", gather)
    bm = _pre_scan_bitmap(sk, kernel, mm.max_mapnr)
    with pytest.raises(CorruptDumpError, match="injected read failure"):
        exclude_unnecessary_pages(kernel, info, DumpLevel(31), bm, mem_map=mm, window=512)
    assert len(calls) >= 5
