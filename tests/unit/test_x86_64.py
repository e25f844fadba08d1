"""PageTableWalker and KernelMemory on small hand-made page tables.

The helpers here (PhysImage, PageTables) build physical memory and x86_64 page
tables from scratch, independently of the code under test; test_memmodel,
test_classify and test_scan reuse them.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from cdbdump.errors import BadVmcoreInfoValue, MissingVmcoreInfoKey, NotInDumpError, NotMappedError
from cdbdump.fileio import MappedFile
from cdbdump.memory.kernel import KernelMemory
from cdbdump.memory.physical import ElfMemory
from cdbdump.memory.x86_64 import PageTableWalker
from cdbdump.vmcore.elfcore import LoadSegment
from cdbdump.vmcore.vmcoreinfo import VmcoreInfo

PAGE = 4096
MIB = 1 << 20
GIB = 1 << 30
START_KERNEL_MAP = 0xFFFFFFFF80000000
PRESENT, RW, PSE = 0x1, 0x2, 0x80


class PhysImage:
    """Sparse physical memory: page-aligned dict of bytearrays, written to a flat file."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.pages: dict[int, bytearray] = {}

    def write(self, paddr: int, data: bytes) -> None:
        while data:
            base = paddr & ~(PAGE - 1)
            off = paddr - base
            n = min(len(data), PAGE - off)
            page = self.pages.setdefault(base, bytearray(PAGE))
            page[off : off + n] = data[:n]
            paddr += n
            data = data[n:]

    def write_u64(self, paddr: int, value: int) -> None:
        self.write(paddr, struct.pack("<Q", value & (2**64 - 1)))

    def read(self, paddr: int, size: int) -> bytes:
        out = bytearray()
        while size:
            base = paddr & ~(PAGE - 1)
            off = paddr - base
            n = min(size, PAGE - off)
            out += self.pages.get(base, bytes(PAGE))[off : off + n]
            paddr += n
            size -= n
        return bytes(out)

    def to_phys(
        self, path: Path, segments: list[tuple[int, int]] | None = None,
        filesz: dict[int, int] | None = None,
    ) -> ElfMemory:
        """Write [paddr, end) segments (default: all memory) to ``path`` as PT_LOAD data."""
        segments = segments or [(0, self.size)]
        loads = []
        offset = 0
        with path.open("wb") as f:
            for index, (lo, hi) in enumerate(segments):
                size = (filesz or {}).get(lo, hi - lo)
                f.truncate(offset + size)
                for base, page in self.pages.items():
                    if lo <= base < lo + size:
                        f.seek(offset + base - lo)
                        f.write(page[: min(PAGE, lo + size - base)])
                loads.append(LoadSegment(index, offset, 0, lo, size, hi - lo, 7, 0))
                offset += size
        return ElfMemory(MappedFile(path), loads, PAGE)


class PageTables:
    """Builds x86_64 page tables inside a PhysImage; frames come from a bump allocator."""

    def __init__(self, image: PhysImage, levels: int = 4, alloc_at: int = 0x100000,
                 sme_mask: int = 0) -> None:
        self.image = image
        self.levels = levels
        self.sme_mask = sme_mask
        self.next_free = alloc_at
        self.root = self.alloc()
        self.shifts = (48, 39, 30, 21, 12) if levels == 5 else (39, 30, 21, 12)
        self.expected: dict[int, int] = {}  # 4 KiB vpage -> ppage, for checks

    def alloc(self) -> int:
        paddr = self.next_free
        self.next_free += PAGE
        self.image.write(paddr, bytes(PAGE))
        return paddr

    def entry(self, table: int, index: int) -> int:
        value: int = struct.unpack("<Q", self.image.read(table + 8 * index, 8))[0]
        return value

    def map(self, vaddr: int, paddr: int, size: int, page_size: int = PAGE) -> None:
        assert vaddr % page_size == 0 and paddr % page_size == 0 and size % page_size == 0
        leaf_depth = {PAGE: len(self.shifts) - 1, 2 * MIB: len(self.shifts) - 2,
                      GIB: len(self.shifts) - 3}[page_size]
        for off in range(0, size, page_size):
            va, pa = vaddr + off, paddr + off
            table = self.root
            for depth, shift in enumerate(self.shifts):
                index = (va >> shift) & 511
                if depth == leaf_depth:
                    flag = PRESENT | RW | (PSE if page_size != PAGE else 0)
                    self.image.write_u64(table + 8 * index, pa | flag | self.sme_mask)
                    break
                ent = self.entry(table, index)
                if not ent & PRESENT:
                    child = self.alloc()
                    self.image.write_u64(table + 8 * index, child | PRESENT | RW | self.sme_mask)
                    ent = child
                table = ent & 0x000FFFFFFFFFF000 & ~self.sme_mask
            for k in range(0, page_size, PAGE):
                self.expected[(va + k) & (2**64 - 1)] = pa + k


