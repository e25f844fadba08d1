"""The ELF writer's segment rule against a per-page transcription of makedumpfile's
loop, the ELF file read back, and --split/--reassemble on a synthetic machine."""

from __future__ import annotations

import itertools
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdbdump.bitmap import Bitmap
from cdbdump.errors import InputError
from cdbdump.fileio import MappedFile
from cdbdump.memory.physical import ElfMemory
from cdbdump.vmcore.elfcore import ElfCore
from cdbdump.writers import elf as elf_writer
from cdbdump.writers.elf import (
    PFN_EXCLUDED,
    exclude_zero_pages,
    mark_elf_incomplete,
    plan_elf,
    write_elf,
)
from cdbdump.writers.sink import create_output
from cdbdump.writers.split import reassemble, split_ranges, splitblock_pages
from tests.builders import SyntheticKernel
from tests.oracles import ElfLoad, SourceElf, make_notes, make_vmcoreinfo, write_elf_vmcore

PS = 4096
# low memory ending mid-page, RAM to one frame short of 32 MiB: max_mapnr 0x1fff
ODD_RAM = [(0x1000, 0x9FC00), (0x100000, (32 << 20) - 0x1000)]
MakeVmcore = Callable[..., tuple[SyntheticKernel, Path]]

# input PT_LOADs: (paddr, memsz, zero page indexes); the third starts and ends mid-page,
# the last lies above max_mapnr (like QEMU's BIOS ROM)
LOADS = [(0, 700 * PS, ()), (720 * PS, 300 * PS, ()),
         (1100 * PS + 0x400, 200 * PS + 0x200, ()), (4000 * PS, 40 * PS, (3, 4, *range(30, 40)))]
MAX_MAPNR = 1400


