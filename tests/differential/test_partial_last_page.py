"""A PT_LOAD ending mid-page (x86's e820 RAM ending at 0x9fc00): present or not.

makedumpfile counts that partial last page in the 1st bitmap only when it does the
dump in one cycle (create_1st_bitmap_file rounds the end up); in cyclic mode
create_bitmap_from_memhole truncates the end. It goes cyclic whenever
min(4 MiB, max_mapnr * 2 / 8) bytes cannot hold both bitmaps: beyond 16 Mi frames
(64 GiB), and whenever max_mapnr is not a multiple of 4 (the integer division), as on
the real 1 GiB /proc/vmcore of the cache (max_mapnr 0x3ffd7). The 64 GiB dense bench
machine differed from makedumpfile by exactly that page (1,216 bytes: its page_desc
and its data). Both choices are checked byte for byte against makedumpfile 1.7.6, and
the cyclic one against the system's makedumpfile (1.7.2 on Debian 12) too, which also
drops the page in one-cycle mode from the 2nd bitmap (exclude_nodata_pages before
upstream commit f2c5f76): on the one-cycle machine 1.7.2's file is rebuilt from ours
by taking out that page (its 2nd-bitmap bit, page_desc and data), nothing else.
Any --cyclic-buffer keeps makedumpfile cyclic whatever the size (initial), so there
both versions drop the page on the one-cycle machine too, and so does cdbdump;
--work-dir comes first (bitmaps in a file, one cycle): the page is kept even on the
cyclic machine, with --split too (compared with 1.7.6 through --as-makedumpfile).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cdbdump.fileio import MappedFile
from cdbdump.formats.kdump import PAGE_DESC_DTYPE
from cdbdump.pipeline import keeps_partial_last_pages
from cdbdump.vmcore.kdumpfile import KdumpFile
from tests.builders import SyntheticKernel
from tests.oracles import run_makedumpfile

pytestmark = pytest.mark.oracle
MiB = 1 << 20
PARTIAL_PFN = 0x9F  # the page holding 0x9f000..0x9fc00
# low memory ending mid-page, then RAM up to one frame short of 32 MiB: max_mapnr 0x1fff
ODD_RAM = [(0x1000, 0x9FC00), (0x100000, 32 * MiB - 0x1000)]
TIMEOUT_S = 300


def _cdbdump(vmcore: Path, out: Path, codec: str, *extra: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cdbdump", codec, "-d", "31", "--message-level", "0",
         *extra, str(vmcore), str(out)],
        capture_output=True, text=True, timeout=TIMEOUT_S, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def _bits(dump: Path, pfn: int) -> tuple[bool, bool]:
    with MappedFile(dump) as f:
        kd = KdumpFile.open(f)
        return (bool(kd.bitmap1.get_bools(pfn, pfn + 1)[0]),
                bool(kd.bitmap2.get_bools(pfn, pfn + 1)[0]))


_BUILT: dict[str, tuple[SyntheticKernel, Path]] = {}


def _build(kind: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[SyntheticKernel, Path]:
    if kind not in _BUILT:
        kernel = SyntheticKernel("6.1", ram=ODD_RAM if kind == "cyclic" else None, seed=3)
        assert kernel.keeps_partial_last_pages == (kind == "one cycle")
        path = tmp_path_factory.mktemp("partial") / "vmcore.elf"
        kernel.write(path)
        _BUILT[kind] = kernel, path
    return _BUILT[kind]


@pytest.fixture(params=["cyclic", "one cycle"])
def machine(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> tuple[SyntheticKernel, Path]:
    return _build(request.param, tmp_path_factory)


def test_rule_is_makedumpfiles(machine: tuple[SyntheticKernel, Path]) -> None:
    kernel, _ = machine
    assert keeps_partial_last_pages(kernel.max_mapnr) == kernel.keeps_partial_last_pages
    # the 64 GiB bench machine: 17301464 frames, both bitmaps need more than 4 MiB
    assert not keeps_partial_last_pages((64 << 18) + (1 << 19) - 40)
    assert keeps_partial_last_pages(1 << 22)
    # any --cyclic-buffer: cyclic whatever its size (makedumpfile initial)
    assert not keeps_partial_last_pages(1 << 22, cyclic_buffer_given=True)


def test_same_as_makedumpfile_1_7_6(machine: tuple[SyntheticKernel, Path],
                                    makedumpfile_new: Path, tmp_path: Path) -> None:
    kernel, vmcore = machine
    ours, ref = tmp_path / "cdbdump.kdump", tmp_path / "makedumpfile.kdump"
    _cdbdump(vmcore, ours, "-c")
    proc = subprocess.run([str(makedumpfile_new), "-c", "-d", "31", str(vmcore), str(ref)],
                          capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    kept = kernel.keeps_partial_last_pages
    assert _bits(ref, PARTIAL_PFN) == (kept, kept)
    assert _bits(ours, PARTIAL_PFN) == (kept, kept)
    assert ours.read_bytes() == ref.read_bytes()


def test_cyclic_same_as_system_makedumpfile(tmp_path_factory: pytest.TempPathFactory,
                                            tmp_path: Path) -> None:
    _, vmcore = _build("cyclic", tmp_path_factory)
    ours, ref = tmp_path / "cdbdump.kdump", tmp_path / "makedumpfile.kdump"
    _cdbdump(vmcore, ours, "-l")
    proc = run_makedumpfile(vmcore, ref, codec_option="-l")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _bits(ref, PARTIAL_PFN) == (False, False)
    assert ours.read_bytes() == ref.read_bytes()


def test_cyclic_buffer_drops_the_page_as_makedumpfile(
        tmp_path_factory: pytest.TempPathFactory, makedumpfile_new: Path,
        tmp_path: Path) -> None:
    _, vmcore = _build("one cycle", tmp_path_factory)
    for codec, binary in (("-l", None), ("-c", makedumpfile_new)):
        ours, ref = tmp_path / f"cdbdump{codec}.kdump", tmp_path / f"makedumpfile{codec}.kdump"
        _cdbdump(vmcore, ours, codec, "--cyclic-buffer", "64")
        if binary is None:  # the system's makedumpfile (1.7.2 on Debian 12)
            proc = run_makedumpfile(vmcore, ref, codec_option=codec,
                                    extra=["--cyclic-buffer", "64"])
        else:
            proc = subprocess.run([str(binary), codec, "-d", "31", "--cyclic-buffer", "64",
                                   str(vmcore), str(ref)],
                                  capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert _bits(ref, PARTIAL_PFN) == (False, False)
        assert ours.read_bytes() == ref.read_bytes()


def _without_page(dump: Path, pfn: int) -> bytes:
    """``dump`` rewritten as if ``pfn`` had been excluded from the 2nd bitmap: its bit
    cleared, its page_desc removed (every offset moves up by one page_desc, those past
    its data by its data too), its data cut out."""
    data = dump.read_bytes()
    with MappedFile(dump) as f:
        kd = KdumpFile.open(f)
        assert kd.is_dumpable(pfn)
        descs = np.frombuffer(data, dtype=PAGE_DESC_DTYPE, count=kd.nr_dumpable,
                              offset=kd.offset_page_desc).copy()
        rank = int(np.count_nonzero(kd.bitmap2.get_bools(0, pfn)))
        off_bitmap2, off_descs, off_data = kd.offset_bitmap2, kd.offset_page_desc, kd.offset_data
    start, size = int(descs["offset"][rank]), int(descs["size"][rank])
    assert np.count_nonzero(descs["offset"] == start) == 1  # not the shared zero page
    descs = np.delete(descs, rank)
    descs["offset"] -= PAGE_DESC_DTYPE.itemsize
    descs["offset"][descs["offset"] > start] -= size
    bitmap2 = bytearray(data[off_bitmap2:off_descs])
    bitmap2[pfn // 8] &= ~(1 << pfn % 8) & 0xFF
    return (data[:off_bitmap2] + bytes(bitmap2) + descs.tobytes()
            + data[off_data:start] + data[start + size:])


def test_one_cycle_system_makedumpfile_differs_by_the_page_only(
        tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    """1.7.2 (exclude_nodata_pages before f2c5f76) keeps the page in the 1st bitmap and
    drops it from the 2nd: its file is ours without that page, byte for byte."""
    _, vmcore = _build("one cycle", tmp_path_factory)
    ours, ref = tmp_path / "cdbdump.kdump", tmp_path / "makedumpfile.kdump"
    _cdbdump(vmcore, ours, "-l")
    proc = run_makedumpfile(vmcore, ref, codec_option="-l")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    version = subprocess.run([proc.args[0], "-v"], capture_output=True, text=True,
                             check=False).stdout
    if "version 1.7.2 " not in version:
        pytest.skip(f"the system's makedumpfile is not 1.7.2: {version.strip()}")
    assert _bits(ours, PARTIAL_PFN) == (True, True)
    assert _bits(ref, PARTIAL_PFN) == (True, False)
    assert ours.read_bytes() != ref.read_bytes()
    assert _without_page(ours, PARTIAL_PFN) == ref.read_bytes()


@pytest.mark.parametrize(("kind", "extra"), [
    ("cyclic", ()), ("one cycle", ("--cyclic-buffer", "64")), ("cyclic", ("--split",))],
    ids=["cyclic", "cyclic-buffer", "split"])
def test_work_dir_keeps_the_page_as_makedumpfile(
        kind: str, extra: tuple[str, ...], tmp_path_factory: pytest.TempPathFactory,
        makedumpfile_new: Path, tmp_path: Path) -> None:
    """--work-dir: bitmaps in a file, one cycle whatever else is asked (initial), so
    the page is kept even where makedumpfile is otherwise cyclic."""
    _, vmcore = _build(kind, tmp_path_factory)
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    outputs: dict[str, list[Path]] = {}
    for who in ("cdbdump", "makedumpfile"):
        names = [tmp_path / f"{who}{i}.kdump" for i in range(2 if extra == ("--split",) else 1)]
        prefix = ([sys.executable, "-m", "cdbdump", "--as-makedumpfile"] if who == "cdbdump"
                  else [str(makedumpfile_new)])
        proc = subprocess.run([*prefix, "-c", "-d", "31", "--work-dir", str(work_dir), *extra,
                               str(vmcore), *map(str, names)],
                              capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        outputs[who] = names
    assert _bits(outputs["makedumpfile"][0], PARTIAL_PFN) == (True, True)
    for ours, ref in zip(outputs["cdbdump"], outputs["makedumpfile"], strict=True):
        assert ours.read_bytes() == ref.read_bytes()
