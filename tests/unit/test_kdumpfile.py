"""The kdump-compressed reader: header parsing, bitmap variants, rank lookup, typed errors."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cdbdump.bitmap import Bitmap
from cdbdump.codecs import Codec
from cdbdump.errors import (
    CorruptDumpError,
    NotInDumpError,
    TruncatedDumpError,
    UnknownFormatError,
)
from cdbdump.fileio import MappedFile
from cdbdump.memory.kdump import KdumpMemory
from cdbdump.memory.physical import ExtentKind
from cdbdump.vmcore.kdumpfile import KdumpFile
from cdbdump.writers.kdump import write_kdump
from cdbdump.writers.sink import create_output
from tests.oracles import (
    ElfLoad,
    kdump_inputs,
    make_notes,
    make_utsname,
    make_vmcoreinfo,
    pfn_pattern_pages,
    write_elf_vmcore,
)

PS = 4096
PFNS = list(range(8, 40))


@pytest.fixture
def dump_path(tmp_path: Path) -> Iterator[Path]:
    pages = pfn_pattern_pages(PFNS)
    pages[12] = bytes(PS)
    notes, _ = make_notes(make_vmcoreinfo(extra=["NUMBER(answer)=42"]))
    elf = tmp_path / "v.elf"
    write_elf_vmcore(elf, [ElfLoad(8 * PS, b"".join(pages[p] for p in PFNS))], notes)
    inputs = kdump_inputs(elf, max_mapnr=70, dump_level=17, phys_base=0x1000000)
    bitmap2 = inputs.bitmap1.copy()
    bitmap2.clear_range(20, 25)
    path = tmp_path / "d.kdump"
    with create_output(path) as out:
        write_kdump(out, inputs.meta, inputs.bitmap1, bitmap2, inputs.memory, Codec.ZLIB, True)
    inputs.close()
    yield path


def _open(path: Path) -> KdumpFile:
    return KdumpFile.open(MappedFile(path))


def _patch(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(data)


def test_header_facts(dump_path: Path) -> None:
    dump = _open(dump_path)
    assert dump.page_size == PS
    assert dump.max_mapnr == 70
    assert dump.codec is Codec.ZLIB
    assert not dump.is_incomplete
    assert dump.dump_level == 17
    assert dump.phys_base == 0x1000000
    assert dump.utsname["release"] == "6.1.0-synthetic"
    assert dump.utsname["machine"] == "x86_64"
    assert dump.vmcoreinfo is not None
    assert dump.vmcoreinfo.number("answer") == 42
    assert dump.nr_dumpable == len(PFNS) - 5
    assert dump.bitmap1.count() == len(PFNS)


def test_pages_and_exclusions(dump_path: Path) -> None:
    dump = _open(dump_path)
    pages = pfn_pattern_pages(PFNS)
    got = dict(dump.iter_pages(window=7))
    assert sorted(got) == [p for p in PFNS if not 20 <= p < 25]
    for pfn, content in got.items():
        assert content == (bytes(PS) if pfn == 12 else pages[pfn])
    memory = KdumpMemory([dump])
    assert memory.read(9 * PS + 4000, 200) == pages[9][4000:] + pages[10][:104]
    # the seam: DATA for stored pages, ABSENT for excluded pages and holes
    kinds = [(e.paddr // PS, -(-e.end // PS), e.kind) for e in memory.extents(18 * PS, 8 * PS)]
    stored = [p for p in PFNS if not 20 <= p < 25 and 18 <= p < 26]
    assert [k for k in kinds if k[2] is ExtentKind.DATA] == [
        (lo, hi, ExtentKind.DATA) for lo, hi in _runs(stored)
    ]
    assert sum(hi - lo for lo, hi, _ in kinds) == 8
    with pytest.raises(NotInDumpError):
        memory.read(22 * PS, 1)
    with pytest.raises(NotInDumpError, match="excluded") as info:
        dump.read_page(22)
    assert info.value.address == 22 * PS
    with pytest.raises(NotInDumpError, match="excluded"):
        dump.read_page(50)
    with pytest.raises(NotInDumpError, match="max_mapnr"):
        dump.read_page(70)
    pfns = np.concatenate(list(dump.iter_dumpable_pfns(window=16)))
    assert pfns.tolist() == sorted(got)


def test_rank_matches_naive_popcount(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    dump = _open(_minimal_file(tmp_path, max_mapnr=5000, density=0.3, rng=rng))
    bools = dump.bitmap2.get_bools(0, 5000)
    set_pfns = np.flatnonzero(bools)
    naive = np.cumsum(bools) - 1
    assert np.array_equal(dump._ranks(set_pfns), naive[set_pfns])


def _minimal_file(tmp_path: Path, *, max_mapnr: int, density: float,
                  rng: np.random.Generator, partial: bool = True,
                  signature: bytes = b"KDUMP   ") -> Path:
    """A hand-packed kdump file (struct at the documented offsets; raw pages)."""
    bits = rng.random(max_mapnr) < density
    packed = np.packbits(bits, bitorder="little").tobytes()
    one_bitmap = -(-len(packed) // PS) * PS
    bitmap_blocks = (2 if partial else 1) * one_bitmap // PS
    header = struct.pack("<8si390s6xqqIiiIIIIIIi", signature, 6, make_utsname(), 0, 0, 0, PS,
                         1, bitmap_blocks, max_mapnr, 0, 0, 0, 0, 1)
    sub = struct.pack("<qiiQQqQqQqQQQQ", 0, 0, 0, 0, 0, 0, 0, PS + 104, 0, 0, 0, 0, 0,
                      max_mapnr)
    area = bytearray(bitmap_blocks * PS)
    area[: len(packed)] = packed
    if partial:
        area[one_bitmap : one_bitmap + len(packed)] = packed
    nr = int(bits.sum())
    desc_start = (2 + bitmap_blocks) * PS
    data_start = desc_start + 24 * nr
    descs = b"".join(struct.pack("<qIIQ", data_start + i * PS, PS, 0, 0) for i in range(nr))
    data = b"".join(struct.pack("<Q", int(p)) * (PS // 8) for p in np.flatnonzero(bits))
    body = header.ljust(PS, b"\0") + sub.ljust(PS, b"\0") + bytes(area) + descs + data
    path = tmp_path / f"min-{max_mapnr}-{partial}.kdump"
    path.write_bytes(body)
    return path


@pytest.mark.parametrize("signature", [b"KDUMP   ", b"DISKDUMP"])
def test_single_bitmap_file_means_every_present_page_is_dumpable(
    tmp_path: Path, signature: bytes
) -> None:
    rng = np.random.default_rng(11)
    path = _minimal_file(tmp_path, max_mapnr=300, density=0.5, rng=rng, partial=False,
                         signature=signature)
    dump = _open(path)
    assert np.array_equal(dump.bitmap1.bits, dump.bitmap2.bits)
    if signature == b"KDUMP   ":
        for pfn in np.flatnonzero(dump.bitmap2.get_bools(0, 300)).tolist():
            assert dump.read_page(pfn) == struct.pack("<Q", pfn) * (PS // 8)


# -- corrupt and foreign input ---------------------------------------------------------------


def test_unknown_signature(tmp_path: Path) -> None:
    path = tmp_path / "elf"
    path.write_bytes(b"\x7fELF" + bytes(1000))
    with pytest.raises(UnknownFormatError):
        _open(path)


def test_truncated_header(tmp_path: Path, dump_path: Path) -> None:
    short = tmp_path / "short"
    short.write_bytes(dump_path.read_bytes()[:300])
    with pytest.raises(TruncatedDumpError):
        _open(short)


@pytest.mark.parametrize("block_size", [0, 3000, 1 << 20, -4096])
def test_bad_block_size(dump_path: Path, block_size: int) -> None:
    _patch(dump_path, 428, struct.pack("<i", block_size))
    with pytest.raises(CorruptDumpError) as info:
        _open(dump_path)
    assert info.value.file_offset == 428


def test_bitmap_too_small_for_max_mapnr(dump_path: Path) -> None:
    _patch(dump_path, PS + 96, struct.pack("<Q", 10**9))  # max_mapnr_64
    with pytest.raises(CorruptDumpError, match="bitmap blocks") as info:
        _open(dump_path)
    assert info.value.file_offset == 436


def test_bitmaps_past_end_of_file(tmp_path: Path, dump_path: Path) -> None:
    raw = dump_path.read_bytes()
    (sub_hdr_size,) = struct.unpack_from("<i", raw, 432)
    first_bitmap = (1 + sub_hdr_size) * PS
    short = tmp_path / "short"
    short.write_bytes(raw[: first_bitmap + PS])
    with pytest.raises(TruncatedDumpError) as info:
        _open(short)
    assert info.value.file_offset == first_bitmap


def _desc_offset(dump: KdumpFile, pfn: int) -> int:
    return dump.desc_file_offset(pfn)


def test_page_desc_size_beyond_block(dump_path: Path) -> None:
    where = _desc_offset(_open(dump_path), 9)
    _patch(dump_path, where + 8, struct.pack("<I", PS + 1))
    with pytest.raises(CorruptDumpError, match="size") as info:
        _open(dump_path).read_page(9)
    assert info.value.file_offset == where


def test_page_desc_pointing_into_headers(dump_path: Path) -> None:
    where = _desc_offset(_open(dump_path), 9)
    _patch(dump_path, where, struct.pack("<q", 100))
    with pytest.raises(CorruptDumpError, match="before the page data"):
        _open(dump_path).read_page(9)


def test_page_desc_unknown_flags(dump_path: Path) -> None:
    where = _desc_offset(_open(dump_path), 9)
    _patch(dump_path, where + 12, struct.pack("<I", 0x40))
    with pytest.raises(CorruptDumpError, match="flags"):
        _open(dump_path).read_page(9)


def test_page_data_past_end_of_file(tmp_path: Path, dump_path: Path) -> None:
    dump = _open(dump_path)
    last = max(np.concatenate(list(dump.iter_dumpable_pfns())).tolist())
    desc = dump.page_desc(last)
    short = tmp_path / "cut"
    short.write_bytes(dump_path.read_bytes()[: desc.offset + desc.size - 1])
    with pytest.raises(TruncatedDumpError):
        _open(short).read_page(last)


def test_corrupt_compressed_page(dump_path: Path) -> None:
    dump = _open(dump_path)
    desc = dump.page_desc(9)
    assert desc.flags == Codec.ZLIB.flag
    _patch(dump_path, desc.offset, b"\xff" * 8)
    with pytest.raises(CorruptDumpError) as info:
        _open(dump_path).read_page(9)
    assert info.value.file_offset == desc.offset


def test_lost_page_in_incomplete_dump(dump_path: Path) -> None:
    where = _desc_offset(_open(dump_path), 30)
    _patch(dump_path, where, bytes(24))
    dump = _open(dump_path)
    with pytest.raises(NotInDumpError, match="lost"):
        dump.read_page(30)
    assert 30 not in dict(dump.iter_pages())


def test_descs_past_end_of_file_read_as_lost(tmp_path: Path, dump_path: Path) -> None:
    dump = _open(dump_path)
    cut = dump.desc_file_offset(30)
    short = tmp_path / "cut"
    short.write_bytes(dump_path.read_bytes()[:cut])
    dump = _open(short)
    with pytest.raises(NotInDumpError, match="lost"):
        dump.read_page(31)
    with pytest.raises(TruncatedDumpError):
        dump.read_page(8)  # its descriptor survived, its data did not


def test_bitmap_class_used_for_both_bitmaps(dump_path: Path) -> None:
    dump = _open(dump_path)
    assert isinstance(dump.bitmap1, Bitmap) and isinstance(dump.bitmap2, Bitmap)
    assert dump.bitmap1.nr_bits == dump.bitmap2.nr_bits == 70


def _runs(pfns: list[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for pfn in pfns:
        if runs and runs[-1][1] == pfn:
            runs[-1] = (runs[-1][0], pfn + 1)
        else:
            runs.append((pfn, pfn + 1))
    return runs
