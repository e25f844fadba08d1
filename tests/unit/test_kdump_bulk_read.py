"""The kdump reader's bulk path (KdumpFile.pages_into, cdbdump._pagebatch.decompress_pages)
against its per-page path (load_page), against itself without the extension, and
against libkdumpfile: every codec, raw (incompressible) pages, zero pages (shared
or stored), excluded pages, split sets; and the same one-line errors for bad pages."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cdbdump import codecs
from cdbdump import verify as verify_module
from cdbdump.codecs import Codec, decompress_page
from cdbdump.errors import CdbdumpError, CorruptDumpError, NotInDumpError, TruncatedDumpError
from cdbdump.fileio import MappedFile
from cdbdump.memory.kdump import KdumpMemory
from cdbdump.memory.physical import ExtentKind
from cdbdump.vmcore import kdumpfile, pagedecode
from cdbdump.vmcore.kdumpfile import KdumpFile
from cdbdump.writers.kdump import write_kdump
from cdbdump.writers.sink import create_output
from tests.oracles import (
    ElfLoad,
    kdump_inputs,
    libkdumpfile_check,
    make_notes,
    make_vmcoreinfo,
    pfn_pattern_pages,
    write_elf_vmcore,
)

PS = 4096
NR_PFNS = 700
CODECS = [c for c in Codec if c.available]


def _source_pages() -> dict[int, bytes]:
    rng = np.random.default_rng(9)
    pages = pfn_pattern_pages(range(NR_PFNS))
    for pfn in range(NR_PFNS):
        if pfn % 7 == 0:  # incompressible: stored raw (flags 0)
            pages[pfn] = rng.integers(0, 256, PS, dtype=np.uint8).tobytes()
        elif pfn % 11 == 0 or 300 <= pfn < 340:  # zero: the shared zero page with -d 1
            pages[pfn] = bytes(PS)
        elif pfn % 5 == 0:  # half random, half zero: compresses, a little
            pages[pfn] = rng.integers(0, 256, PS // 2, dtype=np.uint8).tobytes() + bytes(PS // 2)
    return pages


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, bytes]]:
    pages = _source_pages()
    notes, _ = make_notes(make_vmcoreinfo())
    elf = tmp_path_factory.mktemp("bulk") / "v.elf"
    write_elf_vmcore(elf, [ElfLoad(0, b"".join(pages[p] for p in range(NR_PFNS)))], notes)
    return elf, pages


def _excluded(pfn: int) -> bool:
    return 40 <= pfn < 50 or pfn % 13 == 0


def _write(elf: Path, out_dir: Path, codec: Codec, exclude_zero: bool,
           nr_parts: int = 1) -> list[Path]:
    inputs = kdump_inputs(elf, dump_level=1 if exclude_zero else 0)
    bitmap2 = inputs.bitmap1.copy()
    for pfn in range(NR_PFNS):
        if _excluded(pfn):
            bitmap2.clear_range(pfn, pfn + 1)
    cuts = np.linspace(0, NR_PFNS, nr_parts + 1).astype(int).tolist()
    paths = []
    for i in range(nr_parts):
        path = out_dir / f"{codec.label}-{int(exclude_zero)}-{nr_parts}-{i}.kdump"
        with create_output(path) as out:
            write_kdump(out, inputs.meta, inputs.bitmap1, bitmap2.copy(), inputs.memory, codec,
                        exclude_zero, window_pages=64,
                        split_range=(cuts[i], cuts[i + 1]) if nr_parts > 1 else None)
        paths.append(path)
    inputs.close()
    return paths


@pytest.fixture
def python_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The bulk path as it runs without cdbdump._pagebatch."""
    monkeypatch.setattr(pagedecode, "_native", lambda: None)
    monkeypatch.setattr(pagedecode, "native_flags", frozenset)
    yield