def canon(va: int, levels: int = 4) -> int:
    bits = 57 if levels == 5 else 48
    return va | (~((1 << bits) - 1) & (2**64 - 1)) if va >> (bits - 1) & 1 else va


# -- walker --------------------------------------------------------------------------------


@pytest.fixture
def small(tmp_path: Path) -> tuple[PageTables, ElfMemory]:
    image = PhysImage(64 * MIB)
    pt = PageTables(image)
    pt.map(0xFFFF888000000000, 0, GIB, GIB)  # direct map with a 1 GiB page
    pt.map(0xFFFFEA0000000000, 8 * MIB, 4 * MIB, 2 * MIB)  # vmemmap, 2 MiB pages
    pt.map(0xFFFFEA0000400000, 32 * MIB, 2 * MIB, 2 * MIB)  # not contiguous with the above
    pt.map(0xFFFFC90000000000, 0x3000, 3 * PAGE)  # 4 KiB pages, physically contiguous
    pt.map(0xFFFFC90000003000, 0x9000, PAGE)
    pt.map(0x00007F0000000000, 0x20000, PAGE)  # a low-half mapping
    return pt, image.to_phys(tmp_path / "mem")


def test_translate_every_page_size(small: tuple[PageTables, ElfMemory]) -> None:
    pt, phys = small
    walker = PageTableWalker(phys, pt.root)
    assert walker.translate(0xFFFF888000123456) == 0x123456
    assert walker.translate(0xFFFFEA0000000000 + 0x1FFFFF) == 8 * MIB + 0x1FFFFF
    assert walker.translate(0xFFFFEA0000400010) == 32 * MIB + 0x10
    assert walker.translate(0xFFFFC90000002FFF) == 0x5FFF
    assert walker.translate(0xFFFFC90000003001) == 0x9001
    assert walker.translate(0x00007F0000000ABC) == 0x20ABC


def test_not_mapped_names_level_and_entry(small: tuple[PageTables, ElfMemory]) -> None:
    pt, phys = small
    walker = PageTableWalker(phys, pt.root)
    with pytest.raises(NotMappedError) as info:
        walker.translate(0xFFFFC90000004000)  # next PTE of a populated table
    assert info.value.level == "PTE" and info.value.entry == 0
    assert info.value.address == 0xFFFFC90000004000
    with pytest.raises(NotMappedError) as info:
        walker.translate(0xFFFF900000000000)
    assert info.value.level == "PGD"
    with pytest.raises(NotMappedError) as info:
        walker.translate(0x0000800000000000)  # non-canonical
    assert info.value.level == "non-canonical address"


def test_iter_runs_coalesces_and_skips(small: tuple[PageTables, ElfMemory]) -> None:
    pt, phys = small
    walker = PageTableWalker(phys, pt.root)
    runs = list(walker.iter_runs(0, 2**64))
    assert (0x00007F0000000000, 0x20000, PAGE) in runs
    assert (0xFFFF888000000000, 0, GIB) in runs
    assert (0xFFFFC90000000000, 0x3000, 3 * PAGE) in runs  # three PTEs coalesced
    assert (0xFFFFC90000003000, 0x9000, PAGE) in runs
    assert (0xFFFFEA0000000000, 8 * MIB, 4 * MIB) in runs  # two 2 MiB PMDs coalesced
    assert (0xFFFFEA0000400000, 32 * MIB, 2 * MIB) in runs
    assert len(runs) == 6
    assert runs == sorted(runs)
    # a window in the middle is clipped on both sides
    assert list(walker.iter_runs(0xFFFFEA0000001000, 0xFFFFEA0000401000)) == [
        (0xFFFFEA0000001000, 8 * MIB + 0x1000, 4 * MIB - 0x1000),
        (0xFFFFEA0000400000, 32 * MIB, 0x1000),
    ]
    # the whole covered set equals the builder's map
    covered = {}
    for vaddr, paddr, size in runs:
        if size > 64 * MIB:
            continue
        for k in range(0, size, PAGE):
            covered[vaddr + k] = paddr + k
    small_expected = {v: p for v, p in pt.expected.items() if not 0xFFFF888000000000 <= v
                      < 0xFFFF888000000000 + GIB}
    assert covered == small_expected


