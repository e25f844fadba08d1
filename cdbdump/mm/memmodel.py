"""Where struct page lives: SPARSEMEM (EXTREME, VMEMMAP) mem_section → mem_map runs.

reference: makedumpfile get_mem_type, is_sparsemem_extreme, get_mm_sparsemem,
get_mem_section, validate_mem_section, nr_to_section, section_mem_map_addr,
sparse_decode_mem_map, get_mem_map (makedumpfile.c). The decoded
section_mem_map gives the struct page of any pfn in the section as
``mem_map + pfn * SIZE(page)``; with VMEMMAP that is vmemmap_base + pfn * 64,
so the randomized vmemmap base never has to be known.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from cdbdump.errors import (
    AddressError,
    BadVmcoreInfoValue,
    CorruptDumpError,
    MissingVmcoreInfoKey,
    UnsupportedError,
)
from cdbdump.memory.kernel import KernelMemory
from cdbdump.vmcore.vmcoreinfo import VmcoreInfo

__all__ = ("MemMap", "MemMapRun", "locate_mem_map")

_U64_MASK = (1 << 64) - 1
# Low bits of section_mem_map are flags: bit 0 SECTION_MARKED_PRESENT, 1
# HAS_MEM_MAP, 2 IS_ONLINE, 3 IS_EARLY, 4 TAINT_ZONE_DEVICE, and since Linux
# v6.x bit 5 IS_VMEMMAP_PREINIT. makedumpfile masks ~0x1f, which would leave
# bit 5 in the pointer; the encoded pointer has at least 15 free low bits on
# x86_64, so ~0x3f is exact for every kernel (makedumpfile
# section_mem_map_addr; Linux include/linux/mmzone.h SECTION_MAP_MASK).
_SECTION_FLAG_BITS = 0x3F
_SECTION_MARKED_PRESENT = 0x1
# makedumpfile's fallbacks when VMCOREINFO lacks the numbers (x86_64).
_SECTION_SIZE_BITS_DEFAULT = 27
_MAX_PHYSMEM_BITS_L4 = 46
_MAX_PHYSMEM_BITS_L5 = 52


class MemMapRun(NamedTuple):
    """pfns [start_pfn, end_pfn) whose struct pages are contiguous from mem_map_vaddr."""

    start_pfn: int
    end_pfn: int
    mem_map_vaddr: int  # address of the struct page of start_pfn

    @property
    def nr_pages(self) -> int:
        return self.end_pfn - self.start_pfn


class MemMap(NamedTuple):
    """The located mem_map of a dump."""

    model: str  # "SPARSEMEM_EX" or "SPARSEMEM"
    runs: tuple[MemMapRun, ...]  # sections with a mem_map, coalesced, ascending
    pages_per_section: int
    struct_page_size: int
    max_mapnr: int  # lowered to the end of the highest section with a mem_map
    nr_sections_present: int
    problems: tuple[str, ...]

    @property
    def nr_struct_pages(self) -> int:
        return sum(r.nr_pages for r in self.runs)


class _Geometry(NamedTuple):
    page_shift: int
    section_size_bits: int
    max_physmem_bits: int
    mem_section_size: int  # SIZE(mem_section)
    map_offset: int  # OFFSET(mem_section.section_mem_map)
    page_struct_size: int  # SIZE(page)
    extreme: bool
    sections_per_root: int
    nr_roots: int

    @property
    def pages_per_section(self) -> int:
        return 1 << (self.section_size_bits - self.page_shift)


def _geometry(info: VmcoreInfo, levels: int) -> _Geometry:
    page_size = info.page_size or 4096
    page_shift = page_size.bit_length() - 1
    if info.get_symbol("mem_section") is None:
        if info.get_symbol("mem_map") is not None:
            raise UnsupportedError("FLATMEM kernels (SYMBOL(mem_map) without mem_section)")
        raise MissingVmcoreInfoKey("SYMBOL(mem_section)", "locating mem_map")
    mem_section_size = _required(info.get_size("mem_section"), "SIZE(mem_section)")
    map_offset = _required(info.get_offset("mem_section.section_mem_map"),
                           "OFFSET(mem_section.section_mem_map)")
    page_struct_size = _required(info.get_size("page"), "SIZE(page)")
    if not 8 <= page_struct_size <= 1024 or page_struct_size % 8:
        raise BadVmcoreInfoValue("SIZE(page)", str(page_struct_size),
                                 "not a plausible struct page size")
    if mem_section_size < 8 or mem_section_size > page_size or mem_section_size % 8:
        raise BadVmcoreInfoValue("SIZE(mem_section)", str(mem_section_size),
                                 "not a plausible struct mem_section size")
    if not 0 <= map_offset <= mem_section_size - 8:
        raise BadVmcoreInfoValue("OFFSET(mem_section.section_mem_map)", str(map_offset),
                                 "outside struct mem_section")
    ssb = info.get_number("SECTION_SIZE_BITS")
    if ssb is None:
        ssb = _SECTION_SIZE_BITS_DEFAULT
    mpb = info.get_number("MAX_PHYSMEM_BITS")
    if mpb is None:
        mpb = _MAX_PHYSMEM_BITS_L5 if levels == 5 else _MAX_PHYSMEM_BITS_L4
    if not page_shift < ssb <= 40:
        raise BadVmcoreInfoValue("NUMBER(SECTION_SIZE_BITS)", str(ssb), "not a section size")
    if not ssb < mpb <= 64 or mpb - ssb > 30:
        raise BadVmcoreInfoValue("NUMBER(MAX_PHYSMEM_BITS)", str(mpb),
                                 f"inconsistent with SECTION_SIZE_BITS={ssb}")
    nr_mem_sections = 1 << (mpb - ssb)
    per_root_extreme = page_size // mem_section_size
    length = info.get_length("mem_section")
    # reference: makedumpfile is_sparsemem_extreme
    extreme = length is None or length == -(-nr_mem_sections // per_root_extreme)
    sections_per_root = per_root_extreme if extreme else 1
    return _Geometry(
        page_shift=page_shift, section_size_bits=ssb, max_physmem_bits=mpb,
        mem_section_size=mem_section_size, map_offset=map_offset,
        page_struct_size=page_struct_size, extreme=extreme,
        sections_per_root=sections_per_root,
        nr_roots=-(-nr_mem_sections // sections_per_root),
    )


def _required(value: int | None, key: str) -> int:
    if value is None:
        raise MissingVmcoreInfoKey(key, "locating mem_map")
    return value


def locate_mem_map(kernel: KernelMemory, info: VmcoreInfo, max_mapnr: int) -> MemMap:
    """Find the mem_map of every present section below ``max_mapnr``.

    ``max_mapnr`` is makedumpfile's first estimate: the end pfn of the highest
    PT_LOAD (get_max_mapnr). The result's max_mapnr is lowered to the end of
    the highest section that has a mem_map (get_mem_map: "for the case that
    Linux uses less memory than is dumped"), which drops e.g. a QEMU ROM
    PT_LOAD above RAM.

    Raises:
        MissingVmcoreInfoKey: SYMBOL(mem_section), SIZE(mem_section), ... absent.
        UnsupportedError: a FLATMEM kernel.
        CorruptDumpError: neither SYMBOL(mem_section) nor the pointer stored
            there leads to a valid mem_section array (makedumpfile fails too:
            "Can't get the address of mem_section").
    """
    geo = _geometry(info, kernel.levels)
    symbol = info.symbol("mem_section")
    pps = geo.pages_per_section
    # sections beyond MAX_PHYSMEM_BITS cannot exist (a bogus PT_LOAD must not
    # make this loop, or makedumpfile's allocation, unbounded)
    nr_sections = min(-(-max_mapnr // pps), 1 << (geo.max_physmem_bits - geo.section_size_bits))
    problems: list[str] = []

    mem_maps = _validate(kernel, geo, symbol, nr_sections, problems)
    if mem_maps is None and geo.extreme:
        # Older layout, and -x vmlinux: SYMBOL(mem_section) is the address of
        # the pointer to the root array (makedumpfile get_mem_section retry).
        try:
            pointer = kernel.read_u64(symbol)
        except AddressError:
            pointer = None
        if pointer is not None:
            mem_maps = _validate(kernel, geo, pointer, nr_sections, problems)
    if mem_maps is None:
        raise CorruptDumpError(
            f"no valid mem_section array at {symbol:#x} nor at the pointer stored there",
            field="SYMBOL(mem_section)",
        )

    runs, present = mem_maps
    if runs:
        highest_end = min(runs[-1].end_pfn, max_mapnr)
        max_mapnr = min(max_mapnr, highest_end)
        last = runs[-1]
        runs[-1] = MemMapRun(last.start_pfn, highest_end, last.mem_map_vaddr)
    return MemMap(
        model="SPARSEMEM_EX" if geo.extreme else "SPARSEMEM",
        runs=tuple(r for r in runs if r.start_pfn < max_mapnr),
        pages_per_section=pps,
        struct_page_size=geo.page_struct_size,
        max_mapnr=max_mapnr,
        nr_sections_present=present,
        problems=tuple(problems),
    )


def _validate(
    kernel: KernelMemory, geo: _Geometry, root_array: int, nr_sections: int,
    problems: list[str],
) -> tuple[list[MemMapRun], int] | None:
    """Coalesced mem_map runs of the sections that have one, and how many sections
    have one; None if the array is invalid.

    reference: makedumpfile validate_mem_section. A section whose pointer is
    not a kernel address, or whose struct mem_section cannot be read, has no
    mem_map; a present section whose decoded mem_map is not a kernel address
    invalidates the whole array; at least one present section is required.
    Runs are built root by root, so memory stays proportional to the number
    of discontiguities, not of sections.
    """
    if geo.extreme:
        try:
            raw = kernel.read(root_array, 8 * geo.nr_roots)
        except AddressError:
            return None
        roots = np.frombuffer(raw, dtype="<u8")
    else:
        roots = np.zeros(0, dtype="<u8")

    pps = geo.pages_per_section
    section_bytes = pps * geo.page_struct_size
    runs: list[MemMapRun] = []
    present_total = 0
    unreadable = 0
    per_root = geo.sections_per_root
    for root_nr in range(-(-nr_sections // per_root)):
        first = root_nr * per_root
        last = min(first + per_root, nr_sections)
        if geo.extreme:
            root = int(roots[root_nr]) if root_nr < roots.size else 0
            if root == 0 or not kernel.is_kvaddr(root):
                continue  # no sections allocated under this root
            base = root
        else:
            base = root_array + first * geo.mem_section_size
        words, readable = _read_section_words(kernel, geo, base, last - first)
        nrs = np.arange(first, last, dtype=np.uint64)
        addrs = np.uint64(base) + (nrs - np.uint64(first)) * np.uint64(geo.mem_section_size)
        kv = addrs >= np.uint64(kernel.page_offset)
        unreadable += int((kv & ~readable).sum())
        present = kv & readable & ((words & np.uint64(_SECTION_MARKED_PRESENT)) != 0)
        if not present.any():
            continue  # no mem_map, or hot-removed
        coded = words[present] & np.uint64(~_SECTION_FLAG_BITS & _U64_MASK)
        numbers = nrs[present]
        with np.errstate(over="ignore"):
            # wraps modulo 2^64 like the C code
            mem_maps = coded + numbers * np.uint64(section_bytes)
        if bool((mem_maps < np.uint64(kernel.page_offset)).any()):
            return None  # a present section whose mem_map is not a kernel address
        present_total += int(numbers.size)
        # a new run starts where the section numbers or the struct pages jump
        with np.errstate(over="ignore"):
            breaks = ((np.diff(numbers) != 1)
                      | (np.diff(mem_maps) != np.uint64(section_bytes)))
        starts = np.concatenate(([0], np.flatnonzero(breaks) + 1)).tolist()
        ends = [*starts[1:], int(numbers.size)]
        for lo, hi in zip(starts, ends, strict=True):
            nr0, nr1 = int(numbers[lo]), int(numbers[hi - 1]) + 1
            vaddr = int(mem_maps[lo])
            prev = runs[-1] if runs else None
            if (prev is not None and prev.end_pfn == nr0 * pps
                    and prev.mem_map_vaddr + prev.nr_pages * geo.page_struct_size == vaddr):
                runs[-1] = MemMapRun(prev.start_pfn, nr1 * pps, prev.mem_map_vaddr)
            else:
                runs.append(MemMapRun(nr0 * pps, nr1 * pps, vaddr))
    if not present_total:
        return None
    if unreadable:
        problems.append(
            f"{unreadable} struct mem_section entries could not be read: their sections are "
            "treated as having no mem_map (pages kept, not classified)"
        )
    return runs, present_total


def _read_section_words(
    kernel: KernelMemory, geo: _Geometry, base: int, count: int
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.bool_]]:
    """section_mem_map of ``count`` consecutive struct mem_section at ``base``, and
    which of them could be read."""
    size = geo.mem_section_size
    words = np.zeros(count, dtype=np.uint64)
    readable = np.ones(count, dtype=np.bool_)
    try:
        raw = kernel.read(base, count * size)
    except AddressError:
        for i in range(count):  # part of it is readable: one section at a time
            try:
                words[i] = kernel.read_u64(base + i * size + geo.map_offset)
            except AddressError:
                readable[i] = False
        return words, readable
    records = np.frombuffer(raw, dtype=np.uint8).reshape(count, size)
    words[:] = records[:, geo.map_offset : geo.map_offset + 8].copy().view("<u8").ravel()
    return words, readable
