"""cdbdump -z against makedumpfile 1.7.6 -z on synthetic machines (proc_vmcore layout).

makedumpfile is Debian 13's 1:1.7.6-1 (the ``makedumpfile_new`` fixture,
fixtures/makedumpfile_trixie.py). It compresses each page with
``ZSTD_compressCCtx(level 1)`` from the host's libzstd (Debian 12: 1.5.4). cdbdump
does the same call through cdbdump._pagebatch (the host's libzstd) and, built
without it, python-zstandard's bundled libzstd (1.5.7 with zstandard 0.25): both
paths run here. Level-1 frames of a 4 KiB page came out identical across those
versions: the whole files are asserted byte-identical, and so were the non-zero
pages of the real Debian 6.1 vmcore (tests/real/test_real_zstd_pages.py). Should a
future libzstd change its level-1 output, the structural checks below (bitmaps,
page_desc flags, every page's content) still pass and only the final ``cmp``
fails, with the libzstd versions in its message.

Refilter: makedumpfile reads cdbdump's zstd -d 1 dump as input and refilters it
to -z -d 31; the result must equal makedumpfile's own -z -d 31 dump of the ELF.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zstandard

from cdbdump.codecs import Codec
from cdbdump.fileio import MappedFile
from cdbdump.formats.kdump import DUMP_DH_COMPRESSED_ZSTD
from cdbdump.vmcore.kdumpfile import KdumpFile
from cdbdump.writers.compress import native_codecs
from tests.builders import SyntheticKernel
from tests.ci_gate import IN_CI

pytestmark = pytest.mark.oracle
MakeVmcore = Callable[..., tuple[SyntheticKernel, Path]]
MACHINES = [("6.1", 3), ("6.1", 8), ("5.10", 5)]
TIMEOUT_S = 300


# cdbdump as a build without the C extension runs it: python-zstandard compresses
_WITHOUT_PAGEBATCH = (
    "import sys; sys.modules['cdbdump._pagebatch'] = None\n"
    "from cdbdump.cli import main\n"
    "main()\n"
)


def _cdbdump(*args: str | Path, native: bool = True) -> None:
    if native and Codec.ZSTD not in native_codecs():
        if IN_CI:
            pytest.fail("cdbdump._pagebatch was built without zstd (libzstd-dev?)")
        pytest.skip("cdbdump._pagebatch was built without zstd")
    how = ["-m", "cdbdump"] if native else ["-c", _WITHOUT_PAGEBATCH]
    proc = subprocess.run(
        [sys.executable, *how, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 0, f"cdbdump {args}: {proc.stderr[-2000:]}"


def _makedumpfile(binary: Path, *args: str | Path) -> None:
    proc = subprocess.run(
        [str(binary), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 0, f"makedumpfile {args}: {(proc.stdout + proc.stderr)[-2000:]}"


def _libzstd_versions() -> str:
    name = ctypes.util.find_library("zstd")
    system = "?"
    if name:
        lib = ctypes.CDLL(name)
        lib.ZSTD_versionString.restype = ctypes.c_char_p
        system = lib.ZSTD_versionString().decode()
    bundled = ".".join(map(str, zstandard.ZSTD_VERSION))
    return (f"host libzstd {system} (makedumpfile, cdbdump._pagebatch), "
            f"python-zstandard's libzstd {bundled} (cdbdump without it)")


def _first_difference(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b))
    diff = np.flatnonzero(np.frombuffer(a[:n], np.uint8) != np.frombuffer(b[:n], np.uint8))
    return int(diff[0]) if diff.size else n


def _assert_same_dump(ours: Path, ref: Path, kernel: SyntheticKernel) -> None:
    """Structure first (for a useful message), then byte identity."""
    with MappedFile(ours) as fo, MappedFile(ref) as fr:
        a, b = KdumpFile.open(fo), KdumpFile.open(fr)
        assert a.header.status == b.header.status == DUMP_DH_COMPRESSED_ZSTD
        assert a.max_mapnr == b.max_mapnr == kernel.max_mapnr
        assert np.array_equal(a.bitmap1.get_bools(0, a.max_mapnr), kernel.first_bitmap())
        dumpable = a.bitmap2.get_bools(0, a.max_mapnr)
        assert np.array_equal(dumpable, kernel.expected_dumpable(31))
        assert np.array_equal(dumpable, b.bitmap2.get_bools(0, b.max_mapnr))
        pfns = np.flatnonzero(dumpable).astype(np.int64)
        da, db = a.page_descs(pfns), b.page_descs(pfns)
        assert np.array_equal(da["flags"], db["flags"]), "raw/zstd choice differs per page"
        assert (da["flags"] == DUMP_DH_COMPRESSED_ZSTD).any()
        for pfn in pfns.tolist():
            page = a.read_page(pfn)
            assert page == b.read_page(pfn) == kernel.page_bytes(pfn), f"pfn {pfn:#x}"
        sizes_equal = np.array_equal(da["size"], db["size"])
    raw_ours, raw_ref = ours.read_bytes(), ref.read_bytes()
    if raw_ours != raw_ref:
        at = _first_difference(raw_ours, raw_ref)
        pytest.fail(
            f"{ours.name} and {ref.name} differ first at {at:#x} (sizes "
            f"{len(raw_ours)}, {len(raw_ref)}; page_desc sizes equal: {sizes_equal}); "
            f"{_libzstd_versions()}"
        )


@pytest.mark.parametrize("native", [True, False], ids=["native", "python-zstandard"])
@pytest.mark.parametrize(("dialect", "seed"), MACHINES)
def test_zstd_dump_is_makedumpfiles(
    dialect: str, seed: int, native: bool, tiny_vmcore: MakeVmcore, makedumpfile_new: Path,
    tmp_path: Path
) -> None:
    kernel, vmcore = tiny_vmcore(dialect, seed=seed, layout="proc_vmcore")
    ours, ref = tmp_path / "cdbdump.kdump", tmp_path / "makedumpfile.kdump"
    _cdbdump("-z", "-d", "31", "--message-level", "0", vmcore, ours, native=native)
    _makedumpfile(makedumpfile_new, "-z", "-d", "31", vmcore, ref)
    _assert_same_dump(ours, ref, kernel)


@pytest.mark.parametrize(("dialect", "seed"), MACHINES[::2])
def test_makedumpfile_refilters_our_zstd_dump(
    dialect: str, seed: int, tiny_vmcore: MakeVmcore, makedumpfile_new: Path, tmp_path: Path
) -> None:
    kernel, vmcore = tiny_vmcore(dialect, seed=seed, layout="proc_vmcore")
    ours_d1 = tmp_path / "cdbdump-d1.kdump"
    refiltered, direct = tmp_path / "refiltered.kdump", tmp_path / "direct.kdump"
    _cdbdump("-z", "-d", "1", "--message-level", "0", vmcore, ours_d1)
    with MappedFile(ours_d1) as f:  # the input really is a zstd dump with user pages in it
        d1 = KdumpFile.open(f)
        assert d1.header.status == DUMP_DH_COMPRESSED_ZSTD
        assert d1.nr_dumpable == int(kernel.expected_dumpable(1).sum())
        assert d1.nr_dumpable > int(kernel.expected_dumpable(31).sum())
    _makedumpfile(makedumpfile_new, "-z", "-d", "31", ours_d1, refiltered)
    _makedumpfile(makedumpfile_new, "-z", "-d", "31", vmcore, direct)
    _assert_same_dump(refiltered, direct, kernel)
