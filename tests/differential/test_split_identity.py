"""--split files byte for byte equal to makedumpfile's, and what they reassemble into.

makedumpfile cuts the pfn space at whole split blocks (1 GiB unless --splitblock-size)
once a file holds num_dumpable / N dumpable pages (calculate_end_pfn_by_splitblock),
and with --split it always works cyclic (calculate_cyclic_buffer_size shares the
bitmap buffer between the files), so a PT_LOAD's partial last page is not present in
the split files. On a machine where the direct dump is done in one cycle (it keeps
that page) the split set therefore reassembles into makedumpfile's cyclic direct dump
(forced with --cyclic-buffer), not into the one-cycle one; elsewhere into the direct
dump. Both machines; N = 2 with the 1 GiB default block, N = 3 with a small one (so
every file gets a range of its own); LZO against the system's makedumpfile (1.7.2 on
Debian 12), zstd against 1.7.6.
"""

from __future__ import annotations

import itertools
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tests.builders import SyntheticKernel
from tests.oracles import MAKEDUMPFILE, makedumpfile_codecs, oracle_unavailable

pytestmark = pytest.mark.oracle
MiB = 1 << 20
PAGE = 4096
# low memory ending mid-page, RAM up to one frame short of 32 MiB: max_mapnr not a
# multiple of 4, so even the direct dump is cyclic
ODD_RAM = [(0x1000, 0x9FC00), (0x100000, 32 * MiB - 0x1000)]
SPLITBLOCK_KIB = "256"  # 64 pages: about 128 blocks on these machines
TIMEOUT_S = 300
# kdump_sub_header: split, then start_pfn_64 / end_pfn_64 (header_version >= 6)
SPLIT_AT, START_PFN_64_AT = 12, 80


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert proc.returncode == 0, f"{cmd[:3]}: {proc.stdout[-1000:]}{proc.stderr[-2000:]}"


def _cdbdump(*args: str | Path, persona: bool = False) -> None:
    """cdbdump's command line, or makedumpfile's (``--as-makedumpfile``)."""
    front = ["--as-makedumpfile"] if persona else []
    _run([sys.executable, "-m", "cdbdump", *front, "--message-level", "0", *map(str, args)])


def _sub_range(part: Path) -> tuple[int, int, int]:
    with part.open("rb") as f:
        f.seek(PAGE)
        sub = f.read(PAGE)
    split, = struct.unpack_from("<i", sub, SPLIT_AT)
    start, end = struct.unpack_from("<QQ", sub, START_PFN_64_AT)
    return split, start, end


_BUILT: dict[str, tuple[SyntheticKernel, Path]] = {}


@pytest.fixture(params=["cyclic", "one cycle"])
def machine(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> tuple[SyntheticKernel, Path]:
    kind = request.param
    if kind not in _BUILT:
        kernel = SyntheticKernel("6.1", ram=ODD_RAM if kind == "cyclic" else None, seed=5)
        assert kernel.keeps_partial_last_pages == (kind == "one cycle")
        path = tmp_path_factory.mktemp("splitid") / "vmcore.elf"
        kernel.write(path)
        _BUILT[kind] = kernel, path
    return _BUILT[kind]


@pytest.fixture(params=["lzo", "zstd"])
def oracle(request: pytest.FixtureRequest, makedumpfile_new: Path) -> tuple[str, str]:
    if request.param == "lzo":
        if "-l" not in makedumpfile_codecs():
            oracle_unavailable("the system's makedumpfile lacks -l")
        return "-l", MAKEDUMPFILE
    return "-z", str(makedumpfile_new)


# the default 1 GiB block cuts only the 4 GiB machine; the small one cuts both
@pytest.mark.parametrize(("nr_files", "splitblock"), [(2, None), (3, SPLITBLOCK_KIB)])
def test_split_files_are_makedumpfiles(machine: tuple[SyntheticKernel, Path],
                                       oracle: tuple[str, str], nr_files: int,
                                       splitblock: str | None, tmp_path: Path) -> None:
    kernel, vmcore = machine
    codec, mdf = oracle
    block = ["--splitblock-size", splitblock] if splitblock else []
    ours = [tmp_path / f"ours.{i}" for i in range(nr_files)]
    theirs = [tmp_path / f"theirs.{i}" for i in range(nr_files)]
    # the small block through makedumpfile's command line (its --splitblock-size)
    _cdbdump("--split", *block, codec, "-d", "31", vmcore, *ours, persona=bool(splitblock))
    _run([mdf, "--split", *block, codec, "-d", "31", str(vmcore), *map(str, theirs)])
    ranges = [_sub_range(p) for p in ours]
    assert [r[0] for r in ranges] == [1] * nr_files
    assert ranges[0][1] == 0 and ranges[-1][2] == kernel.max_mapnr
    block_pages = int(splitblock or 1 << 20) * 1024 // PAGE
    # contiguous, each cut at a whole split block (or at max_mapnr)
    assert all(a[2] == b[1] for a, b in itertools.pairwise(ranges))
    assert all(end % block_pages == 0 or end == kernel.max_mapnr for _, _, end in ranges)
    if splitblock:  # small blocks: every file holds a range of its own
        assert all(start < end for _, start, end in ranges), ranges
    for a, b in zip(ours, theirs, strict=True):
        assert a.read_bytes() == b.read_bytes(), f"{a.name} differs from makedumpfile's"

    # what the set reassembles into: the direct dump, or makedumpfile's cyclic one
    joined, direct = tmp_path / "joined", tmp_path / "direct"
    _cdbdump("--reassemble", *ours, joined)
    if kernel.keeps_partial_last_pages:
        _run([mdf, "--cyclic-buffer", "1", codec, "-d", "31", str(vmcore), str(direct)])
        one_cycle = tmp_path / "one-cycle"
        _cdbdump(codec, "-d", "31", vmcore, one_cycle)
        assert one_cycle.read_bytes() != joined.read_bytes()
    else:
        _cdbdump(codec, "-d", "31", vmcore, direct)
    assert joined.read_bytes() == direct.read_bytes()
