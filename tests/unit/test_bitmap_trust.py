"""-q must not trust a kernel bitmap the dump contradicts.

Each corruption (all zeros, all ones, complemented, cleared over the kernel
image, a pointer moved by a page or off page alignment) must make cdbdump fall
back to the mem_map scan, say why, and produce the scan's answer.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from cdbdump.fileio import MappedFile
from cdbdump.mm.levels import DumpLevel
from cdbdump.pipeline import DumpOptions, dump
from cdbdump.report import PathTaken
from cdbdump.vmcore.kdumpfile import KdumpFile
from tests.builders import SyntheticKernel
from tests.builders.physmem import CONTENT_PATTERN

PAGE = 4096


def _file_offset(path: Path, paddr: int) -> int:
    raw = path.read_bytes()[:0x10000]
    e_phoff, = struct.unpack_from("<Q", raw, 0x20)
    e_phnum, = struct.unpack_from("<H", raw, 0x38)
    loads = []
    for i in range(e_phnum):
        p_type, _f, off, _v, p_paddr, filesz, _m, _a = struct.unpack_from(
            "<IIQQQQQQ", raw, e_phoff + 56 * i)
        if p_type == 1:
            loads.append((p_paddr, filesz, off))
    for p_paddr, filesz, off in loads:  # an overlap: the first in header order is read
        if p_paddr <= paddr < p_paddr + filesz:
            return off + paddr - p_paddr
    raise AssertionError(f"paddr {paddr:#x} not in the file")


def _patch(path: Path, paddr: int, data: bytes) -> None:
    with path.open("r+b") as f:
        f.seek(_file_offset(path, paddr))
        f.write(data)


def _run(kernel: SyntheticKernel, vmcore: Path, tmp_path: Path, why: str) -> None:
    out = tmp_path / "out.kdump"
    report = dump(DumpOptions(vmcore=vmcore, dumpfile=out, dump_level=DumpLevel(31),
                              use_kernel_bitmap=True))
    assert report.path_taken is PathTaken.FALLBACK
    assert report.fallback_reason is not None and why in report.fallback_reason
    with MappedFile(out) as f:
        kdump = KdumpFile.open(f)
        got = kdump.bitmap2.get_bools(0, kdump.max_mapnr)
    assert np.array_equal(got, kernel.expected_dumpable(31))



@pytest.mark.parametrize(("corruption", "why"), [
    ("zeros", "excludes pfn"),
    ("ones", "counters account for"),
    ("complement", "excludes pfn"),
    ("kernel_image", "the kernel image"),
])
def test_corrupted_bitmap_content_falls_back(
    tiny_kernel: Callable[..., SyntheticKernel], tmp_path: Path, corruption: str, why: str,
) -> None:
    kernel = tiny_kernel("6.1", seed=3, crash_dump_bitmap=31)
    vmcore = tmp_path / "vmcore"
    kernel.write(vmcore)
    base = kernel.bitmap_paddr
    nbytes = (kernel.max_mapnr + 7) // 8
    with vmcore.open("rb") as f:
        f.seek(_file_offset(vmcore, base))
        original = np.frombuffer(f.read(nbytes), dtype=np.uint8)
    if corruption == "zeros":
        new = np.zeros(nbytes, dtype=np.uint8)
    elif corruption == "ones":
        new = np.full(nbytes, 0xFF, dtype=np.uint8)
    elif corruption == "complement":
        new = ~original
    else:  # clear the bits of the kernel image's first 2 MiB (text)
        text_pfn = (kernel.symbols["_stext"] - 0xFFFFFFFF80000000 + kernel.phys_base) // PAGE
        new = original.copy()
        bools = np.unpackbits(new, bitorder="little")
        bools[text_pfn : text_pfn + 512] = 0
        new = np.packbits(bools, bitorder="little")[:nbytes]
    _patch(vmcore, base, new.tobytes())
    _run(kernel, vmcore, tmp_path, why)


@pytest.mark.parametrize(("shift", "why"), [(PAGE, ""), (8, "not page-aligned")])
def test_moved_bitmap_pointer_falls_back(
    tiny_kernel: Callable[..., SyntheticKernel], tmp_path: Path, shift: int, why: str,
) -> None:
    probe = tiny_kernel("6.1", seed=3, crash_dump_bitmap=31)
    kernel = tiny_kernel("6.1", seed=3, crash_dump_bitmap=31, fresh=True,
                         crash_dump_bitmap_info={"bitmap": probe.bitmap_paddr + shift})
    vmcore = tmp_path / "vmcore"
    kernel.write(vmcore)
    _run(kernel, vmcore, tmp_path, why)


def _clear_bits(vmcore: Path, kernel: SyntheticKernel, pfns: list[int]) -> None:
    """Clear the kernel bitmap's bits of ``pfns`` in the vmcore."""
    for pfn in pfns:
        at = kernel.bitmap_paddr + pfn // 8
        with vmcore.open("r+b") as f:
            f.seek(_file_offset(vmcore, at))
            byte = f.read(1)[0]
            f.seek(_file_offset(vmcore, at))
            f.write(bytes([byte & ~(1 << (pfn % 8))]))