def test_table_outside_the_dump(tmp_path: Path) -> None:
    image = PhysImage(4 * MIB)
    pt = PageTables(image)
    pt.map(0xFFFFC90000000000, 0x3000, PAGE)
    # point a PMD at a table far outside memory
    pud = pt.entry(pt.root, (0xFFFFC90000000000 >> 39) & 511) & ~0xFFF
    pmd = pt.entry(pud, (0xFFFFC90000000000 >> 30) & 511) & ~0xFFF
    image.write_u64(pmd + 8 * 1, 0x7000000000 | PRESENT)  # covers 0xffffc90000200000
    phys = image.to_phys(tmp_path / "mem")
    walker = PageTableWalker(phys, pt.root)
    with pytest.raises(NotInDumpError) as info:
        walker.translate(0xFFFFC90000200000)
    assert info.value.address == 0x7000000000
    with pytest.raises(NotInDumpError):
        list(walker.iter_runs(0xFFFFC90000000000, 0xFFFFC90000400000))
    lenient = list(walker.iter_runs(0xFFFFC90000000000, 0xFFFFC90000400000, strict=False))
    assert lenient == [(0xFFFFC90000000000, 0x3000, PAGE)]


def test_self_referencing_tables_terminate(tmp_path: Path) -> None:
    image = PhysImage(4 * MIB)
    pt = PageTables(image)
    # every PGD entry points back at the PGD itself: the walk is bounded by depth
    for i in range(512):
        image.write_u64(pt.root + 8 * i, pt.root | PRESENT)
    walker = PageTableWalker(image.to_phys(tmp_path / "mem"), pt.root)
    runs = list(walker.iter_runs(0xFFFF800000000000, 0xFFFF800000000000 + 4 * MIB))
    # PGD → PGD as PUD → PGD as PMD → PGD as PTE table: 4 KiB leaves onto the root frame
    assert runs and all(size % PAGE == 0 for _, _, size in runs)


def test_sme_mask_is_removed(tmp_path: Path) -> None:
    sme = 1 << 47
    image = PhysImage(4 * MIB)
    pt = PageTables(image, sme_mask=sme)
    pt.map(0xFFFFC90000000000, 0x5000, PAGE)
    walker = PageTableWalker(image.to_phys(tmp_path / "mem"), pt.root, 4, sme)
    assert walker.translate(0xFFFFC90000000123) == 0x5123


def test_five_levels(tmp_path: Path) -> None:
    image = PhysImage(8 * MIB)
    pt = PageTables(image, levels=5)
    pt.map(0xFF11000000000000, 2 * MIB, 2 * MIB, 2 * MIB)
    pt.map(0x00F0000000000000, 0x7000, PAGE)  # above the 4-level 47-bit limit
    walker = PageTableWalker(image.to_phys(tmp_path / "mem"), pt.root, levels=5)
    assert walker.translate(0xFF11000000012345) == 2 * MIB + 0x12345
    assert walker.translate(0x00F0000000000042) == 0x7042
    assert list(walker.iter_runs(0, 2**64)) == [
        (0x00F0000000000000, 0x7000, PAGE),
        (0xFF11000000000000, 2 * MIB, 2 * MIB),
    ]


def test_table_cache_is_bounded(small: tuple[PageTables, ElfMemory]) -> None:
    pt, phys = small
    walker = PageTableWalker(phys, pt.root, max_cached_tables=2)
    for va in pt.expected:
        walker.translate(va)
    assert len(walker._tables) <= 2


