"""The kdump-compressed writer: every header field, region and rule of makedumpfile's
diskdump_mod.h and write_kdump_header.

Expected values are taken from the format reference (raw offsets and sizes,
decoded here with struct at the documented positions), never from the writer.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cdbdump.bitmap import Bitmap
from cdbdump.codecs import Codec
from cdbdump.errors import NotInDumpError, OutputError, OutputNoSpaceError
from cdbdump.fileio import MappedFile
from cdbdump.vmcore.kdumpfile import KdumpFile
from cdbdump.writers.kdump import (
    KdumpLayout,
    KdumpMetadata,
    KdumpWriteResult,
    mark_incomplete,
    write_kdump,
)
from cdbdump.writers.sink import OutputFile, create_output
from tests.oracles import (
    ElfLoad,
    KdumpInputs,
    SourceElf,
    kdump_inputs,
    make_notes,
    make_utsname,
    make_vmcoreinfo,
    pfn_pattern_pages,
    write_elf_vmcore,
)

PS = 4096
RNG = np.random.default_rng(7)
ZERO_PFNS = (20, 21, 40)
RANDOM_PFNS = (22, 41)
ONE_BYTE_PFN = 23  # a single non-zero byte in the last word: not a zero page


def _image() -> dict[int, bytes]:
    """pfn -> content for pfns 16..47 and 64..69."""
    pages = pfn_pattern_pages([*range(16, 48), *range(64, 70)])
    for pfn in ZERO_PFNS:
        pages[pfn] = bytes(PS)
    for pfn in RANDOM_PFNS:
        pages[pfn] = RNG.integers(0, 256, PS, dtype=np.uint8).tobytes()
    pages[ONE_BYTE_PFN] = bytes(PS - 1) + b"\x01"
    return pages


@pytest.fixture
def source(tmp_path: Path) -> Iterator[tuple[Path, dict[int, bytes], KdumpInputs]]:
    pages = _image()
    notes, _ = make_notes(make_vmcoreinfo(), nr_cpus=3)
    loads = [
        ElfLoad(16 * PS, b"".join(pages[p] for p in range(16, 48))),
        # the last PT_LOAD ends mid-page and has a zero-filled p_memsz tail
        ElfLoad(64 * PS, b"".join(pages[p] for p in range(64, 69)) + pages[69][:100],
                memsz=5 * PS + 100),
    ]
    pages[69] = pages[69][:100] + bytes(PS - 100)
    path = tmp_path / "vmcore.elf"
    write_elf_vmcore(path, loads, notes, phoff=192)
    inputs = kdump_inputs(path, max_mapnr=80, phys_base=-0x12345000)
    yield path, pages, inputs
    inputs.close()


def _dumpable(inputs: KdumpInputs) -> Bitmap:
    bitmap2 = inputs.bitmap1.copy()
    bitmap2.clear_range(30, 34)  # "excluded" pages
    bitmap2.clear_range(66, 67)
    return bitmap2


def _blocks(inputs: KdumpInputs) -> int:
    """1 + sub_hdr_size: the block the 1st bitmap starts in (write_kdump_header)."""
    return 1 + -(-(104 + len(inputs.core.notes_raw)) // PS)


def _write(tmp_path: Path, inputs: KdumpInputs, codec: Codec, exclude_zero: bool = True,
           name: str = "out.kdump", **kwargs: object) -> tuple[Path, object]:
    path = tmp_path / name
    with create_output(path, force=True) as out:
        result = write_kdump(out, inputs.meta, inputs.bitmap1, _dumpable(inputs),
                             inputs.memory, codec, exclude_zero, **kwargs)  # type: ignore[arg-type]
    return path, result


# -- layout --------------------------------------------------------------------------------


def test_layout_worked_example_from_the_reference() -> None:
    # write_kdump_header: max_mapnr 4,456,448, size_note 6000, 4 KiB blocks
    meta = KdumpMetadata(make_utsname(), 0, PS, 4_456_448, 0, 31, bytes(6000), None, 0, 1)
    layout = KdumpLayout.compute(meta, nr_dumpable=10)
    assert layout.sub_hdr_size == 2
    assert layout.bitmap_size == 136 * PS
    assert layout.bitmap_blocks == 272
    assert layout.offset_bitmap1 == 12_288
    assert layout.offset_bitmap2 == 569_344
    assert layout.offset_page_desc == 275 * PS == 1_126_400
    assert layout.offset_data == 1_126_400 + 10 * 24


@pytest.mark.parametrize(("note_size", "blocks"), [(0, 1), (PS - 104, 1), (PS - 103, 2)])
def test_sub_header_blocks_round_up(note_size: int, blocks: int) -> None:
    meta = KdumpMetadata(make_utsname(), 0, PS, 8, 0, 0, bytes(note_size), None, 0, 0)
    assert KdumpLayout.compute(meta, 0).sub_hdr_size == blocks


def test_main_header_fields(tmp_path: Path, source: tuple[Path, dict[int, bytes],
                                                          KdumpInputs]) -> None:
    _, _, inputs = source
    for codec, status in [(Codec.NONE, 0), (Codec.ZLIB, 1), (Codec.LZO, 2), (Codec.SNAPPY, 4),
                          (Codec.ZSTD, 0x20)]:
        path, _ = _write(tmp_path, inputs, codec)
        raw = path.read_bytes()
        assert raw[0:8] == b"KDUMP   "
        assert struct.unpack_from("<i", raw, 8)[0] == 6  # header_version
        assert raw[12:402] == make_utsname()
        assert raw[402:408] == bytes(6)  # padding before the timeval
        assert struct.unpack_from("<qq", raw, 408) == (1_700_000_000, 0)
        assert struct.unpack_from("<I", raw, 424)[0] == status
        block_size, sub_hdr_size, bitmap_blocks, max_mapnr = struct.unpack_from("<iiII", raw, 428)
        assert (block_size, sub_hdr_size, max_mapnr) == (PS, _blocks(inputs) - 1, 80)
        assert bitmap_blocks == 2  # 80 bits -> one block per bitmap, both counted
        assert struct.unpack_from("<IIII", raw, 444) == (0, 0, 0, 0)
        assert struct.unpack_from("<i", raw, 460)[0] == 3  # nr_cpus: CORE/NT_PRSTATUS notes
        assert raw[464:PS] == bytes(PS - 464)


def test_sub_header_and_notes(tmp_path: Path, source: tuple[Path, dict[int, bytes],
                                                            KdumpInputs]) -> None:
    elf_path, _, inputs = source
    path, _ = _write(tmp_path, inputs, Codec.ZLIB)
    raw = path.read_bytes()
    sub = raw[PS : PS + 104]
    (phys_base,) = struct.unpack_from("<q", sub, 0)
    dump_level, split = struct.unpack_from("<ii", sub, 8)
    assert (phys_base, dump_level, split) == (-0x12345000, 31, 0)
    assert struct.unpack_from("<QQ", sub, 16) == (0, 0)  # start_pfn, end_pfn
    off_vmci, size_vmci, off_note, size_note = struct.unpack_from("<qQqQ", sub, 32)
    src = SourceElf(elf_path)
    try:
        vmcoreinfo = src.vmcoreinfo()
        notes = src.notes
    finally:
        src.close()
    assert off_note == PS + 104
    assert size_note == len(notes)
    assert raw[off_note : off_note + size_note] == notes  # the PT_NOTE copied verbatim
    assert raw[off_vmci : off_vmci + size_vmci] == vmcoreinfo
    assert struct.unpack_from("<qQ", sub, 64) == (0, 0)  # no eraseinfo
    assert struct.unpack_from("<QQQ", sub, 80) == (0, 0, 80)  # max_mapnr_64 at 96
    end = _blocks(inputs) * PS
    assert raw[off_note + size_note : end] == bytes(end - off_note - size_note)


def test_no_vmcoreinfo_note(tmp_path: Path) -> None:
    notes, _ = make_notes(None, nr_cpus=1)
    elf = tmp_path / "v.elf"
    write_elf_vmcore(elf, [ElfLoad(0, b"\x07" * PS * 2)], notes)
    inputs = kdump_inputs(elf)
    try:
        path, _ = _write(tmp_path, inputs, Codec.ZLIB)
    finally:
        inputs.close()
    assert struct.unpack_from("<qQ", path.read_bytes(), PS + 32) == (0, 0)


def test_bitmaps_are_block_padded(tmp_path: Path, source: tuple[Path, dict[int, bytes],
                                                                KdumpInputs]) -> None:
    _, _, inputs = source
    path, _ = _write(tmp_path, inputs, Codec.ZSTD)
    raw = path.read_bytes()
    first = _blocks(inputs) * PS
    bm1 = np.unpackbits(np.frombuffer(raw[first : first + PS], np.uint8), bitorder="little")
    bm2 = np.unpackbits(np.frombuffer(raw[first + PS : first + 2 * PS], np.uint8),
                        bitorder="little")
    want1 = np.zeros(PS * 8, dtype=np.uint8)
    want1[16:48] = 1
    want1[64:70] = 1  # the page a PT_LOAD ends in counts as present
    want2 = want1.copy()
    want2[30:34] = 0
    want2[66] = 0
    assert np.array_equal(bm1, want1)
    assert np.array_equal(bm2, want2)


def _descs(raw: bytes, nr: int, inputs: KdumpInputs) -> np.ndarray:
    dtype = np.dtype([("offset", "<i8"), ("size", "<u4"), ("flags", "<u4"), ("pf", "<u8")])
    # after 1 + sub_hdr_size blocks and two one-block bitmaps
    return np.frombuffer(raw, dtype=dtype, count=nr, offset=(_blocks(inputs) + 2) * PS)


@pytest.mark.parametrize("codec", list(Codec))
def test_page_descs_and_data(tmp_path: Path, codec: Codec,
                             source: tuple[Path, dict[int, bytes], KdumpInputs]) -> None:
    _, pages, inputs = source
    path, result = _write(tmp_path, inputs, codec)
    raw = path.read_bytes()
    dumpable = [p for p in sorted(pages) if not 30 <= p < 34 and p != 66]
    descs = _descs(raw, len(dumpable), inputs)
    data_start = (_blocks(inputs) + 2) * PS + 24 * len(dumpable)
    zero_desc = (data_start, PS, 0, 0)
    # the shared zero page comes first in the data area
    assert raw[data_start : data_start + PS] == bytes(PS)
    prev_end = data_start + PS
    for pfn, d in zip(dumpable, descs, strict=True):
        entry = (int(d["offset"]), int(d["size"]), int(d["flags"]), int(d["pf"]))
        if pfn in ZERO_PFNS:
            assert entry == zero_desc, pfn
            continue
        assert entry[0] == prev_end, f"pfn {pfn}: data must be packed in pfn order"
        prev_end = entry[0] + entry[1]
        assert entry[3] == 0
        if pfn in RANDOM_PFNS or codec is Codec.NONE:
            assert (entry[1], entry[2]) == (PS, 0)
            assert raw[entry[0] : entry[0] + PS] == pages[pfn]
        else:
            assert entry[2] == codec.flag and entry[1] < PS
    assert len(raw) == prev_end  # nothing after the last page
    assert result.nr_pages_written == len(dumpable)  # type: ignore[attr-defined]
    assert result.nr_zero_pages == len(ZERO_PFNS)  # type: ignore[attr-defined]
    assert result.bytes_written == len(raw)  # type: ignore[attr-defined]


def test_without_zero_exclusion_zero_pages_are_ordinary(
    tmp_path: Path, source: tuple[Path, dict[int, bytes], KdumpInputs]
) -> None:
    _, pages, inputs = source
    path, result = _write(tmp_path, inputs, Codec.ZLIB, exclude_zero=False)
    raw = path.read_bytes()
    dumpable = [p for p in sorted(pages) if not 30 <= p < 34 and p != 66]
    descs = _descs(raw, len(dumpable), inputs)
    data_start = (_blocks(inputs) + 2) * PS + 24 * len(dumpable)
    assert int(descs[0]["offset"]) == data_start  # no shared zero page
    offsets = descs["offset"]
    assert np.all(np.diff(offsets) > 0)
    for pfn, d in zip(dumpable, descs, strict=True):
        if pfn in ZERO_PFNS:
            assert int(d["flags"]) == Codec.ZLIB.flag and int(d["size"]) < 100
    assert result.nr_zero_pages == 0  # type: ignore[attr-defined]


def test_read_back_equals_source(tmp_path: Path,
                                 source: tuple[Path, dict[int, bytes], KdumpInputs]) -> None:
    _, pages, inputs = source
    for codec in Codec:
        path, _ = _write(tmp_path, inputs, codec, name=f"{codec.name}.kdump")
        with MappedFile(path) as f:
            dump = KdumpFile.open(f)
            for pfn in range(80):
                if pfn in pages and not 30 <= pfn < 34 and pfn != 66:
                    assert dump.read_page(pfn) == pages[pfn], (codec, pfn)
                else:
                    with pytest.raises(NotInDumpError):
                        dump.read_page(pfn)


@pytest.mark.parametrize(("codec", "exclude_zero"), [
    (Codec.ZSTD, True), (Codec.LZO, True), (Codec.ZLIB, False), (Codec.NONE, True),
    (Codec.SNAPPY, True), (Codec.ZLIB, True),
])
def test_window_size_and_threads_do_not_change_the_file(
    tmp_path: Path, source: tuple[Path, dict[int, bytes], KdumpInputs], codec: Codec,
    exclude_zero: bool,
) -> None:
    # some 30 dumpable pages in two PT_LOADs: windows of 1, 3 and 7 pages cut runs, loads and
    # the zero-page bookkeeping in different places
    _, _, inputs = source
    ref, _ = _write(tmp_path, inputs, codec, exclude_zero, name="ref", threads=1)
    for window, threads in [(1, 1), (3, 2), (7, 1), (1 << 16, 2), (1 << 16, 3)]:
        path, _ = _write(tmp_path, inputs, codec, exclude_zero, name=f"w{window}-{threads}",
                         window_pages=window, threads=threads)
        assert path.read_bytes() == ref.read_bytes(), (window, threads)


def test_progress_reaches_total(tmp_path: Path,
                                source: tuple[Path, dict[int, bytes], KdumpInputs]) -> None:
    _, _, inputs = source
    calls: list[tuple[int, int]] = []
    _write(tmp_path, inputs, Codec.LZO, progress=lambda d, t: calls.append((d, t)),
           window_pages=8)
    total = _dumpable(inputs).count()
    assert len(calls) >= total // 8
    assert calls[-1] == (total, total)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_writeback_starts_for_every_byte_of_page_data(
    tmp_path: Path, source: tuple[Path, dict[int, bytes], KdumpInputs],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # each window's data is handed to writeback as soon as it is written (the closing
    # fsync then waits for little): the hinted ranges cover the data area exactly
    _, _, inputs = source
    hinted: list[tuple[int, int]] = []
    original = OutputFile.start_writeback

    def spy(self: OutputFile, file_offset: int, size: int) -> None:
        hinted.append((file_offset, size))
        original(self, file_offset, size)

    monkeypatch.setattr(OutputFile, "start_writeback", spy)
    path, result = _write(tmp_path, inputs, Codec.ZLIB, window_pages=4)
    assert isinstance(result, KdumpWriteResult)
    assert len(hinted) > 2
    # after the shared zero page (written before any window), contiguous to the end
    start = result.layout.offset_data + PS
    for file_offset, size in hinted:
        assert file_offset == start and size > 0
        start += size
    assert start == path.stat().st_size == result.bytes_written


def test_page_in_no_segment_is_refused(tmp_path: Path,
                                       source: tuple[Path, dict[int, bytes], KdumpInputs]) -> None:
    _, _, inputs = source
    bitmap1 = inputs.bitmap1.copy()
    bitmap1.set_range(50, 51)
    bitmap2 = bitmap1.copy()
    with create_output(tmp_path / "x") as out, pytest.raises(NotInDumpError) as info:
        write_kdump(out, inputs.meta, bitmap1, bitmap2, inputs.memory, Codec.ZLIB, True)
    assert info.value.address == 50 * PS


def test_dumpable_must_be_present(tmp_path: Path,
                                  source: tuple[Path, dict[int, bytes], KdumpInputs]) -> None:
    _, _, inputs = source
    bitmap2 = inputs.bitmap1.copy()
    bitmap2.set_range(75, 76)
    with create_output(tmp_path / "x") as out, pytest.raises(OutputError, match="0x4b"):
        write_kdump(out, inputs.meta, inputs.bitmap1, bitmap2, inputs.memory, Codec.ZLIB, True)


def test_bitmap_size_must_match_max_mapnr(
    tmp_path: Path, source: tuple[Path, dict[int, bytes], KdumpInputs]
) -> None:
    _, _, inputs = source
    small = Bitmap(79)
    with create_output(tmp_path / "x") as out, pytest.raises(OutputError, match="79"):
        write_kdump(out, inputs.meta, small, small, inputs.memory, Codec.ZLIB, True)


def test_metadata_is_validated() -> None:
    with pytest.raises(OutputError, match="utsname"):
        KdumpMetadata(b"short", 0, PS, 1, 0, 0, b"", None, 0, 0)
    with pytest.raises(OutputError, match="power of two"):
        KdumpMetadata(make_utsname(), 0, 3000, 1, 0, 0, b"", None, 0, 0)
    with pytest.raises(OutputError, match="VMCOREINFO"):
        KdumpMetadata(make_utsname(), 0, PS, 1, 0, 0, bytes(10), 8, 4, 0)


def test_nothing_dumpable(tmp_path: Path,
                          source: tuple[Path, dict[int, bytes], KdumpInputs]) -> None:
    _, _, inputs = source
    path = tmp_path / "empty"
    with create_output(path) as out:
        result = write_kdump(out, inputs.meta, inputs.bitmap1, Bitmap(80), inputs.memory,
                             Codec.ZLIB, False)
    assert result.nr_pages_written == 0
    assert path.stat().st_size == (_blocks(inputs) + 2) * PS  # headers + both padded bitmaps
    with MappedFile(path) as f:
        assert KdumpFile.open(f).nr_dumpable == 0


def test_huge_max_mapnr_is_clamped_in_the_main_header(tmp_path: Path) -> None:
    from cdbdump.writers.kdump import _write_headers

    class Recorder:
        size = 0

        def __init__(self) -> None:
            self.writes: dict[int, bytes] = {}

        def pwrite(self, data: bytes, file_offset: int) -> None:
            self.writes[file_offset] = bytes(data)

    meta = KdumpMetadata(make_utsname(), 0, PS, 0x1_2345_6789, 0, 31, b"", None, 0, 1)
    rec = Recorder()
    _write_headers(rec, meta, KdumpLayout.compute(meta, 0), Codec.ZLIB.flag)
    assert struct.unpack_from("<I", rec.writes[0], 440)[0] == 0xFFFFFFFF
    assert struct.unpack_from("<Q", rec.writes[PS], 96)[0] == 0x1_2345_6789


# -- the output filling up -------------------------------------------------------------


def test_enospc_keeps_complete_pages_and_marks_incomplete(
    tmp_path: Path, source: tuple[Path, dict[int, bytes], KdumpInputs]
) -> None:
    _, pages, inputs = source
    bitmap2 = _dumpable(inputs)
    nr = bitmap2.count()
    data_start = (_blocks(inputs) + 2) * PS + 24 * nr
    limit = data_start + 4 * PS + 10  # room for the zero page and about three raw pages
    path = tmp_path / "cut"
    with create_output(path, limit=limit) as out:
        with pytest.raises(OutputNoSpaceError):
            write_kdump(out, inputs.meta, inputs.bitmap1, bitmap2, inputs.memory,
                        Codec.NONE, True, window_pages=5)
    with create_output(path, force=True, limit=limit) as out:
        result = write_kdump(out, inputs.meta, inputs.bitmap1, bitmap2, inputs.memory,
                             Codec.NONE, True, window_pages=5, allow_incomplete=True)
        assert result.incomplete
        mark_incomplete(out, result)
    assert result.nr_pages_written + result.nr_pages_lost == nr
    assert path.stat().st_size <= limit
    with MappedFile(path) as f:
        dump = KdumpFile.open(f)
        assert dump.is_incomplete
        assert dump.header.status == 0x08
        readable, lost = [], []
        for pfn in (p for p in sorted(pages) if bitmap2.get_bools(p, p + 1)[0]):
            try:
                assert dump.read_page(pfn) == pages[pfn]
                readable.append(pfn)
            except NotInDumpError as exc:
                assert "lost" in str(exc)
                lost.append(pfn)
    assert readable == [16, 17, 18, 19, 20, 21][: len(readable)]  # a prefix in pfn order
    assert 16 in readable and lost
    assert len(readable) == result.nr_pages_written