def _page(pfn: int) -> bytes:
    return (np.arange(PS // 8, dtype=np.uint64) + np.uint64(pfn * 7919 + 1)).tobytes()


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, ElfCore,
                                                                          ElfMemory]]:
    path = tmp_path_factory.mktemp("elf") / "in.elf"
    loads = []
    for paddr, memsz, zero in LOADS:
        first = paddr // PS
        data = b"".join(bytes(PS) if i in zero else _page(first + i)
                        for i in range(-(-(paddr % PS + memsz) // PS)))
        start = paddr % PS
        loads.append(ElfLoad(paddr, data[start : start + memsz]))
    notes, _ = make_notes(make_vmcoreinfo())
    write_elf_vmcore(path, loads, notes)
    file = MappedFile(path)
    core = ElfCore.parse(file)
    yield path, core, ElfMemory(file, core.loads, PS)
    file.close()


def reference_plan(core: ElfCore, dumpable: Callable[[int], bool],
                   offset_load: int) -> tuple[list[tuple[int, ...]], int]:
    """makedumpfile write_elf_pages_cyclic, page by page (the test oracle)."""
    out: list[tuple[int, ...]] = []
    off_seg = offset_load
    nr_excluded = 0
    for load in core.loads:
        pfn_start, pfn_end = load.paddr // PS, (load.paddr + load.memsz) // PS
        frac_head, frac_tail = PS - load.paddr % PS, (load.paddr + load.memsz) % PS
        memsz = filesz = excl = 0
        if frac_head != PS:
            memsz = filesz = frac_head
            pfn_start += 1
        if frac_tail:
            pfn_end += 1
        paddr, vaddr = load.paddr, load.vaddr
        for pfn in range(pfn_start, pfn_end):
            step = frac_tail if pfn == pfn_end - 1 and frac_tail else PS
            if not dumpable(pfn):
                excl += 1
                memsz += step
                continue
            if excl == 0:
                memsz += step
                filesz += step
                continue
            if excl < PFN_EXCLUDED:
                memsz += step
                filesz += PS * excl + step
                excl = 0
                continue
            nr_excluded += excl
            out.append((paddr, vaddr, memsz, filesz, off_seg if filesz else 0))
            paddr += memsz
            vaddr += memsz
            off_seg += filesz
            excl = 0
            memsz = filesz = step  # makedumpfile takes page_size even for a partial last page
        nr_excluded += excl
        out.append((paddr, vaddr, memsz, filesz, off_seg))
        off_seg += filesz
    return out, nr_excluded


runs = st.lists(st.tuples(st.booleans(), st.integers(1, 700)), min_size=1, max_size=30)


@given(pattern=runs, exclude_zero=st.booleans())
def test_segments_follow_makedumpfile(machine: tuple[Path, ElfCore, ElfMemory],
                                      pattern: list[tuple[bool, int]],
                                      exclude_zero: bool) -> None:
    _, core, memory = machine
    bools = np.concatenate([np.full(n, v, dtype=np.bool_) for v, n in pattern])
    bools = np.resize(bools, MAX_MAPNR)
    bitmap2 = Bitmap(MAX_MAPNR)
    bitmap2.put_bools(0, bools)
    rom_zero = {4000 + i for i in LOADS[-1][2]}

    def dumpable(pfn: int) -> bool:
        if pfn < MAX_MAPNR:
            return bool(bools[pfn])
        return not (exclude_zero and pfn in rom_zero)

    with mock.patch.object(elf_writer, "_PLAN_PFNS", 97):  # chunk edges everywhere
        plan = plan_elf(core.loads, memory, bitmap2, len(core.notes_raw),
                        exclude_zero=exclude_zero)
    want, nr_excluded = reference_plan(core, dumpable, plan.offset_load)
    got = [(s.paddr, s.vaddr, s.memsz, s.filesz, s.file_offset) for s in plan.segments]
    assert got == want
    assert plan.nr_pages_elf_excluded == nr_excluded


def _elf_loads(path: Path) -> list[tuple[int, ...]]:
    raw = path.read_bytes()
    phoff, = struct.unpack_from("<Q", raw, 32)
    phnum, = struct.unpack_from("<H", raw, 56)
    return [struct.unpack_from("<IIQQQQQQ", raw, phoff + 56 * i) for i in range(phnum)]


def test_elf_file_reads_back(machine: tuple[Path, ElfCore, ElfMemory],
                             tmp_path: Path) -> None:
    path, core, memory = machine
    bitmap2 = Bitmap(MAX_MAPNR)
    for start, end in memory.present_pfn_ranges():
        bitmap2.set_range(start, end)
    bitmap2.clear_range(10, 400)  # a long excluded run: a hole
    bitmap2.clear_range(500, 510)  # a short one: kept with its data
    nr_zero = exclude_zero_pages(memory, bitmap2)
    assert nr_zero == 0  # every RAM page has data; the ROM's zero pages are above max_mapnr
    plan = plan_elf(core.loads, memory, bitmap2, len(core.notes_raw), exclude_zero=True)
    out = create_output(tmp_path / "o.elf")
    result = write_elf(out, bytes(core.file.view(0, 64)), core.notes_raw, plan, memory)
    out.close()
    assert result.no_space is None
    raw = (tmp_path / "o.elf").read_bytes()
    assert len(raw) == plan.file_size
    phdrs = _elf_loads(tmp_path / "o.elf")
    assert phdrs[0][0] == 4 and raw[phdrs[0][2] : phdrs[0][2] + phdrs[0][5]] == core.notes_raw
    src = SourceElf(str(path), PS)
    try:
        kept: set[int] = set()
        for p_type, _f, off, _v, paddr, filesz, memsz, _a in phdrs[1:]:
            assert p_type == 1 and filesz <= memsz
            data = raw[off : off + filesz]
            for pos in range(0, filesz, PS):
                start = paddr + pos
                pfn = start // PS
                page = src.read_page(pfn)
                assert page is not None
                lo = start % PS
                assert data[pos : pos + PS - lo] == page[lo : lo + min(PS - lo, filesz - pos)]
                kept.add(pfn)
    finally:
        src.close()
    assert not kept & set(range(10, 400))  # the long run is a hole
    assert set(range(500, 510)) <= kept  # the short run is there
    # above max_mapnr: the ROM's trailing zero pages are left out, the two inside
    # (a run shorter than 256 pages) are kept with the rest
    assert not kept & {4000 + i for i in range(30, 40)}
    assert {4000 + i for i in range(30)} <= kept


# -- split ---------------------------------------------------------------------------------


def test_split_ranges_cover_and_balance() -> None:
    rng = np.random.default_rng(7)
    bitmap2 = Bitmap(100_000)
    bitmap2.put_bools(0, rng.random(100_000) < 0.3)
    total = bitmap2.count()
    for nr_files in (2, 3, 5):
        block = splitblock_pages(PS, 64 << 10)  # --splitblock-size 64: 16 pages
        ranges = split_ranges(bitmap2, nr_files, block)
        assert ranges[0][0] == 0 and ranges[-1][1] == bitmap2.nr_bits
        assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
        counts = [bitmap2.count(s, e) for s, e in ranges]
        assert sum(counts) == total
        share = total / nr_files
        assert all(abs(c - share) < share * 0.2 for c in counts), counts
    with pytest.raises(InputError, match="not a positive multiple of the page size"):
        splitblock_pages(PS, 6 << 10)  # check_splitblock_size
    # makedumpfile's 1 GiB block on a small machine: everything in the first file
    ranges = split_ranges(bitmap2, 2, splitblock_pages(PS, None))
    assert ranges == [(0, 100_000), (100_000, 100_000)]


def _cdbdump(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cdbdump", *args], capture_output=True,
                          text=True, check=False, timeout=300)


@pytest.mark.parametrize("level", ["1", "31"])
def test_split_then_reassemble_is_the_direct_dump(tiny_vmcore: MakeVmcore, tmp_path: Path,
                                                  level: str) -> None:
    # a machine whose direct dump is cyclic too: on a one-cycle one the split set
    # lacks a PT_LOAD's partial last page (tests/differential/test_split_identity.py)
    kernel, vmcore = tiny_vmcore("6.1", seed=5, ram=ODD_RAM)
    assert not kernel.keeps_partial_last_pages
    direct = tmp_path / "direct"
    pieces = [tmp_path / f"p{i}" for i in range(3)]
    assert _cdbdump("-l", "-d", level, str(vmcore), str(direct)).returncode == 0
    proc = _cdbdump("--split", "--splitblock-size", "256", "-l", "-d", level, str(vmcore),
                    *map(str, pieces))
    assert proc.returncode == 0, proc.stderr
    assert f"The dumpfiles are saved to {pieces[0]}, {pieces[1]}, and {pieces[2]}." in proc.stderr
    heads = [p.read_bytes()[:464] for p in pieces]
    assert heads[0] == heads[1] == heads[2]
    subs = [struct.unpack_from("<qiiQQqQqQqQQQQ", p.read_bytes(), PS) for p in pieces]
    assert [s[2] for s in subs] == [1, 1, 1]
    assert subs[0][11] == 0 and subs[-1][12] == subs[-1][13]  # cover [0, max_mapnr)
    assert subs[0][12] == subs[1][11] and subs[1][12] == subs[2][11]
    assert all(sub[11] < sub[12] for sub in subs)  # each piece holds pfns
    joined = tmp_path / "joined"
    out = create_output(joined)
    result = reassemble(list(reversed(pieces)), out)  # any order: sorted by start_pfn
    out.close()
    assert not result.incomplete and result.nr_lost == 0
    assert joined.read_bytes() == direct.read_bytes()
    # a missing piece is a gap
    out = create_output(tmp_path / "gap")
    with pytest.raises(InputError, match="no split file holds pfns"):
        reassemble([pieces[0], pieces[2]], out)
    out.discard()
    # a whole dump is not a piece
    proc = _cdbdump("--reassemble", str(direct), str(pieces[1]), str(tmp_path / "x"))
    assert proc.returncode == 1 and "not one file of a --split set" in proc.stderr
    assert not (tmp_path / "x").exists()


def test_elf_output_full_is_kept_and_flagged(machine: tuple[Path, ElfCore, ElfMemory],
                                             tmp_path: Path) -> None:
    _, core, memory = machine
    bitmap2 = Bitmap(MAX_MAPNR)
    for start, end in memory.present_pfn_ranges():
        bitmap2.set_range(start, end)
    plan = plan_elf(core.loads, memory, bitmap2, len(core.notes_raw), exclude_zero=False)
    limit = plan.offset_load + 100 * PS + 5
    out = create_output(tmp_path / "full.elf", limit=limit)
    ehdr = bytes(core.file.view(0, 64))
    result = write_elf(out, ehdr, core.notes_raw, plan, memory)
    assert result.no_space is not None
    assert 0 < result.nr_pages_lost < plan.nr_pages_to_write
    mark_elf_incomplete(out, ehdr)
    out.close()
    raw = (tmp_path / "full.elf").read_bytes()
    assert len(raw) == limit
    assert struct.unpack_from("<I", raw, 48)[0] & 1  # DUMP_ELF_INCOMPLETE


def test_extended_numbering_past_pn_xnum() -> None:
    """65535+ program headers: e_phnum PN_XNUM, the count in section header 0's sh_info."""
    from cdbdump.writers.elf import ElfPlan, ElfSegment, _headers

    nr = 0x10000
    segments = [ElfSegment(i * PS, i * PS, PS, PS, 0, 0, 0) for i in range(nr)]
    offset_note = 64 + 56 * (nr + 1) + 64
    plan = ElfPlan(segments, offset_note, 16, offset_note + 16, 0, 0, nr)
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    ehdr, phdrs, shdr = _headers(struct.pack("<16sHHIQQQIHHHHHH", ident, 4, 62, 1, 0, 64, 0, 0,
                                             64, 56, 3, 0, 0, 0), plan)
    fields = struct.unpack("<16sHHIQQQIHHHHHH", ehdr)
    assert fields[5] == 64 and fields[10] == 0xFFFF  # e_phoff, e_phnum
    assert fields[6] == offset_note - 64 and fields[12] == 1  # e_shoff, e_shnum
    assert struct.unpack("<IIQQQQIIQQ", shdr)[7] == nr + 1  # sh_info: PT_NOTE + PT_LOADs
    assert len(phdrs) == 56 * (nr + 1)