# -- KernelMemory -----------------------------------------------------------------------------


def _vmcoreinfo(**numbers: int | str) -> VmcoreInfo:
    lines = [f"{k}={v}" for k, v in numbers.items()]
    return VmcoreInfo.parse("\n".join(lines).encode() + b"\n")


def test_kernel_memory_root_from_phys_base(tmp_path: Path) -> None:
    image = PhysImage(16 * MIB)
    pt = PageTables(image, alloc_at=0x200000)
    phys_base = -0x40000000  # KASLR: the image is below its link address
    # init_top_pgt's link address such that link - START_KERNEL_MAP + phys_base = root
    top = pt.root - phys_base + START_KERNEL_MAP
    pt.map(0xFFFF888000000000, 0, 16 * MIB, 2 * MIB)
    image.write(0x1234, b"hello kernel")
    phys = image.to_phys(tmp_path / "mem")
    keys: dict[str, int | str] = {"SYMBOL(init_top_pgt)": f"{top:x}",
                                  "NUMBER(phys_base)": phys_base,
                                  "NUMBER(pgtable_l5_enabled)": 0, "NUMBER(sme_mask)": 0}
    info = _vmcoreinfo(**keys)
    kernel = KernelMemory.from_vmcoreinfo(phys, info)
    assert kernel.walker.root_paddr == pt.root
    assert kernel.read(0xFFFF888000001234, 12) == b"hello kernel"
    assert kernel.read_u64(0xFFFF888000001234) == int.from_bytes(b"hello ke", "little")
    assert kernel.kernel_image_paddr(START_KERNEL_MAP + 0x1000000) == 0x1000000 + phys_base
    # a read across a 2 MiB boundary
    image_bytes = image.read(2 * MIB - 5, 10)
    assert kernel.read(0xFFFF888000000000 + 2 * MIB - 5, 10) == image_bytes
    with pytest.raises(NotMappedError):
        kernel.read(0xFFFF888000000000 + 16 * MIB - 4, 8)


def test_kernel_memory_read_into_reports_holes(tmp_path: Path) -> None:
    image = PhysImage(16 * MIB)
    pt = PageTables(image)
    pt.map(0xFFFFEA0000000000, 4 * MIB, 2 * MIB, 2 * MIB)
    pt.map(0xFFFFEA0000400000, 12 * MIB, 2 * MIB, 2 * MIB)  # physically beyond p_filesz
    image.write(4 * MIB, b"\xAA" * 64)
    phys = image.to_phys(tmp_path / "mem", [(0, 16 * MIB)], filesz={0: 13 * MIB})
    kernel = KernelMemory(phys, PageTableWalker(phys, pt.root), phys_base=0,
                          page_offset=0xFFFF888000000000)
    out = np.full(6 * MIB, 0xFF, dtype=np.uint8)
    missing = kernel.read_into(0xFFFFEA0000000000, out)
    assert missing == [(2 * MIB, 2 * MIB), (4 * MIB + MIB, MIB)]
    assert bytes(out[:64]) == b"\xAA" * 64
    assert not out[2 * MIB : 4 * MIB].any()
    assert not out[5 * MIB :].any()
    # gather of an ELF file reads straight into the caller's scratch (no buffer per call)
    scratch = np.empty(MIB, dtype=np.uint8)
    data, missing = kernel.gather(0xFFFFEA0000000000, scratch)
    assert missing == [] and data is scratch and bytes(data[:64]) == b"\xAA" * 64


@pytest.mark.parametrize(
    ("key", "value", "error"),
    [
        ("NUMBER(pgtable_l5_enabled)", "7", BadVmcoreInfoValue),
        ("NUMBER(sme_mask)", "1", BadVmcoreInfoValue),
        ("NUMBER(phys_base)", "5", BadVmcoreInfoValue),  # root not page aligned
        ("SYMBOL(init_top_pgt)", "ffff888000000000", BadVmcoreInfoValue),
    ],
)
def test_kernel_memory_rejects_absurd_keys(tmp_path: Path, key: str, value: str,
                                           error: type[Exception]) -> None:
    image = PhysImage(4 * MIB)
    phys = image.to_phys(tmp_path / "mem")
    base: dict[str, int | str] = {"SYMBOL(init_top_pgt)": "ffffffff82000000",
                                  "NUMBER(phys_base)": "0"}
    base[key] = value
    with pytest.raises(error) as info:
        KernelMemory.from_vmcoreinfo(phys, _vmcoreinfo(**base))
    assert key in str(info.value) or "phys_base" in str(info.value)