def _mem_map_pfns(kernel: SyntheticKernel) -> list[int]:
    """Every pfn holding struct pages of present frames (in the builder's own terms)."""
    present = np.flatnonzero(kernel.first_bitmap())
    return sorted({kernel.vtop(kernel.struct_page_vaddr(int(p))) // PAGE
                   for p in present[:: PAGE // 64]})


def test_every_mem_map_page_is_protected(
    tiny_kernel: Callable[..., SyntheticKernel], tmp_path: Path,
) -> None:
    # not only the first and last struct page of a run: one in the middle
    kernel = tiny_kernel("6.1", seed=3, crash_dump_bitmap=31)
    vmcore = tmp_path / "vmcore"
    kernel.write(vmcore)
    pages = _mem_map_pfns(kernel)
    middle = pages[len(pages) // 4]
    assert middle not in (pages[0], pages[-1])
    _clear_bits(vmcore, kernel, [middle])
    _run(kernel, vmcore, tmp_path, f"excludes pfn {middle:#x}, part of mem_map")


def _note_in_memory(kernel: SyntheticKernel, vmcore: Path, *, copy: bool) -> int:
    """Give the VMCOREINFO PT_NOTE a p_paddr (as kexec-tools' elfcorehdr does) at a
    page the kernel bitmap keeps; with ``copy`` memory there holds the note. Returns
    the pfn of that page."""
    raw = vmcore.read_bytes()[:0x10000]
    e_phoff, = struct.unpack_from("<Q", raw, 0x20)
    e_phnum, = struct.unpack_from("<H", raw, 0x38)
    at = next(e_phoff + 56 * i for i in range(e_phnum)
              if struct.unpack_from("<I", raw, e_phoff + 56 * i)[0] == 4)
    p_offset, = struct.unpack_from("<Q", raw, at + 8)
    p_filesz, = struct.unpack_from("<Q", raw, at + 32)
    notes = raw[p_offset : p_offset + p_filesz]
    note_at = notes.index(b"VMCOREINFO\0") - 12
    # a kept page holding only generated data (no page table, struct page or bitmap)
    kept = kernel.expected_dumpable_q()
    plain = kernel.phys.content[: kept.size] == CONTENT_PATTERN
    candidates = np.flatnonzero(kept & plain)
    pfn = int(candidates[candidates.size // 2])
    with vmcore.open("r+b") as f:
        f.seek(at + 24)  # p_paddr
        f.write(struct.pack("<Q", pfn * PAGE - note_at))
    if copy:
        _patch(vmcore, pfn * PAGE, notes[note_at:])
    return pfn


@pytest.mark.parametrize("cleared", [False, True])
def test_the_vmcoreinfo_note_pages_are_protected(
    tiny_kernel: Callable[..., SyntheticKernel], tmp_path: Path, cleared: bool,
) -> None:
    kernel = tiny_kernel("6.1", seed=3, crash_dump_bitmap=31)
    vmcore = tmp_path / "vmcore"
    kernel.write(vmcore)
    pfn = _note_in_memory(kernel, vmcore, copy=True)
    if cleared:
        _clear_bits(vmcore, kernel, [pfn])
        _run(kernel, vmcore, tmp_path, f"excludes pfn {pfn:#x}, part of the VMCOREINFO note")
        return
    report = dump(DumpOptions(vmcore=vmcore, dumpfile=tmp_path / "out.kdump",
                              dump_level=DumpLevel(31), use_kernel_bitmap=True))
    assert report.path_taken is PathTaken.BITMAP, report.fallback_reason


def test_a_note_address_memory_does_not_confirm_is_not_trusted(
    tiny_kernel: Callable[..., SyntheticKernel], tmp_path: Path,
) -> None:
    # p_paddr says the note is at a page whose contents are something else: that
    # proves nothing, so clearing that page's bit is not a reason to fall back
    kernel = tiny_kernel("6.1", seed=3, crash_dump_bitmap=31)
    vmcore = tmp_path / "vmcore"
    kernel.write(vmcore)
    pfn = _note_in_memory(kernel, vmcore, copy=False)
    _clear_bits(vmcore, kernel, [pfn])
    report = dump(DumpOptions(vmcore=vmcore, dumpfile=tmp_path / "out.kdump",
                              dump_level=DumpLevel(31), use_kernel_bitmap=True))
    assert report.path_taken is PathTaken.BITMAP, report.fallback_reason
