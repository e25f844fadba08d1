"""cdbdump's default codec (zstd) and snappy on real kernel vmcores, read back by the
independent readers: libkdumpfile, drgn and crash, plus byte identity with
makedumpfile 1.7.6 (Debian 13's, which has zstd) where that makedumpfile is right.

Debian 12's makedumpfile 1.7.2 can make neither zstd nor snappy dumps, so
test_real_makedumpfile.py covers lzo; this module covers what cdbdump writes by
default.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.oracles import crash_header, drgn_check, libkdumpfile_check

pytestmark = [pytest.mark.real, pytest.mark.oracle]

REPO = Path(__file__).resolve().parents[2]


def _cdbdump(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "cdbdump", *args], capture_output=True,
                          text=True, check=False, cwd=REPO)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("codec", ["-z", "-p"])
def test_readers_see_every_page_of_our_dump(vmcore, tmp_path: Path, codec: str) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "ours.kdump"
    _cdbdump(codec, "-d", "31", str(vmcore.raw), str(out))
    lib = libkdumpfile_check(out, vmcore.raw)
    assert lib.ok, lib.summary()
    assert lib.nr_dumpable > 1000
    assert lib.vmcoreinfo_raw is not None and b"OSRELEASE=" in lib.vmcoreinfo_raw
    # drgn probes every pfn of the 1 GiB guests (its own bundled libkdumpfile)
    dr = drgn_check(out, vmcore.raw)
    assert dr.ok, dr.summary()
    assert dr.dumpable_pfns.tolist() == lib.dumpable_pfns.tolist()
    header = crash_header(out)
    assert header["total_valid_pages"].split()[0] in (
        str(lib.nr_dumpable), hex(lib.nr_dumpable)
    )
    flag = {"-z": "DUMP_DH_COMPRESSED_ZSTD", "-p": "DUMP_DH_COMPRESSED_SNAPPY"}[codec]
    assert flag in header["status"]


# 1.7.6 is wrong on 6.12+ (no free pages excluded, makedumpfile.md §8), and drops the page
# where an e820 PT_LOAD ends mid-page on /proc/vmcore (test_real_makedumpfile.py checks
# that case page by page): compare bytes on the QEMU dumps of the kernels it handles.
QUIRK_FREE = ["debian12-6.1-1g", "debian11-5.10-1g"]
LEVELS = [0, 1, 2, 4, 8, 16, 31]
# Every level on 6.1, the two extremes on 5.10 (lzo is compared at every level on both
# in test_real_makedumpfile.py): each case costs two 1 GiB runs.
ZSTD_CASES = [("debian12-6.1-1g", n) for n in LEVELS] + [("debian11-5.10-1g", n)
                                                          for n in (1, 31)]


def _same_file(makedumpfile: str, codec: str, level: int, vmcore, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Both tools at CODEC -d LEVEL: the whole files are equal (cmp)."""
    ours, ref = tmp_path / "ours.kdump", tmp_path / "ref.kdump"
    _cdbdump(codec, "-d", str(level), str(vmcore.raw), str(ours))
    proc = subprocess.run([makedumpfile, codec, "-d", str(level), "--message-level", "4",
                           str(vmcore.norm), str(ref)], capture_output=True, text=True,
                          check=False)  # message level 4: error messages only
    assert proc.returncode == 0, proc.stdout + proc.stderr
    same = subprocess.run(["cmp", str(ref), str(ours)], capture_output=True, text=True,
                          check=False)
    assert same.returncode == 0, f"{codec} -d {level}: {same.stdout}{same.stderr}"


@pytest.mark.parametrize(("vmcore", "level"), ZSTD_CASES, indirect=["vmcore"],
                         ids=[f"{v}-d{n}" for v, n in ZSTD_CASES])
def test_zstd_byte_identical_to_makedumpfile_176(vmcore, makedumpfile_new: Path,  # type: ignore[no-untyped-def]
                                                 tmp_path: Path, level: int) -> None:
    _same_file(str(makedumpfile_new), "-z", level, vmcore, tmp_path)


# zlib: compress2(Z_BEST_SPEED) of the host's zlib on both sides (Debian 12's 1.2.13).
@pytest.mark.parametrize("level", [1, 31], ids=["d1", "d31"])
@pytest.mark.parametrize("vmcore", QUIRK_FREE[:1], indirect=True)
def test_zlib_byte_identical_to_makedumpfile_172(vmcore, tmp_path: Path, level: int) -> None:  # type: ignore[no-untyped-def]
    _same_file("makedumpfile", "-c", level, vmcore, tmp_path)
