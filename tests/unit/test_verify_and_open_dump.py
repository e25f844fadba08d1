"""open_dump, verify and info on synthetic machines: typed errors, verdict lines, exit codes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import cdbdump
from cdbdump.cli import main
from cdbdump.codecs import Codec
from cdbdump.errors import NotInDumpError, NotPresentError
from cdbdump.fileio import MappedFile
from cdbdump.formats.kdump import DISK_DUMP_HEADER_STATUS_OFFSET, DUMP_DH_COMPRESSED_INCOMPLETE
from cdbdump.mm.levels import DumpLevel
from cdbdump.pipeline import DumpOptions, dump
from cdbdump.verify import verify
from cdbdump.vmcore.kdumpfile import KdumpFile
from tests.builders import SyntheticKernel

MakeVmcore = Callable[..., tuple[SyntheticKernel, Path]]


@pytest.fixture
def dumped(tiny_vmcore: MakeVmcore, tmp_path: Path) -> tuple[SyntheticKernel, Path, Path]:
    kernel, vmcore = tiny_vmcore("6.6", seed=11)
    out = tmp_path / "d31.kdump"
    dump(DumpOptions(vmcore=vmcore, dumpfile=out, dump_level=DumpLevel(31), codec=Codec.ZLIB))
    return kernel, vmcore, out


def test_open_dump_reads_what_the_machine_held(dumped: tuple[SyntheticKernel, Path, Path]) -> None:
    kernel, vmcore, out = dumped
    with cdbdump.open_dump(out) as d, cdbdump.open_dump(vmcore) as elf:
        assert (d.facts.format, d.facts.dump_level, d.facts.codec) == ("kdump-compressed", 31,
                                                                      "zlib")
        assert d.vmcoreinfo is not None and d.vmcoreinfo.osrelease == elf.vmcoreinfo.osrelease
        runs = list(d.dumpable_pfn_runs())
        dumpable = np.zeros(d.facts.max_mapnr, dtype=bool)
        for lo, hi in runs:
            dumpable[lo:hi] = True
        assert np.array_equal(dumpable, kernel.expected_dumpable(31))
        lo, hi = next(r for r in runs[len(runs) // 2 :] if r[1] - r[0] >= 3)
        assert d.read_pfn(lo) == elf.read_pfn(lo) == kernel.page_bytes(lo)
        assert d.read(lo * 4096 + 100, 8192) == elf.read(lo * 4096 + 100, 8192)
        excluded = int(np.flatnonzero(kernel.first_bitmap() & ~dumpable)[0])
        with pytest.raises(NotInDumpError) as info:
            d.read_pfn(excluded)
        assert not isinstance(info.value, NotPresentError)
        hole = int(np.flatnonzero(~kernel.first_bitmap())[0])
        with pytest.raises(NotPresentError):
            d.read_pfn(hole)
        with pytest.raises(NotPresentError):
            elf.read_pfn(hole)


def test_verify_passes_then_fails_on_damage(dumped: tuple[SyntheticKernel, Path, Path],
                                            tiny_vmcore: MakeVmcore, tmp_path: Path) -> None:
    _kernel, vmcore, out = dumped
    good = verify(out, source=vmcore)
    assert good.ok and good.nr_checked == good.nr_dumpable > 0, good.problems
    # a different machine as the source
    _other, other_vmcore = tiny_vmcore("6.6", seed=12)
    wrong = verify(out, source=other_vmcore)
    assert not wrong.ok and "differs from the source" in wrong.verdict()
    # one page's stored bytes garbled
    with MappedFile(out) as f:
        k = KdumpFile.open(f)
        pfns = next(k.iter_dumpable_pfns())
        descs = k.page_descs(pfns)
        i = int(np.flatnonzero(descs["flags"] == Codec.ZLIB.flag)[3])
        pfn, offset = int(pfns[i]), int(descs["offset"][i])
    bad = tmp_path / "bad.kdump"
    data = bytearray(out.read_bytes())
    data[offset : offset + 16] = b"\xff" * 16
    bad.write_bytes(data)
    result = verify(bad)
    assert result.verdict().startswith(f"FAILED: {bad}: pfn {pfn:#x}: ")
    bad.write_bytes(out.read_bytes()[: len(data) - 5000])
    assert verify(bad).verdict().startswith(f"FAILED: {bad}: truncated: ")
    # the CLI: one verdict line, exit 0/1
    with pytest.raises(SystemExit) as exit_ok:
        main(["verify", str(out), "--source", str(vmcore)])
    assert exit_ok.value.code == 0
    with pytest.raises(SystemExit) as exit_bad:
        main(["verify", str(bad)])
    assert exit_bad.value.code == 1


def test_info_and_makedumpfile_form_coexist(dumped: tuple[SyntheticKernel, Path, Path],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    _kernel, _vmcore, out = dumped
    with pytest.raises(SystemExit) as info:
        main(["info", str(out)])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "dump_level      : 31" in text and "codec           : zlib" in text
    with pytest.raises(SystemExit) as missing:
        main(["info", str(out.with_name("nope"))])
    assert missing.value.code == 1


def test_incomplete_input_stays_flagged(dumped: tuple[SyntheticKernel, Path, Path],
                                        tmp_path: Path) -> None:
    _kernel, _vmcore, out = dumped
    flagged = tmp_path / "flagged.kdump"
    data = bytearray(out.read_bytes())
    at = slice(DISK_DUMP_HEADER_STATUS_OFFSET, DISK_DUMP_HEADER_STATUS_OFFSET + 4)
    status = int.from_bytes(data[at], "little") | DUMP_DH_COMPRESSED_INCOMPLETE
    data[at] = status.to_bytes(4, "little")
    flagged.write_bytes(data)
    again = tmp_path / "again.kdump"
    report = dump(DumpOptions(vmcore=flagged, dumpfile=again, dump_level=DumpLevel(31)))
    assert report.input_incomplete
    assert any("incomplete" in w for w in report.warnings)
    with cdbdump.open_dump(again) as d:
        assert d.facts.incomplete
    assert verify(again).verdict().startswith("OK:") and "INCOMPLETE" in verify(again).verdict()


def test_eraseinfo_carries_over(dumped: tuple[SyntheticKernel, Path, Path],
                                tmp_path: Path) -> None:
    # makedumpfile --config records what it erased after the page data; a
    # refiltered dump copies it after its own data (write_kdump_eraseinfo)
    _kernel, _vmcore, out = dumped
    erase = b"erase modules_symbol.secret size 16\n"
    data = bytearray(out.read_bytes())
    at = 4096 + 64  # kdump_sub_header.offset_eraseinfo, size_eraseinfo
    data[at : at + 16] = len(data).to_bytes(8, "little") + len(erase).to_bytes(8, "little")
    with_erase = tmp_path / "erase.kdump"
    with_erase.write_bytes(bytes(data) + erase)
    again = tmp_path / "again.kdump"
    dump(DumpOptions(vmcore=with_erase, dumpfile=again, dump_level=DumpLevel(31),
                     codec=Codec.ZLIB))
    with MappedFile(again) as f:
        k = KdumpFile.open(f)
        assert k.eraseinfo_raw == erase
        assert k.sub_header is not None and k.sub_header.offset_eraseinfo + len(erase) == f.size
    # the rest of the file is the input's own bytes
    assert again.read_bytes()[:at] == out.read_bytes()[:at]
    assert again.read_bytes()[at + 16 : len(data)] == out.read_bytes()[at + 16 :]


def test_verify_against_a_split_set_source(tiny_vmcore: MakeVmcore, tmp_path: Path) -> None:
    """A dump refiltered from a split set (batch's path) verified against the set."""
    sets = {}
    for seed in (11, 12):
        _kernel, vmcore = tiny_vmcore("6.6", seed=seed)
        parts = tuple(tmp_path / f"m{seed}-part{i}" for i in range(3))
        dump(DumpOptions(vmcore=vmcore, dumpfile=None, split_files=parts,
                         dump_level=DumpLevel(1), codec=Codec.ZLIB, splitblock_bytes=64 * 4096))
        sets[seed] = parts
    parts = sets[11]
    out = tmp_path / "refiltered.kdump"
    dump(DumpOptions(vmcore=parts[0], split_parts=parts[1:], dumpfile=out,
                     dump_level=DumpLevel(31), codec=Codec.ZLIB))
    good = verify(out, source=parts[0], source_parts=parts[1:])
    assert good.ok and good.nr_checked == good.nr_dumpable > 0, good.problems
    # the set of another machine: pages differ
    wrong = verify(out, source=sets[12][0], source_parts=sets[12][1:])
    assert not wrong.ok and "differs from the source" in wrong.verdict()
    # a set with a file missing is no source
    missing = verify(out, source=parts[0], source_parts=(parts[2],))
    assert not missing.ok and missing.verdict().startswith("FAILED:")


def test_verify_report_json_follows_the_dump_rules(dumped: tuple[SyntheticKernel, Path, Path],
                                                   tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    _kernel, vmcore, out = dumped
    report = tmp_path / "verify.json"
    target = tmp_path / "precious"
    target.write_text("keep me")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    for args, code in (
        ([], 0),  # created
        ([], 1),  # exists, no -f
        (["-f"], 0),  # replaced
    ):
        with pytest.raises(SystemExit) as done:
            main(["verify", str(out), "--source", str(vmcore), "--report-json", str(report),
                  *args])
        assert done.value.code == code
    assert report.stat().st_mode & 0o777 == 0o600
    assert json.loads(report.read_text())["ok"] is True
    for bad in (link, vmcore):
        with pytest.raises(SystemExit) as refused:
            main(["verify", str(out), "--source", str(vmcore), "--report-json", str(bad), "-f"])
        assert refused.value.code == 1
    assert target.read_text() == "keep me"
    err = capsys.readouterr().err
    assert err.count("cdbdump: error: ") >= 3 and "Traceback" not in err