def test_kernel_memory_needs_a_top_table(tmp_path: Path) -> None:
    phys = PhysImage(4 * MIB).to_phys(tmp_path / "mem")
    with pytest.raises(MissingVmcoreInfoKey) as info:
        KernelMemory.from_vmcoreinfo(phys, _vmcoreinfo(**{"NUMBER(phys_base)": 0}))
    assert info.value.key == "SYMBOL(init_top_pgt)"


def test_kernel_memory_old_symbol_and_loads_fallbacks(tmp_path: Path) -> None:
    phys = PhysImage(4 * MIB).to_phys(tmp_path / "mem")
    info = _vmcoreinfo(**{"SYMBOL(init_level4_pgt)": "ffffffff81e0a000"})
    text = LoadSegment(0, 0, START_KERNEL_MAP + 0x1000000, 0x1000000 + 0x200000, 0, 0, 7, 0)
    direct = LoadSegment(1, 0, 0xFFFF9C8A00100000, 0x100000, 0, 0, 7, 0)
    kernel = KernelMemory.from_vmcoreinfo(phys, info, loads=[text, direct])
    assert kernel.phys_base == 0x200000
    assert kernel.walker.root_paddr == 0x1E0A000 + 0x200000
    assert kernel.page_offset == 0xFFFF9C8A00000000


# -- run_arrays against a page-by-page oracle --------------------------------------------------


def _as_runs(arrays: tuple[np.ndarray, np.ndarray, np.ndarray]) -> list[tuple[int, int, int]]:
    vaddr, paddr, size = arrays
    assert vaddr.dtype == np.uint64 and paddr.dtype == np.int64 and size.dtype == np.int64
    return list(zip(vaddr.tolist(), paddr.tolist(), size.tolist(), strict=True))


def _oracle_runs(pt: PageTables, lo: int, hi: int) -> list[tuple[int, int, int]]:
    """The mapped part of [lo, hi), one page at a time (4 KiB, 2 MiB or 1 GiB as mapped),
    each translated from the tables in ``pt.image``; a table outside the image is not in
    the dump and leaves its span unmapped; pages that continue virtually and physically
    coalesce."""
    half = 1 << (pt.shifts[0] + 8)
    last = len(pt.shifts) - 1
    runs: list[list[int]] = []
    vaddr = lo
    while vaddr < hi:
        if half <= vaddr < 2**64 - half:  # the non-canonical hole
            vaddr = 2**64 - half
            continue
        table, paddr, span = pt.root, None, 0
        for depth, shift in enumerate(pt.shifts):
            span = 1 << shift
            entry = pt.entry(table, (vaddr >> shift) & 511)
            if not entry & PRESENT:
                break
            frame = entry & 0x000FFFFFFFFFF000 & ~pt.sme_mask
            if depth == last or (depth >= last - 2 and entry & PSE):
                paddr = (frame & ~(span - 1)) + (vaddr & (span - 1))
                break
            if frame >= pt.image.size:
                break
            table = frame
        end = min((vaddr & ~(span - 1)) + span, hi)
        if paddr is not None:
            if runs and runs[-1][0] + runs[-1][2] == vaddr and runs[-1][1] + runs[-1][2] == paddr:
                runs[-1][2] += end - vaddr
            else:
                runs.append([vaddr, paddr, end - vaddr])
        vaddr = end
    return [(v, p, n) for v, p, n in runs]


