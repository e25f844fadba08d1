"""End to end on synthetic machines: dump, read back, compare with the builder's oracle."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from cdbdump.codecs import Codec
from cdbdump.errors import CorruptDumpError, UnknownFormatError
from cdbdump.fileio import MappedFile
from cdbdump.mm.levels import DumpLevel
from cdbdump.pipeline import DumpOptions, dump
from cdbdump.report import PathTaken
from cdbdump.vmcore.kdumpfile import KdumpFile
from tests.builders import SyntheticKernel

MakeVmcore = Callable[..., tuple[SyntheticKernel, Path]]
DIALECTS = ["5.10", "6.1", "6.3", "6.6", "6.9", "6.10", "6.12", "6.16", "7.1"]


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("level", [0, 1, 2, 4, 8, 16, 31])
def test_dump_equals_oracle(
    tiny_vmcore: MakeVmcore, tmp_path: Path, dialect: str, level: int
) -> None:
    kernel, vmcore = tiny_vmcore(dialect, seed=5)
    out = tmp_path / "out.kdump"
    report = dump(DumpOptions(vmcore=vmcore, dumpfile=out, dump_level=DumpLevel(level),
                              codec=Codec.ZSTD))
    expected_counts = kernel.expected_counts(level)
    assert report.counts.as_dict() == expected_counts.as_dict()
    assert report.max_mapnr == kernel.max_mapnr
    assert report.dump_level_applied == level
    with MappedFile(out) as f:
        kdump = KdumpFile.open(f)
        assert kdump.max_mapnr == kernel.max_mapnr
        assert np.array_equal(kdump.bitmap1.get_bools(0, kdump.max_mapnr), kernel.first_bitmap())
        dumpable = kdump.bitmap2.get_bools(0, kdump.max_mapnr)
        assert np.array_equal(dumpable, kernel.expected_dumpable(level))
        assert kdump.dump_level == level
        # every dumpable page byte-equal to what the machine holds
        mismatched = [pfn for pfn, data in kdump.iter_pages() if data != kernel.page_bytes(pfn)]
        assert mismatched == []


def test_qemu_layout_and_pn_xnum(tiny_kernel: Callable[..., SyntheticKernel],
                                 tmp_path: Path) -> None:
    kernel = tiny_kernel("6.1", seed=9, layout="qemu")
    vmcore = tmp_path / "qemu.elf"
    kernel.write(vmcore, force_xnum=True)
    out = tmp_path / "out.kdump"
    report = dump(DumpOptions(vmcore=vmcore, dumpfile=out, dump_level=DumpLevel(31)))
    assert report.path_taken is PathTaken.LEGACY
    with MappedFile(out) as f:
        kdump = KdumpFile.open(f)
        assert np.array_equal(kdump.bitmap2.get_bools(0, kdump.max_mapnr),
                              kernel.expected_dumpable(31))


def test_no_vmcoreinfo_dumps_zero_level_only(tiny_kernel: Callable[..., SyntheticKernel],
                                              tmp_path: Path) -> None:
    kernel = tiny_kernel("6.1", seed=9)
    builder = kernel.elf_builder()
    builder.notes = [n for n in builder.notes if n.name != b"VMCOREINFO"]
    vmcore = tmp_path / "novmcoreinfo.elf"
    builder.write(vmcore)
    out = tmp_path / "out.kdump"
    report = dump(DumpOptions(vmcore=vmcore, dumpfile=out, dump_level=DumpLevel(31)))
    assert report.dump_level_applied == 1
    assert report.levels_not_applied is not None
    assert "30" in report.levels_not_applied
    with MappedFile(out) as f:
        kdump = KdumpFile.open(f)
        assert kdump.dump_level == 1
        # nothing was classified: every present page with data stays dumpable
        assert kdump.bitmap2.count() == kdump.bitmap1.count()


def test_refuses_bad_kdump_and_unknown_inputs(tmp_path: Path) -> None:
    kdump_in = tmp_path / "in.kdump"
    kdump_in.write_bytes(b"KDUMP   " + bytes(600))
    with pytest.raises(CorruptDumpError, match="block_size"):
        dump(DumpOptions(vmcore=kdump_in, dumpfile=tmp_path / "o1"))
    junk = tmp_path / "junk"
    junk.write_bytes(b"not a dump at all")
    with pytest.raises(UnknownFormatError):
        dump(DumpOptions(vmcore=junk, dumpfile=tmp_path / "o2"))
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


@pytest.mark.parametrize("dialect", ["5.10", "6.12"])
@pytest.mark.parametrize("first", [0, 1, 8])
def test_refiltered_dump_equals_direct_dump(
    tiny_vmcore: MakeVmcore, tmp_path: Path, dialect: str, first: int
) -> None:
    # a dump at a lower level keeps every page the kernel's own structures need,
    # so refiltering it to -d 31 must give the very bytes of a direct -d 31 dump
    _kernel, vmcore = tiny_vmcore(dialect, seed=3)
    low, direct, refiltered = tmp_path / "low", tmp_path / "direct", tmp_path / "refiltered"
    dump(DumpOptions(vmcore=vmcore, dumpfile=low, dump_level=DumpLevel(first), codec=Codec.LZO))
    dump(DumpOptions(vmcore=vmcore, dumpfile=direct, dump_level=DumpLevel(31), codec=Codec.LZO))
    report = dump(DumpOptions(vmcore=low, dumpfile=refiltered, dump_level=DumpLevel(31),
                              codec=Codec.LZO))
    assert report.dump_level_applied == 31
    assert refiltered.read_bytes() == direct.read_bytes()


def test_refilter_level_only_rises(tiny_vmcore: MakeVmcore, tmp_path: Path) -> None:
    _kernel, vmcore = tiny_vmcore("6.1", seed=4)
    low, again = tmp_path / "low", tmp_path / "again"
    dump(DumpOptions(vmcore=vmcore, dumpfile=low, dump_level=DumpLevel(17)))
    report = dump(DumpOptions(vmcore=low, dumpfile=again, dump_level=DumpLevel(2)))
    # reference: makedumpfile update_dump_level (the input's level is OR-ed in)
    assert report.dump_level_applied == 19
    assert f"dump_level is changed to 19, because {low} was created by dump_level(17)." in (
        report.warnings
    )
    with MappedFile(low) as a, MappedFile(again) as b:
        before, after = KdumpFile.open(a), KdumpFile.open(b)
        kept = after.bitmap2.get_bools(0, after.max_mapnr)
        assert not (kept & ~before.bitmap2.get_bools(0, before.max_mapnr)).any()
        assert after.header.timestamp_sec == before.header.timestamp_sec
        assert after.notes_raw == before.notes_raw
        assert after.vmcoreinfo_raw == before.vmcoreinfo_raw
