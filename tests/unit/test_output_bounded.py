"""A lying header cannot make the output bigger than the input can supply.

Each file byte backs one physical address (ElfMemory: the first PT_LOAD in
program-header order keeps bytes a later one reuses), and bytes p_filesz
claims past the end of the file are lost, not zeros: such pages are excluded,
counted, listed, and the dump says it is incomplete (exit 1), as for a page the
disk cannot read. A corrupt 37 MB input once wrote a 17 GB dump.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from cdbdump.fileio import MappedFile
from cdbdump.vmcore.kdumpfile import KdumpFile
from tests.builders import SyntheticKernel
from tests.oracles import make_notes

ROOT = Path(__file__).resolve().parents[2]
PAGE = 4096
PHDR = struct.Struct("<IIQQQQQQ")
MIB = 1 << 20
ALIASES = 64  # PT_LOADs that all claim the same MiB of file data
# headers, notes and two bitmaps of max_mapnr bits each, beyond the page data
OVERHEAD = 256 << 10


def _aliased_vmcore(path: Path) -> int:
    """One MiB of incompressible data, claimed by ALIASES PT_LOADs at different paddrs."""
    notes, _ = make_notes(None)
    nr = 1 + ALIASES
    data_at = -(-(64 + PHDR.size * nr + len(notes)) // PAGE) * PAGE
    phdrs = [PHDR.pack(4, 0, 64 + PHDR.size * nr, 0, 0, len(notes), len(notes), 0)]
    phdrs += [PHDR.pack(1, 7, data_at, 0, (i + 1) * MIB, MIB, MIB, 0) for i in range(ALIASES)]
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    ehdr = struct.pack("<16sHHIQQQIHHHHHH", ident, 4, 62, 1, 0, 64, 0, 0, 64, 56, nr, 0, 0, 0)
    head = ehdr + b"".join(phdrs) + notes
    path.write_bytes(head.ljust(data_at, b"\0") + os.urandom(MIB))
    return path.stat().st_size


def _lying_vmcore(tmp_path: Path, lie: str) -> tuple[Path, int]:
    if lie == "aliased file data":
        path = tmp_path / "aliased"
        return path, _aliased_vmcore(path)
    kernel = SyntheticKernel("6.1", seed=4, ram_size=32 << 20)
    path = tmp_path / "vmcore"
    kernel.write(path)
    raw = path.read_bytes()[:0x4000]
    e_phoff, = struct.unpack_from("<Q", raw, 0x20)
    e_phnum, = struct.unpack_from("<H", raw, 0x38)
    loads = [e_phoff + PHDR.size * i for i in range(e_phnum)
             if PHDR.unpack_from(raw, e_phoff + PHDR.size * i)[0] == 1]
    with path.open("r+b") as f:
        for at in loads[1:]:  # every RAM segment claims a TiB, in memory or in the file
            f.seek(at + (40 if lie == "huge p_memsz" else 32))
            f.write(struct.pack("<QQ", 1 << 40, 1 << 40) if lie != "huge p_memsz"
                    else struct.pack("<Q", 1 << 40))
    return path, path.stat().st_size


def _run(*args: str | Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "cdbdump", *map(str, args)], cwd=ROOT,
                          capture_output=True, timeout=300, check=False)


@pytest.mark.parametrize("lie", ["aliased file data", "huge p_memsz", "huge p_filesz"])
@pytest.mark.parametrize("mode", ["kdump", "elf", "flattened", "split"])
def test_output_is_bounded_by_the_input(tmp_path: Path, lie: str, mode: str) -> None:
    vmcore, size = _lying_vmcore(tmp_path, lie)
    out = tmp_path / "out"
    args: list[str | Path] = ["-d", "0", "--report-json", tmp_path / "r.json"]
    outputs = [out]
    if mode == "elf":
        args += ["-E", vmcore, out]
    elif mode == "flattened":
        args += ["-F", vmcore]
    elif mode == "split":
        outputs = [tmp_path / "a", tmp_path / "b"]
        args += ["--split", vmcore, *outputs]
    else:
        args += [vmcore, out]
    with (out if mode == "flattened" else Path(os.devnull)).open("wb") as stdout:
        proc = subprocess.run([sys.executable, "-m", "cdbdump", *map(str, args)], cwd=ROOT,
                              stdout=stdout, stderr=subprocess.PIPE, timeout=300, check=False)
    stderr = proc.stderr.decode(errors="replace")
    assert "Traceback" not in stderr
    assert proc.returncode in (0, 1), stderr
    written = sum(p.stat().st_size for p in outputs)
    assert written <= size + OVERHEAD, f"{written} bytes out of a {size}-byte input: {stderr}"
    if lie == "aliased file data":
        # 63 MiB were claimed twice over: lost, counted, and the dump says incomplete
        assert proc.returncode == 1, stderr
        errors = [ln for ln in stderr.splitlines() if ln.startswith("cdbdump: error:")]
        assert len(errors) == 1 and "earlier PT_LOAD" in errors[0], stderr
        report = json.loads((tmp_path / "r.json").read_text())
        assert report["pages_unreadable"] == (ALIASES - 1) * MIB // PAGE
        if mode in ("kdump", "split"):
            for part in outputs:
                with MappedFile(part) as f:
                    assert KdumpFile.open(f).is_incomplete


def test_pages_past_the_end_of_the_file_are_lost_not_zero(tmp_path: Path) -> None:
    kernel = SyntheticKernel("6.1", seed=4, ram_size=32 << 20)
    vmcore = tmp_path / "vmcore"
    kernel.write(vmcore)
    raw = vmcore.read_bytes()[:0x4000]
    e_phoff, = struct.unpack_from("<Q", raw, 0x20)
    e_phnum, = struct.unpack_from("<H", raw, 0x38)
    last = max((PHDR.unpack_from(raw, e_phoff + PHDR.size * i) for i in range(e_phnum)),
               key=lambda ph: ph[2] if ph[0] == 1 else -1)
    p_offset, p_paddr = last[2], last[4]
    cut_pages = 5
    with vmcore.open("r+b") as f:  # the last segment's last five pages are not in the file
        f.truncate(p_offset + last[5] - cut_pages * PAGE)
    out = tmp_path / "out.kdump"
    proc = _run("-d", "0", "--report-json", tmp_path / "r.json", vmcore, out)
    stderr = proc.stderr.decode()
    assert proc.returncode == 1, stderr
    assert "past the end of the file" in stderr
    report = json.loads((tmp_path / "r.json").read_text())
    first_lost = (p_paddr + last[5]) // PAGE - cut_pages
    assert report["pages_unreadable"] == cut_pages
    assert [p["pfn"] for p in report["unreadable_pages"]] == list(
        range(first_lost, first_lost + cut_pages))
    with MappedFile(out) as f:
        kd = KdumpFile.open(f)
        assert kd.is_incomplete
        kept = kd.bitmap2.get_bools(0, kd.max_mapnr)
    assert not kept[first_lost : first_lost + cut_pages].any()
    assert kept[first_lost - 1]
