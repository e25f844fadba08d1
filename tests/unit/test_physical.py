from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cdbdump.errors import NotInDumpError
from cdbdump.fileio import MappedFile
from cdbdump.formats.elf import LoadSegment
from cdbdump.memory.physical import (
    ElfMemory,
    Extent,
    ExtentKind,
    all_data,
    data_pfn_ranges,
    fill,
    view_run,
)

PAGE = 4096


def _seg(index: int, file_offset: int, paddr: int, filesz: int, memsz: int,
         vaddr: int = 0) -> LoadSegment:
    return LoadSegment(index, file_offset, vaddr, paddr, filesz, memsz, 0, 0)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "core"
    # file: [0x0, 0x3000) holds bytes 0..; every byte = (file offset // 0x100) & 0xff
    path.write_bytes(bytes((i // 0x100) & 0xFF for i in range(0x3000)))
    return path


def test_reads_straddle_segments_and_zero_fill(image: Path) -> None:
    loads = [
        _seg(0, 0x0, 0x10000, 0x1000, 0x1000),
        _seg(1, 0x1000, 0x11000, 0x800, 0x1000),  # p_filesz < p_memsz: zero tail
        _seg(2, 0x2000, 0x20000, 0x1000, 0x1000),
    ]
    with MappedFile(image) as f:
        phys = ElfMemory(f, loads, PAGE)
        data = phys.read(0x10FF0, 0x20)  # across segments 0 and 1
        assert data == bytes([0x0F] * 0x10 + [0x10] * 0x10)
        tail = phys.read(0x117F0, 0x20)
        assert tail == bytes([0x17] * 0x10 + [0] * 0x10)
        with pytest.raises(NotInDumpError) as exc:
            phys.read(0x11FF0, 0x20)  # runs into the hole at 0x12000
        assert exc.value.address == 0x12000
        assert view_run(phys, 0x20000, 0x1000) is not None
        assert view_run(phys, 0x11000, 0x1000) is None  # not wholly file-backed
        assert list(phys.present_pfn_ranges()) == [(0x10, 0x12), (0x20, 0x21)]
        assert list(data_pfn_ranges(phys, first_byte=False)) == [(0x10, 0x12), (0x20, 0x21)]
        assert all_data(phys, 0x10000, 0x1800)
        assert not all_data(phys, 0x10000, 0x1801)


def test_extents_tell_data_zero_tail_and_absent(image: Path) -> None:
    loads = [
        _seg(0, 0x0, 0x10000, 0x1000, 0x1000),
        _seg(1, 0x1000, 0x11000, 0x800, 0x1000),
        _seg(2, 0x2000, 0x20000, 0x1000, 0x1000),
    ]
    D, Z, A = ExtentKind.DATA, ExtentKind.ZERO, ExtentKind.ABSENT
    with MappedFile(image) as f:
        phys = ElfMemory(f, loads, PAGE)
        assert list(phys.extents(0xF000, 0x11800)) == [
            Extent(0xF000, 0x1000, A),
            Extent(0x10000, 0x1800, D, 0x0),  # contiguous in paddr and file: one run
            Extent(0x11800, 0x800, Z),
            Extent(0x12000, 0xE000, A),
            Extent(0x20000, 0x800, D, 0x2000),
        ]
        assert list(phys.extents(0x21000, 0x10)) == [Extent(0x21000, 0x10, A)]
        assert list(phys.extents(0x117F0, 0x20)) == [
            Extent(0x117F0, 0x10, D, 0x17F0), Extent(0x11800, 0x10, Z)
        ]
        out = np.full(0x2000, 0xEE, dtype=np.uint8)
        missing = fill(phys, 0x11000, out)
        assert [(e.paddr, e.size, e.kind) for e in missing] == [
            (0x11800, 0x800, Z), (0x12000, 0x1000, A)
        ]
        assert bytes(out[:0x800]) == bytes((0x1000 + i) // 0x100 & 0xFF for i in range(0x800))
        assert not out[0x800:].any()
        # in_segs (first byte stored) versus any byte stored
        assert list(data_pfn_ranges(phys, first_byte=True)) == [(0x10, 0x12), (0x20, 0x21)]


def test_overlapping_loads_become_disjoint(image: Path) -> None:
    # kexec's kernel-text LOAD lies inside the direct-map LOAD (same memory twice)
    loads = [
        _seg(0, 0x1000, 0x1000, 0x1000, 0x1000, vaddr=0xFFFFFFFF81000000),
        _seg(1, 0x0, 0x0, 0x3000, 0x3000),
    ]
    with MappedFile(image) as f:
        phys = ElfMemory(f, loads, PAGE)
        assert list(phys.extents(0, 0x3000)) == [Extent(0, 0x3000, ExtentKind.DATA, 0)]
        assert phys.read(0x2FFF, 1) == b"\x2f"


def test_partial_last_page_counts_as_present(image: Path) -> None:
    # an e820 range such as 0x1000-0x9fbff ends mid-page (makedumpfile >= 1.7.6 keeps it)
    loads = [_seg(0, 0x0, 0x1000, 0x1C00, 0x1C00)]
    with MappedFile(image) as f:
        phys = ElfMemory(f, loads, PAGE)
        assert list(phys.present_pfn_ranges()) == [(1, 3)]
        frame = np.empty(PAGE, dtype=np.uint8)
        assert [e.kind for e in fill(phys, 2 * PAGE, frame)] == [ExtentKind.ABSENT]
        assert bytes(frame[:0xC00]) == bytes(((0x1000 + i) // 0x100) & 0xFF for i in range(0xC00))
        assert bytes(frame[0xC00:]) == bytes(0x400)
        with pytest.raises(NotInDumpError):
            phys.read(0x2BFF, 2)  # strict reads do not invent bytes


def test_frames_in_file_holes(tmp_path: Path) -> None:
    path = tmp_path / "sparse"
    with path.open("wb") as f:
        f.truncate(16 * PAGE)
        f.seek(3 * PAGE + 100)  # frame 3 holds one data byte
        f.write(b"x")
        f.seek(9 * PAGE)
        f.write(b"y" * PAGE)  # frame 9 is all data
    # paddr 0x100000 maps file offset 0; the last frame is only half file-backed
    loads = [_seg(0, 0, 0x100000, 15 * PAGE + PAGE // 2, 16 * PAGE)]
    # Independent probe: the file system stored fewer blocks than the file's length
    # (it keeps holes), so SEEK_DATA must report them.
    if path.stat().st_blocks * 512 >= path.stat().st_size:
        pytest.skip(f"the file system of {tmp_path} stores no holes (st_blocks)")
    with MappedFile(path) as f:
        phys = ElfMemory(f, loads, PAGE)
        pfns = np.arange(0x100, 0x110, dtype=np.int64)
        holes = phys.known_zero_frames(pfns)
        assert holes is not None, "holes on disk, but known_zero_frames found none"
        expect = np.ones(16, dtype=bool)
        expect[[3, 9, 15]] = False  # data, data, and a frame not wholly in the file
        assert holes.tolist() == expect.tolist()
        # what the hole test says is zero really reads as zero
        for pfn in pfns[holes]:
            assert phys.read(int(pfn) * PAGE, PAGE) == bytes(PAGE)


def test_dense_file_reports_no_holes(image: Path) -> None:
    with MappedFile(image) as f:
        phys = ElfMemory(f, [_seg(0, 0, 0, 0x3000, 0x3000)], PAGE)
        assert phys.known_zero_frames(np.arange(3, dtype=np.int64)) is None


# -- overlapping PT_LOADs: makedumpfile paddr_to_offset, and the copy that has data ------


def _marked(tmp_path: Path, size: int) -> Path:
    # every 0x100 bytes of the file hold (file offset // 0x100) & 0xff
    path = tmp_path / "marked"
    path.write_bytes(bytes((i // 0x100) & 0xFF for i in range(size)))
    return path


def test_overlap_reads_the_first_segment_in_program_header_order(tmp_path: Path) -> None:
    # kexec's kernel-text LOAD (first) over the direct-map LOAD, with other contents
    path = _marked(tmp_path, 0x5000)
    loads = [_seg(0, 0x4000, 0x1000, 0x1000, 0x1000, vaddr=0xFFFFFFFF81000000),
             _seg(1, 0x0, 0x0, 0x3000, 0x3000)]
    with MappedFile(path) as f:
        phys = ElfMemory(f, loads, PAGE)
        assert phys.read(0x1000, 0x1000) == bytes((0x4000 + i) // 0x100 for i in range(0x1000))
        assert phys.read(0x0FFF, 2) == b"\x0f\x40"  # RAM copy, then the text copy
        assert phys.read(0x2000, 1) == b"\x20"
        # the RAM copy first in program-header order: it wins
        swapped = [_seg(0, 0x0, 0x0, 0x3000, 0x3000), _seg(1, 0x4000, 0x1000, 0x1000, 0x1000)]
        phys = ElfMemory(f, swapped, PAGE)
        assert phys.read(0x1000, 0x10) == bytes([0x10] * 0x10)
        assert list(phys.extents(0, 0x3000)) == [Extent(0, 0x3000, ExtentKind.DATA, 0)]


def test_overlap_takes_the_copy_that_has_data(tmp_path: Path) -> None:
    path = _marked(tmp_path, 0x6000)
    D, Z = ExtentKind.DATA, ExtentKind.ZERO
    # the first copy stores only half a page (p_filesz < p_memsz, or a file cut inside
    # it): the rest of its range comes from the second copy, not zeros
    loads = [_seg(0, 0x4000, 0x1000, 0x800, 0x2000), _seg(1, 0x0, 0x0, 0x2800, 0x4000)]
    with MappedFile(path) as f:
        phys = ElfMemory(f, loads, PAGE)
        assert list(phys.extents(0, 0x5000)) == [
            Extent(0x0, 0x1000, D, 0x0),
            Extent(0x1000, 0x800, D, 0x4000),  # the first copy while it has data
            Extent(0x1800, 0x1000, D, 0x1800),  # then the second one
            Extent(0x2800, 0x1800, Z),  # nobody stores it: p_memsz only
            Extent(0x4000, 0x1000, ExtentKind.ABSENT),
        ]
        page = np.empty(PAGE, dtype=np.uint8)
        assert fill(phys, 0x1000, page) == []
        assert bytes(page[0x7FF:0x801]) == b"\x47\x18"
        assert list(data_pfn_ranges(phys, first_byte=True)) == [(0, 3)]
        assert list(phys.present_pfn_ranges()) == [(0, 4)]


def _reference_owner(loads: list[LoadSegment], paddr: int) -> tuple[str, int]:
    """Byte by byte: the first segment in program-header order that stores paddr."""
    for seg in sorted(loads, key=lambda s: s.index):
        if seg.paddr <= paddr < seg.paddr + seg.filesz:
            return "data", seg.file_offset + paddr - seg.paddr
    if any(seg.paddr <= paddr < seg.paddr + seg.memsz for seg in loads):
        return "zero", -1
    return "absent", -1


@pytest.mark.parametrize("seed", range(40))
def test_resolution_matches_a_byte_by_byte_reference(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    path = tmp_path / "empty"
    path.write_bytes(bytes(0x40000))
    loads = []
    for index in range(int(rng.integers(1, 7))):
        paddr = int(rng.integers(0, 0x40)) * 0x100
        memsz = int(rng.integers(0, 0x30)) * 0x100
        filesz = min(memsz, int(rng.integers(0, 0x30)) * 0x100)
        loads.append(_seg(index, int(rng.integers(0, 0x300)) * 0x100, paddr, filesz, memsz))
    rng.shuffle(loads)  # callers need not pass them in any order
    with MappedFile(path) as f:
        phys = ElfMemory(f, loads, PAGE)
        got = [(ext.kind.value, ext.file_offset + at - ext.paddr
                if ext.kind is ExtentKind.DATA else -1)
               for ext in phys.extents(0, 0x8000) for at in range(ext.paddr, ext.end, 0x100)]
    assert got == [_reference_owner(loads, at) for at in range(0, 0x8000, 0x100)], loads


def test_data_extents_stay_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_EXTENTS, short holes count as data: the list stays bounded and still
    covers every data byte (what it calls a hole reads as zero)."""
    import cdbdump.fileio as fileio

    path = tmp_path / "sparse"
    data_pages = [*range(0, 64, 2), 1000]
    with path.open("wb") as f:
        f.truncate(1024 * PAGE)
        for page in data_pages:
            f.seek(page * PAGE)
            f.write(b"d" * PAGE)
    if path.stat().st_blocks * 512 >= path.stat().st_size:
        pytest.skip(f"the file system of {tmp_path} stores no holes (st_blocks)")
    monkeypatch.setattr(fileio, "MAX_EXTENTS", 4)
    with MappedFile(path) as f:
        extents = f.data_extents()
        assert extents is not None
        starts, ends = extents
        assert 1 < len(starts) <= 4
        for page in data_pages:
            at = page * PAGE
            assert ((starts <= at) & (at + PAGE <= ends)).any(), f"page {page} lost"
