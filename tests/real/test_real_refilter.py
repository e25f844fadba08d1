"""Refiltering and verify on real vmcores, against makedumpfile.

makedumpfile -l -d 1 writes a dump; cdbdump refilters it to -d 31 from the
file, from its flattened (-F) form read in place and from stdin, and from a
--split set; each result must be byte-identical to makedumpfile refiltering
the same file to -d 31 (bitmaps compared first, for a readable failure), and
to cdbdump's own -d 31 dump of the ELF vmcore. makedumpfile 1.7.2 is no
reference for kernels from 6.2 on (slab pages taken for anon ones, 6.6 folio
order, 6.9 hugetlb page type; see test_real_makedumpfile._kernel_612_quirk):
there the second equality alone is the proof.
verify passes on both tools' dumps and fails, with the right line, on a
corrupted page, a truncated file and a wrong source.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cdbdump.codecs import Codec
from cdbdump.fileio import MappedFile
from cdbdump.vmcore.kdumpfile import KdumpFile
from tests.real.conftest import cdbdump_cmd, cdbdump_env, get_vmcore, run_tool

pytestmark = pytest.mark.real

# two kernels keep the tier inside the CI budget (add debian11-5.10-1g by hand)
REFILTER_VMCORES = os.environ.get(
    "CDBDUMP_REFILTER_VMCORES", "debian12-6.1-1g,debian13-6.12-1g").split(",")
MAKEDUMPFILE_KNOWS = (6, 2)  # makedumpfile 1.7.2 classifies kernels before this right


class Inputs:
    def __init__(self, vm: Any, d: Path) -> None:
        self.vm = vm
        self.dir = d
        self.d1 = d / "d1.kdump"
        run_tool("makedumpfile", ["makedumpfile", "-l", "-d", "1", str(vm.norm), str(self.d1)],
                 self.d1).check()
        self.ref31 = d / "ref31.kdump"
        run_tool("makedumpfile", ["makedumpfile", "-l", "-d", "31", str(self.d1),
                                  str(self.ref31)], self.ref31).check()
        self.direct31 = d / "direct31.kdump"
        run_tool("cdbdump", [*cdbdump_cmd(), "-l", "-d", "31", str(vm.raw), str(self.direct31)],
                 self.direct31, env=cdbdump_env()).check()

    def check_refiltered(self, ours: Path) -> None:
        _same_dump(self.direct31, ours)
        if self.vm.kernel < MAKEDUMPFILE_KNOWS:
            _same_dump(self.ref31, ours)

    def cdbdump(self, *args: str, stdin: Path | None = None) -> subprocess.CompletedProcess[str]:
        with (stdin or Path(os.devnull)).open("rb") as f:
            return subprocess.run([*cdbdump_cmd(), *args], stdin=f, capture_output=True,
                                  text=True, env=cdbdump_env(), timeout=900, check=False)


@pytest.fixture(scope="module", params=REFILTER_VMCORES)
def inputs(request: pytest.FixtureRequest, real_tools: None,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Inputs]:
    d = tmp_path_factory.mktemp(f"refilter-{request.param}")
    yield Inputs(get_vmcore(request.param), d)
    shutil.rmtree(d, ignore_errors=True)


def _same_dump(ref: Path, ours: Path) -> None:
    with MappedFile(ref) as a, MappedFile(ours) as b:
        r, o = KdumpFile.open(a), KdumpFile.open(b)
        assert (o.max_mapnr, o.dump_level, o.codec) == (r.max_mapnr, 31, Codec.LZO)
        n = r.max_mapnr
        assert np.array_equal(o.bitmap1.get_bools(0, n), r.bitmap1.get_bools(0, n))
        dumpable = r.bitmap2.get_bools(0, n)
        assert np.array_equal(o.bitmap2.get_bools(0, n), dumpable), "dumpable sets differ"
        assert o.nr_zero_descs() == r.nr_zero_descs(), "zero page sets differ"
        assert o.header.timestamp_sec == r.header.timestamp_sec
        assert o.notes_raw == r.notes_raw
    assert ours.read_bytes() == ref.read_bytes()  # every page, every header byte


def test_refilter_file_equals_makedumpfile(inputs: Inputs) -> None:
    ours = inputs.dir / "ours31.kdump"
    p = inputs.cdbdump("-l", "-d", "31", "-f", str(inputs.d1), str(ours))
    assert p.returncode == 0, p.stderr
    inputs.check_refiltered(ours)


def test_refilter_flattened_equals_makedumpfile(inputs: Inputs) -> None:
    flat = inputs.dir / "d1.flat"
    with flat.open("wb") as out:
        subprocess.run(["makedumpfile", "-F", "-l", "-d", "1", str(inputs.vm.norm)],
                       stdout=out, stderr=subprocess.DEVNULL, timeout=900, check=True)
    for source, stdin in ((str(flat), None), ("-", flat)):
        ours = inputs.dir / "ours31.flat.kdump"
        p = inputs.cdbdump("-l", "-d", "31", "-f", source, str(ours), stdin=stdin)
        assert p.returncode == 0, p.stderr
        inputs.check_refiltered(ours)
    flat.unlink()


def test_refilter_split_set_equals_makedumpfile(inputs: Inputs) -> None:
    parts = [inputs.dir / f"split{i}" for i in range(3)]
    subprocess.run(["makedumpfile", "--split", "-l", "-d", "1", str(inputs.vm.norm),
                    *map(str, parts)], capture_output=True, timeout=900, check=True)
    ours = inputs.dir / "ours31.split.kdump"
    p = inputs.cdbdump("-l", "-d", "31", "-f", "--split-part", str(parts[1]),
                       "--split-part", str(parts[2]), str(parts[0]), str(ours))
    assert p.returncode == 0, p.stderr
    inputs.check_refiltered(ours)
    v = inputs.cdbdump("verify", *map(str, parts), "--source", str(inputs.vm.norm))
    assert v.returncode == 0, v.stdout
    for part in parts:
        part.unlink()


def test_verify_passes_and_fails_with_the_right_line(inputs: Inputs) -> None:
    vm = inputs.vm
    for dump in (inputs.ref31, inputs.d1):  # makedumpfile's dumps
        v = inputs.cdbdump("verify", str(dump), "--source", str(vm.norm))
        assert (v.returncode, v.stdout.startswith("cdbdump verify: OK:")) == (0, True), v.stdout
    ours = inputs.dir / "ours.verify.kdump"
    p = inputs.cdbdump("-l", "-d", "31", "-f", str(vm.raw), str(ours))
    assert p.returncode == 0, p.stderr
    report = inputs.dir / "verify.json"
    v = inputs.cdbdump("verify", str(ours), "--source", str(vm.raw), "--report-json", str(report))
    assert v.returncode == 0 and v.stdout.count("\n") == 1, v.stdout
    assert json.loads(report.read_text())["nr_checked"] > 0

    # a corrupted page: garble the stored bytes of one compressed page
    bad = inputs.dir / "corrupt.kdump"
    shutil.copyfile(ours, bad)
    with MappedFile(bad) as f:
        k = KdumpFile.open(f)
        pfns = next(k.iter_dumpable_pfns())
        descs = k.page_descs(pfns)
        i = int(np.flatnonzero(descs["flags"] == Codec.LZO.flag)[10])
        pfn, offset, size = int(pfns[i]), int(descs["offset"][i]), int(descs["size"][i])
    with bad.open("r+b") as f:
        f.seek(offset)
        f.write(bytes((b * 7 + 0x5A) & 0xFF for b in range(size)))
    v = inputs.cdbdump("verify", str(bad))
    assert v.returncode == 1
    assert v.stdout.startswith(f"cdbdump verify: FAILED: {bad}: pfn {pfn:#x}: "), v.stdout

    # a truncated file
    shutil.copyfile(ours, bad)
    with bad.open("r+b") as f:
        f.truncate(ours.stat().st_size * 2 // 3)
    v = inputs.cdbdump("verify", str(bad))
    assert v.returncode == 1, v.stdout
    assert v.stdout.startswith(f"cdbdump verify: FAILED: {bad}: truncated: "), v.stdout

    # a wrong source: another kernel's vmcore
    other = next(n for n in [*REFILTER_VMCORES, "debian11-5.10-1g"] if n != vm.name)
    v = inputs.cdbdump("verify", str(ours), "--source", str(get_vmcore(other).raw))
    assert v.returncode == 1 and "differs from the source" in v.stdout, v.stdout