def _per_page(dump: KdumpFile, pfns: list[int]) -> bytes:
    return b"".join(dump.load_page(pfn, dump.page_desc(pfn)) for pfn in pfns)


def _bulk(dump: KdumpFile, pfns: list[int]) -> bytes:
    out = np.empty(len(pfns) * PS, dtype=np.uint8)
    dump.pages_into(np.array(pfns, dtype=np.int64), out)
    return out.tobytes()


@pytest.mark.parametrize("exclude_zero", [True, False], ids=["d1", "d0"])
@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.label)
def test_bulk_equals_per_page_and_libkdumpfile(
    source: tuple[Path, dict[int, bytes]], tmp_path: Path, codec: Codec, exclude_zero: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    elf, pages = source
    (path,) = _write(elf, tmp_path, codec, exclude_zero)
    dump = KdumpFile.open(MappedFile(path))
    kept = [p for p in range(NR_PFNS) if not _excluded(p)]
    assert np.concatenate(list(dump.iter_dumpable_pfns())).tolist() == kept
    descs = dump.page_descs(np.array(kept, dtype=np.int64))
    flags = set(descs["flags"].tolist())
    assert 0 in flags  # raw pages are in the batch
    if codec is not Codec.NONE:
        assert codec.flag in flags
    zero = [p for p in kept if pages[p] == bytes(PS)]
    shared = descs["offset"][np.isin(kept, zero)]
    # -d 1: every zero page points at the one shared zero page; else each is stored
    assert (np.unique(shared).size == 1) == exclude_zero
    expected = b"".join(pages[p] for p in kept)
    assert _per_page(dump, kept) == expected
    assert _bulk(dump, kept) == expected
    sparse = kept[::3]  # a window with gaps between its pages' data
    assert _bulk(dump, sparse) == b"".join(pages[p] for p in sparse)
    with monkeypatch.context() as m:  # no extension: the same pages
        m.setattr(pagedecode, "_native", lambda: None)
        m.setattr(pagedecode, "native_flags", frozenset)
        assert _bulk(dump, kept) == expected
    # the physical-memory seam: multi-page DATA extents go through the bulk path
    memory = KdumpMemory([dump])
    for ext in memory.extents(0, NR_PFNS * PS):
        if ext.kind is ExtentKind.DATA:
            first = ext.paddr // PS
            assert bytes(memory.data(ext)) == b"".join(
                pages[p] for p in range(first, first + ext.size // PS))
    seen = libkdumpfile_check(path, elf)
    assert seen.mismatched_pfns == [] and seen.outside_source == []
    assert seen.dumpable_pfns.tolist() == kept


@pytest.mark.parametrize("codec", [Codec.LZO if Codec.LZO.available else Codec.ZLIB],
                         ids=lambda c: c.label)
def test_split_set_bulk_read(source: tuple[Path, dict[int, bytes]], tmp_path: Path,
                             codec: Codec) -> None:
    elf, pages = source
    paths = _write(elf, tmp_path, codec, True, nr_parts=3)
    parts = [KdumpFile.open(MappedFile(p)) for p in paths]
    memory = KdumpMemory(parts)
    kept = [p for p in range(NR_PFNS) if not _excluded(p)]
    out = np.empty(len(kept) * PS, dtype=np.uint8)
    memory.pages_into(np.array(kept, dtype=np.int64), out)  # spans every file of the set
    assert out.tobytes() == b"".join(pages[p] for p in kept)
    assert b"".join(memory.read_page(p) for p in kept) == out.tobytes()
    stored = memory.stored_pfns(0, NR_PFNS)
    assert np.flatnonzero(stored).tolist() == kept


def test_sparse_lookups_read_only_what_they_need(
    clean_dumps: dict[Codec, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """pfns whose descriptors lie far apart: each group read alone, same descriptors."""
    clean = clean_dumps[next(iter(clean_dumps))]
    dump = KdumpFile.open(MappedFile(clean))
    pfns = np.concatenate(list(dump.iter_dumpable_pfns()))
    want = [dump.page_desc(p) for p in pfns.tolist()]
    monkeypatch.setattr(kdumpfile, "_DESC_CHUNK", 16)
    monkeypatch.setattr(kdumpfile, "_DESC_GAP", 3)
    reads: list[int] = []
    real = dump._read_descs

    def counting(lo: int, hi: int) -> memoryview:
        reads.append(hi - lo)
        return real(lo, hi)

    monkeypatch.setattr(dump, "_read_descs", counting)
    dump._desc_chunk = dump._desc_chunk[:0]  # nothing cached
    for sample in (pfns, pfns[::5], pfns[[0, 1, 2, len(pfns) // 2, -2, -1]]):
        got = dump.page_descs(sample)
        assert got.tolist() == [tuple(want[int(i)]) for i in np.searchsorted(pfns, sample)]
    assert max(reads) <= len(pfns)
    reads.clear()
    dump.page_descs(pfns[[0, -1]])  # the two ends of the table: two short reads
    assert sum(reads) <= 2 * 16


# -- the native decoder against decompress_page, on damaged pages --------------------------


def _stored_forms(codec: Codec) -> list[bytes]:
    compress = codec.page_function()
    pages = _source_pages()
    forms = [bytes(compress(pages[p])) for p in (1, 2, 3, 5, 10, 11, 22)]
    return [f for f in forms if len(f) < PS]


def _batch_decode(codec: Codec, data: bytes) -> bytes | None:
    """One stored page through the batch decoder of ``codec`` (None: rejected)."""
    out = np.zeros((1, PS), dtype=np.uint8)
    size = np.array([len(data)], dtype=np.uint32)
    if codec is Codec.ZSTD:  # python-zstandard's multi-frame call, as a batch of two
        ok = pagedecode._zstd_batch(data + data, np.array([0, len(data)], dtype=np.int64),
                                    np.concatenate([size, size]), np.zeros((2, PS), np.uint8),
                                    np.arange(2), PS)
        if ok:
            ok = pagedecode._zstd_batch(data, np.zeros(1, dtype=np.int64), size, out,
                                        np.arange(1), PS)
        return out.tobytes() if ok else None
    module = pagedecode._native()
    assert module is not None
    failed = module.decompress_pages(data, np.zeros(1, dtype=np.int64), size,
                                     np.array([codec.flag], dtype=np.uint32), PS, out)
    assert failed in (-1, 0)
    return out.tobytes() if failed == -1 else None


@pytest.mark.parametrize("codec", [c for c in CODECS if c is Codec.ZSTD or (
    c.flag in pagedecode.native_flags() and c is not Codec.NONE)], ids=lambda c: c.label)
def test_batch_decoder_accepts_what_decompress_page_accepts(codec: Codec) -> None:
    rng = np.random.default_rng(5)
    cases: list[bytes] = []
    for form in _stored_forms(codec):
        cases += [form, form + b"\0", form + b"garbage", form[:-1], form[: len(form) // 2],
                  form[1:], b"\xff" * len(form)]
        for _ in range(40):
            damaged = bytearray(form)
            damaged[int(rng.integers(len(damaged)))] ^= 1 << int(rng.integers(8))
            cases.append(bytes(damaged))
    if codec is Codec.ZLIB:  # a stream one byte longer than a page
        cases.append(zlib.compress(bytes(PS + 1), 1))
    nr_rejected = 0
    for data in cases:
        try:
            want: bytes | None = decompress_page(codec.flag, data, PS, file_offset=0)
        except CorruptDumpError:
            want = None
        nr_rejected += want is None
        assert _batch_decode(codec, data) == want, data.hex()
    assert nr_rejected > len(cases) // 10  # the damage was noticed, not waved through


def test_native_decoder_bounds() -> None:
    module = pagedecode._native()
    assert module is not None
    page = bytes(range(256)) * (PS // 256)
    data = b"xx" + page
    out = np.zeros(2 * PS, dtype=np.uint8)
    ok = module.decompress_pages(data, np.array([2, 2], dtype=np.int64),
                                 np.array([PS, PS], dtype=np.uint32),
                                 np.zeros(2, dtype=np.uint32), PS, out)
    assert ok == -1 and out.tobytes() == page * 2
    for offset, size, flag in ((3, PS, 0), (-1, PS, 0), (2, PS - 1, 0), (2, 0, 1),
                               (2, PS, 0x40), (2, PS + 1, 0)):
        failed = module.decompress_pages(
            data, np.array([2, offset], dtype=np.int64), np.array([PS, size], dtype=np.uint32),
            np.array([0, flag], dtype=np.uint32), PS, out)
        assert failed == 1, (offset, size, flag)


# -- bad pages: the bulk path fails as the per-page path does --------------------------------


def _patch(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(data)


def _same_error(path: Path, pfns: list[int], python: bool,
                monkeypatch: pytest.MonkeyPatch) -> CdbdumpError:
    dump = KdumpFile.open(MappedFile(path))
    with pytest.raises(CdbdumpError) as per_page:
        _per_page(dump, pfns)
    with monkeypatch.context() as m:
        if python:
            m.setattr(pagedecode, "_native", lambda: None)
            m.setattr(pagedecode, "native_flags", frozenset)
        with pytest.raises(CdbdumpError) as bulk:
            _bulk(dump, pfns)
    assert type(bulk.value) is type(per_page.value)
    assert str(bulk.value) == str(per_page.value)
    return bulk.value


@pytest.fixture(scope="module")
def clean_dumps(source: tuple[Path, dict[int, bytes]],
                tmp_path_factory: pytest.TempPathFactory) -> dict[Codec, Path]:
    elf, _ = source
    out = tmp_path_factory.mktemp("clean")
    return {c: _write(elf, out, c, True)[0] for c in CODECS if c is not Codec.NONE}


def _fresh(clean: Path, tmp_path: Path) -> tuple[Path, KdumpFile, list[int]]:
    path = tmp_path / clean.name
    path.write_bytes(clean.read_bytes())
    dump = KdumpFile.open(MappedFile(path))
    return path, dump, np.concatenate(list(dump.iter_dumpable_pfns())).tolist()


def _compressed_pfn(dump: KdumpFile, pfns: list[int], nth: int) -> int:
    descs = dump.page_descs(np.array(pfns, dtype=np.int64))
    hits = np.flatnonzero(descs["flags"] != 0)
    return int(pfns[int(hits[nth])])


@pytest.mark.parametrize("python", [False, True], ids=["native", "python"])
@pytest.mark.parametrize("codec", [c for c in CODECS if c is not Codec.NONE],
                         ids=lambda c: c.label)
def test_damaged_page_data_same_error(clean_dumps: dict[Codec, Path], tmp_path: Path,
                                      codec: Codec, python: bool,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path, dump, pfns = _fresh(clean_dumps[codec], tmp_path)
    victim = _compressed_pfn(dump, pfns, 20)
    desc = dump.page_desc(victim)
    _patch(path, desc.offset, b"\xff" * min(8, desc.size))
    err = _same_error(path, pfns, python, monkeypatch)
    assert isinstance(err, CorruptDumpError) and err.file_offset == desc.offset


@pytest.mark.parametrize("python", [False, True], ids=["native", "python"])
@pytest.mark.parametrize("damage", ["size", "flags", "offset", "lost", "two"])
def test_damaged_page_desc_same_error(clean_dumps: dict[Codec, Path], tmp_path: Path,
                                      damage: str, python: bool,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    codec = Codec.LZO if Codec.LZO in clean_dumps else Codec.ZLIB
    path, dump, pfns = _fresh(clean_dumps[codec], tmp_path)
    victim = _compressed_pfn(dump, pfns, 30)
    where = dump.desc_file_offset(victim)
    if damage == "size":
        _patch(path, where + 8, struct.pack("<I", PS + 1))
    elif damage == "flags":
        _patch(path, where + 12, struct.pack("<I", 0x40))
    elif damage == "offset":
        _patch(path, where, struct.pack("<q", 100))
    elif damage == "lost":
        _patch(path, where, bytes(24))
    else:  # the first bad page in pfn order is the one named
        later = _compressed_pfn(dump, pfns, 40)
        _patch(path, dump.desc_file_offset(later) + 12, struct.pack("<I", 0x40))
        desc = dump.page_desc(victim)
        _patch(path, desc.offset, b"\xff" * min(8, desc.size))
    err = _same_error(path, pfns, python, monkeypatch)
    if damage == "lost":
        assert isinstance(err, NotInDumpError) and err.address == victim * PS
    elif damage == "two":
        assert isinstance(err, CorruptDumpError)
        assert err.file_offset == dump.page_desc(victim).offset
    else:
        assert isinstance(err, CorruptDumpError) and err.file_offset == where
        assert f"pfn {victim:#x}" in str(err)


def test_page_data_past_end_of_file_same_error(clean_dumps: dict[Codec, Path], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    clean = clean_dumps[next(iter(clean_dumps))]
    dump = KdumpFile.open(MappedFile(clean))
    pfns = np.concatenate(list(dump.iter_dumpable_pfns())).tolist()
    desc = dump.page_desc(pfns[-1])
    cut = tmp_path / "cut.kdump"
    cut.write_bytes(clean.read_bytes()[: desc.offset + desc.size - 1])
    err = _same_error(cut, pfns, False, monkeypatch)
    assert isinstance(err, TruncatedDumpError)


@pytest.mark.parametrize("codec", [c for c in CODECS if c is Codec.ZSTD or (
    c.flag in pagedecode.native_flags() and c is not Codec.NONE)], ids=lambda c: c.label)
def test_no_per_page_decoding(clean_dumps: dict[Codec, Path], codec: Codec,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    """No per-page Python in the batch path: decompress_page is never called."""
    dump = KdumpFile.open(MappedFile(clean_dumps[codec]))
    pfns = np.concatenate(list(dump.iter_dumpable_pfns())).tolist()
    calls: list[int] = []
    real = pagedecode.decompress_page

    def counting(flags: int, *args: object, **kwargs: object) -> bytes:
        calls.append(flags)
        return real(flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pagedecode, "decompress_page", counting)
    monkeypatch.setattr(codecs, "decompress_page", counting)
    expected = _per_page(dump, pfns)
    calls.clear()
    assert _bulk(dump, pfns) == expected
    assert calls == []


def test_verify_bulk_equals_page_by_page(source: tuple[Path, dict[int, bytes]],
                                         clean_dumps: dict[Codec, Path], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    _, pages = source
    changed = dict(pages)
    for pfn in (100, 101, 555):
        changed[pfn] = bytes(PS - 1) + b"\x01"
    notes, _ = make_notes(make_vmcoreinfo())
    other = tmp_path / "other.elf"
    write_elf_vmcore(other, [ElfLoad(0, b"".join(changed[p] for p in range(NR_PFNS)))], notes)
    path, dump, pfns = _fresh(clean_dumps[next(iter(clean_dumps))], tmp_path)
    for pfn in (pfns[10], pfns[400]):  # lost, in a dump not flagged incomplete
        _patch(path, dump.desc_file_offset(pfn), bytes(24))
    bulk = verify_module.verify(path, source=other)
    monkeypatch.setattr(verify_module, "_check_window", lambda *args: False)
    per_page = verify_module.verify(path, source=other)
    assert bulk.as_json() == per_page.as_json()
    assert bulk.nr_lost == 2 and bulk.nr_differing == 3 and not bulk.ok
