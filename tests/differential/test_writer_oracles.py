"""cdbdump's kdump files checked by readers that share no code with it.

* synthetic vmcores, every codec: libkdumpfile and drgn read every dumpable page
  byte-equal to the source ELF, see exactly the pfns of the 2nd bitmap, cannot
  read excluded pages, and find the source's VMCOREINFO;
* a real Debian 6.1 vmcore (tests/real tier, built under QEMU): given the
  bitmaps makedumpfile 1.7.2 chose, cdbdump writes a file byte-identical to
  makedumpfile's own, and makedumpfile can refilter cdbdump's zlib/lzo output
  back into exactly its own dump.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from cdbdump.bitmap import Bitmap
from cdbdump.codecs import Codec
from cdbdump.fileio import MappedFile
from cdbdump.memory.physical import ElfMemory
from cdbdump.vmcore.elfcore import ElfCore
from cdbdump.vmcore.kdumpfile import KdumpFile
from cdbdump.writers.kdump import KdumpMetadata, write_kdump
from cdbdump.writers.sink import create_output
from tests.oracles import (
    ElfLoad,
    OracleResult,
    crash_header,
    drgn_check,
    kdump_inputs,
    libkdumpfile_check,
    make_notes,
    make_vmcoreinfo,
    makedumpfile_codecs,
    makedumpfile_refilter,
    oracle_unavailable,
    pfn_pattern_pages,
    run_makedumpfile,
    write_elf_vmcore,
)

pytestmark = pytest.mark.oracle
PS = 4096


@dataclass
class Synthetic:
    elf: Path
    vmcoreinfo: bytes
    expected_pfns: np.ndarray  # the 2nd bitmap's set pfns
    excluded_pfns: list[int]
    dumps: dict[Codec, Path]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Synthetic]:
    tmp = tmp_path_factory.mktemp("oracles")
    rng = np.random.default_rng(42)
    pfns = [*range(1, 160), *range(256, 300)]
    pages = pfn_pattern_pages(pfns)
    for pfn in (5, 6, 7, 100, 256):
        pages[pfn] = bytes(PS)
    for pfn in (9, 120, 290):
        pages[pfn] = rng.integers(0, 256, PS, dtype=np.uint8).tobytes()
    vmcoreinfo = make_vmcoreinfo()
    notes, _ = make_notes(vmcoreinfo, nr_cpus=2)
    elf = tmp / "vmcore.elf"
    write_elf_vmcore(elf, [
        ElfLoad(1 * PS, b"".join(pages[p] for p in range(1, 160))),
        ElfLoad(256 * PS, b"".join(pages[p] for p in range(256, 300))[: -PS // 2],
                memsz=44 * PS + 3 * PS),  # mid-page end, then a p_memsz-only tail
    ], notes, phoff=192)
    inputs = kdump_inputs(elf, max_mapnr=320, dump_level=31)
    keep = rng.random(320) < 0.75
    bitmap2 = Bitmap(320)
    bitmap2.put_bools(0, inputs.bitmap1.get_bools(0, 320) & keep)
    dumps = {}
    for codec in Codec:
        path = tmp / f"{codec.name.lower()}.kdump"
        with create_output(path) as out:
            write_kdump(out, inputs.meta, inputs.bitmap1, bitmap2, inputs.memory, codec, True)
        dumps[codec] = path
    expected = np.flatnonzero(bitmap2.get_bools(0, 320))
    excluded = sorted(set(np.flatnonzero(inputs.bitmap1.get_bools(0, 320)).tolist())
                      - set(expected.tolist()))
    inputs.close()
    yield Synthetic(elf, vmcoreinfo, expected, excluded, dumps)


def _assert_agrees(result: OracleResult, syn: Synthetic) -> None:
    assert result.ok, result.summary()
    assert np.array_equal(result.dumpable_pfns, syn.expected_pfns), result.summary()
    assert result.vmcoreinfo_raw is not None
    assert result.vmcoreinfo_raw.rstrip(b"\0") == syn.vmcoreinfo.rstrip(b"\0")


@pytest.mark.parametrize("codec", list(Codec), ids=lambda c: c.name.lower())
def test_libkdumpfile_reads_every_page(synthetic: Synthetic, codec: Codec) -> None:
    result = libkdumpfile_check(synthetic.dumps[codec], synthetic.elf, probe_excluded=400)
    _assert_agrees(result, synthetic)


@pytest.mark.parametrize("codec", list(Codec), ids=lambda c: c.name.lower())
def test_drgn_reads_every_page(synthetic: Synthetic, codec: Codec) -> None:
    result = drgn_check(synthetic.dumps[codec], synthetic.elf)
    _assert_agrees(result, synthetic)
    assert not set(result.dumpable_pfns.tolist()) & set(synthetic.excluded_pfns)


@pytest.mark.parametrize("codec", list(Codec), ids=lambda c: c.name.lower())
def test_crash_parses_the_headers(synthetic: Synthetic, codec: Codec) -> None:
    fields = crash_header(synthetic.dumps[codec])
    assert fields["signature"] == '"KDUMP   "'
    assert fields["header_version"] == "6"
    assert int(fields["status"].split()[0], 16) == codec.flag
    assert fields["block_size"] == str(PS)
    assert fields["max_mapnr"].split()[0] == "320"
    assert fields["nr_cpus"] == "2"
    assert fields["dump_level"].split()[0] == "31"
    assert fields["num_prstatus_notes"] == "2"
    assert fields["offset_note"].split()[0] == str(PS + 104)
    assert int(fields["total_valid_pages"]) == synthetic.expected_pfns.size


def test_oracles_notice_a_corrupted_page(synthetic: Synthetic, tmp_path: Path) -> None:
    """The oracles are not vacuous: one changed byte in one raw page is reported."""
    bad = tmp_path / "bad.kdump"
    bad.write_bytes(synthetic.dumps[Codec.NONE].read_bytes())
    dump = KdumpFile.open(MappedFile(bad))
    victim = int(synthetic.expected_pfns[10])
    desc = dump.page_desc(victim)
    assert desc.flags == 0
    with bad.open("r+b") as f:
        f.seek(desc.offset + 100)
        byte = f.read(1)
        f.seek(desc.offset + 100)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert libkdumpfile_check(bad, synthetic.elf).mismatched_pfns == [victim]
    assert drgn_check(bad, synthetic.elf, pfns=synthetic.expected_pfns.tolist()
                      ).mismatched_pfns == [victim]


# -- a real vmcore against makedumpfile 1.7.2 ---------------------------------------------

REAL_VMCORE = "debian12-6.1-1g"


@pytest.fixture(scope="module")
def real() -> tuple[Path, Path]:
    """(QEMU's ELF as written, the copy makedumpfile can read)."""
    repo = Path(__file__).resolve().parents[2]
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    from fixtures import real_vmcores

    if not makedumpfile_codecs():
        oracle_unavailable("makedumpfile is not installed")
    try:  # built on first use and cached in .cache/vmcores (about 25 s)
        return real_vmcores.ensure(REAL_VMCORE), real_vmcores.ensure_normalized(REAL_VMCORE)
    except real_vmcores.VmcoreUnavailable as exc:
        oracle_unavailable(str(exc))


def _same_dump_as(ref: Path, raw_elf: Path, out: Path, codec: Codec) -> None:
    """Write with the reference dump's bitmaps and header facts, then compare bytes."""
    with MappedFile(raw_elf) as elf_file, MappedFile(ref) as ref_file:
        core = ElfCore.parse(elf_file)
        memory = ElfMemory(elf_file, core.loads, PS)
        dump = KdumpFile.open(ref_file)
        note = core.vmcoreinfo_note
        assert dump.sub_header is not None and note is not None
        meta = KdumpMetadata(
            utsname=dump.header.utsname, timestamp_sec=dump.header.timestamp_sec,
            page_size=PS, max_mapnr=dump.max_mapnr, phys_base=dump.sub_header.phys_base,
            dump_level=dump.sub_header.dump_level, notes_raw=core.notes_raw,
            vmcoreinfo_desc_offset=core.vmcoreinfo_desc_offset,
            vmcoreinfo_size=note.desc_size, nr_cpus=core.nr_cpus,
        )
        with create_output(out, force=True) as sink:
            write_kdump(sink, meta, dump.bitmap1, dump.bitmap2, memory, codec,
                        bool(dump.sub_header.dump_level & 1))
    assert out.read_bytes() == ref.read_bytes()


@pytest.mark.real
@pytest.mark.slow
@pytest.mark.parametrize(("option", "level", "codec"), [
    ("-c", 31, Codec.ZLIB), ("-l", 31, Codec.LZO), ("", 31, Codec.NONE), ("-l", 1, Codec.LZO),
], ids=["zlib-d31", "lzo-d31", "none-d31", "lzo-d1"])
def test_byte_identical_to_makedumpfile(real: tuple[Path, Path], tmp_path: Path,
                                        option: str, level: int, codec: Codec) -> None:
    raw_elf, norm_elf = real
    ref = tmp_path / "ref.kdump"
    proc = run_makedumpfile(norm_elf, ref, level=level, codec_option=option)
    assert proc.returncode == 0, proc.stderr
    _same_dump_as(ref, raw_elf, tmp_path / "ours.kdump", codec)


@pytest.mark.real
@pytest.mark.slow
@pytest.mark.parametrize(("option", "codec"), [("-c", Codec.ZLIB), ("-l", Codec.LZO)])
def test_makedumpfile_refilters_our_dump(real: tuple[Path, Path], tmp_path: Path,
                                         option: str, codec: Codec) -> None:
    raw_elf, norm_elf = real
    ref = tmp_path / "ref.kdump"
    assert run_makedumpfile(norm_elf, ref, level=31, codec_option=option).returncode == 0
    ours = tmp_path / "ours.kdump"
    _same_dump_as(ref, raw_elf, ours, codec)
    again = tmp_path / "refiltered.kdump"
    proc = makedumpfile_refilter(ours, again, level=31, codec_option=option)
    assert proc.returncode == 0, proc.stderr
    assert again.read_bytes() == ref.read_bytes()
    result = libkdumpfile_check(ours, raw_elf)
    assert result.ok, result.summary()
    assert result.nr_dumpable == KdumpFile.open(MappedFile(ours)).nr_dumpable