def _messy_tables(tmp_path: Path, levels: int, seed: int) -> tuple[PageTables, PageTableWalker]:
    """Random 1 GiB / 2 MiB / 4 KiB mappings, some contiguous, some scattered; non-present
    entries that carry a frame; a PMD pointing at a table outside the dump."""
    rng = np.random.default_rng(seed)
    image = PhysImage(64 * MIB)
    pt = PageTables(image, levels=levels)
    high = 0xFF11000000000000 if levels == 5 else 0xFFFFEA0000000000
    pt.map(high - 4 * GIB, 0, 2 * GIB, GIB)  # two 1 GiB pages, contiguous
    for i in rng.choice(64, 24, replace=False).tolist():  # vmemmap-like, frames scattered
        frame = int(rng.integers(16, 30)) * 2 * MIB
        pt.map(high + i * 2 * MIB, frame, 2 * MIB, 2 * MIB)
    for i in rng.choice(1024, 200, replace=False).tolist():  # 4 KiB pages, some runs
        frame = (0x1000 + (i if rng.random() < 0.5 else int(rng.integers(0, 4096)))) * PAGE
        pt.map(high + 256 * MIB + i * PAGE, frame, PAGE)
    pt.map(0x00007F0000000000, 0x20000, 3 * PAGE)  # low half, ends at the canonical hole
    half = 1 << (pt.shifts[0] + 8)
    pt.map(half - PAGE, 0x30000, PAGE)  # last page of the low half and, physically next,
    pt.map(2**64 - half, 0x31000, PAGE)  # the first of the upper half: two runs, not one
    # non-present entries with frame bits set must be skipped, not followed
    pmd = pt.root
    for shift in pt.shifts[:-2]:  # down to the PMD table of ``high``
        pmd = pt.entry(pmd, (high >> shift) & 511) & 0x000FFFFFFFFFF000
    free = [i for i in range(64, 200) if not pt.entry(pmd, i) & PRESENT]
    image.write_u64(pmd + 8 * free[0], 0x1400000 | PSE | RW)  # a 2 MiB leaf, not present
    image.write_u64(pmd + 8 * free[1], 0x5000 | RW)  # a table pointer, not present
    image.write_u64(pmd + 8 * free[2], 0x7000000000 | PRESENT)  # a table not in the dump
    phys = image.to_phys(tmp_path / f"mem{levels}{seed}")
    return pt, PageTableWalker(phys, pt.root, levels)


@pytest.mark.parametrize(("levels", "seed"), [(4, 1), (4, 2), (5, 3)])
def test_run_arrays_equals_a_page_by_page_walk(tmp_path: Path, levels: int, seed: int) -> None:
    pt, walker = _messy_tables(tmp_path, levels, seed)
    rng = np.random.default_rng(seed)
    high = 0xFF11000000000000 if levels == 5 else 0xFFFFEA0000000000
    windows = [(0, 2**64), (high - 3 * GIB - 5 * PAGE, high + 300 * MIB)]
    for _ in range(40):  # random windows, page-aligned or not, inside the mapped area
        a, b = sorted(rng.integers(0, 5 * GIB, 2).tolist())
        windows.append((high - 4 * GIB + a, high - 4 * GIB + b + 1))
    windows.append((0x00007F0000001000, high))  # across the canonical hole
    for vstart, vend in windows:
        expected = _oracle_runs(pt, vstart, vend)
        assert _as_runs(walker.run_arrays(vstart, vend, strict=False)) == expected, (
            hex(vstart), hex(vend))
        assert list(walker.iter_runs(vstart, vend, strict=False)) == expected
    everything = _as_runs(walker.run_arrays(0, 2**64, strict=False))
    assert len(everything) > 20  # scattered frames stay separate runs
    # and both cover exactly the builder's mappings
    covered = {}
    for vaddr, paddr, size in everything:
        if size <= 64 * MIB:
            for k in range(0, size, PAGE):
                covered[vaddr + k] = paddr + k
    assert covered == {v: p for v, p in pt.expected.items() if not high - 4 * GIB <= v < high}
    # the table outside the dump: strict raises
    with pytest.raises(NotInDumpError):
        walker.run_arrays(high, high + GIB)


def test_run_arrays_of_nothing(small: tuple[PageTables, ElfMemory]) -> None:
    pt, phys = small
    walker = PageTableWalker(phys, pt.root)
    assert _as_runs(walker.run_arrays(0xFFFF900000000000, 0xFFFF900000100000)) == []
    assert _as_runs(walker.run_arrays(0, 2**64)) == _oracle_runs(pt, 0, 2**64)
