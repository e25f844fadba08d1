"""-q on a real kernel: the crash dump bitmap a patched Linux 6.1 filled at panic.

The vmcore is a real /proc/vmcore (fixtures/make-real-bitmap-vmcore.sh): Debian's
linux-source-6.1 with kernel/crash_dump_bitmap/ applied, booted under QEMU with
crashkernel=, the usual real-fixture workload, sysrq-c; the bitmap pass ran in
__crash_kexec() at dump level 31, then the capture kernel saved /proc/vmcore.

The pass runs after machine_crash_shutdown() has stopped the other CPUs, so it
sees the very struct pages the vmcore holds, and it decides with makedumpfile's
classes in makedumpfile's order. So -q -d 31 (the kernel's bitmap) and -d 31
(cdbdump's mem_map scan) must keep exactly the same pages, and the struct's
counters must equal the scan's. The classes where the two could differ in
principle (kernel/crash_dump_bitmap/README.md, "Where -q and the scan may
differ") are 0 on this vmcore: broken and offline pages by the pass's console
line, the others through equal sets and counters; any difference fails with the
struct pages of the frames concerned.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from cdbdump.fileio import MappedFile  # noqa: E402
from cdbdump.formats.crash_dump_bitmap import (  # noqa: E402
    CRASH_DUMP_BITMAP_INFO,
    CURRENT_BITMAP_INFO_VERSION,
)
from cdbdump.pipeline import open_input  # noqa: E402
from fixtures import real_bitmap_vmcore  # noqa: E402
from tests.ci_gate import IN_CI  # noqa: E402

pytestmark = pytest.mark.real

COUNTERS = {  # crash_dump_bitmap_info field -> cdbdump report counter
    "cache_pages": "cache",
    "cache_private_pages": "cache_private",
    "user_pages": "user",
    "free_pages": "free",
    "hwpoison_pages": "hwpoison",
}

TOOL_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def vmcore(real_tools: None) -> Path:
    try:
        return real_bitmap_vmcore.ensure()
    except real_bitmap_vmcore.BitmapVmcoreUnavailable as e:
        if IN_CI:  # CI must run this tier (as conftest.unavailable)
            pytest.fail(f"crash-dump-bitmap vmcore unavailable under CI: {e}", pytrace=False)
        pytest.skip(f"cannot build the crash-dump-bitmap vmcore: {e}")
    except real_bitmap_vmcore.BitmapVmcoreBuildError as e:
        pytest.fail(str(e), pytrace=False)


def _cdbdump() -> list[str]:  # as tests/real/conftest.py cdbdump_cmd / cdbdump_env
    return shlex.split(os.environ.get("CDBDUMP_CMD", "")) or [sys.executable, "-m", "cdbdump"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


class Runs:
    def __init__(self, vmcore: Path, outdir: Path) -> None:
        self.vmcore, self.outdir = vmcore, outdir
        self.done: dict[tuple[bool, int], tuple[Path, dict[str, Any]]] = {}

    def get(self, q: bool, level: int) -> tuple[Path, dict[str, Any]]:
        """cdbdump [-q] -d LEVEL -l on the vmcore: (dump, JSON report), cached."""
        if (q, level) not in self.done:
            tag = f"{'q' if q else 'scan'}{level}"
            out, rep = self.outdir / f"{tag}.kdump", self.outdir / f"{tag}.json"
            cmd = [*_cdbdump(), *(["-q"] if q else []), "-d", str(level), "-l", "-f",
                   "--report-json", str(rep), str(self.vmcore), str(out)]
            p = subprocess.run(cmd, capture_output=True, text=True, env=_env(), check=False,
                               stdin=subprocess.DEVNULL, timeout=TOOL_TIMEOUT_S)
            assert p.returncode == 0, f"{shlex.join(cmd)}: rc {p.returncode}\n{p.stderr}"
            self.done[q, level] = out, json.loads(rep.read_text())
        return self.done[q, level]


@pytest.fixture(scope="module")
def runs(vmcore: Path, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    return Runs(vmcore, tmp_path_factory.mktemp("kernel-bitmap"))


def test_struct_is_our_format(vmcore: Path) -> None:
    """The kernel exports the struct our format declares: same size, version 1."""
    info = real_bitmap_vmcore.vmcoreinfo(vmcore)
    assert "SYMBOL(crash_dump_bitmap_info)" in info
    assert int(info["SIZE(crash_dump_bitmap_info)"]) == CRASH_DUMP_BITMAP_INFO.size


def test_proc_interface(vmcore: Path) -> None:
    """dump_level was written and read back, page_status ran a pass at runtime."""
    console = real_bitmap_vmcore.console(vmcore)
    m = re.search(r"CDB: bitmap dump_level written 7, read (\d+)", console)
    assert m and int(m.group(1)) == 7, "dump_level write/read-back missing or wrong"
    status = real_bitmap_vmcore.page_status(vmcore)
    assert status["version"] == str(CURRENT_BITMAP_INFO_VERSION)
    assert status["dump_level"] == "31"
    assert int(status["pfns"]) > 0 and int(status["free_pages"]) > 0
    assert int(status["broken_pages"]) == 0


def test_q_takes_the_bitmap_path(runs: Runs) -> None:
    _, q = runs.get(True, 31)
    _, scan = runs.get(False, 31)
    assert q["path_taken"] == "bitmap", q["fallback_reason"]
    assert q["fallback_reason"] is None
    assert q["kernel_bitmap"]["version"] == CURRENT_BITMAP_INFO_VERSION
    assert scan["path_taken"] == "legacy"


def test_panic_pass_wrote_the_struct(vmcore: Path, runs: Runs) -> None:
    """The struct holds the panic pass's counters (not page_status's), for every pfn."""
    _, q = runs.get(True, 31)
    p = real_bitmap_vmcore.panic_pass(vmcore)
    assert p["level"] == 31 and p["ns"] > 0 and p["broken"] == 0
    assert p["pfns"] == q["max_mapnr"], "the pass walked other frames than the dump holds"
    for field in COUNTERS:
        assert q["kernel_bitmap"][field] == p[field.removesuffix("_pages")], field


def test_pass_line_is_in_the_crashed_kernels_log(vmcore: Path, tmp_path: Path) -> None:
    """The kernel log inside the vmcore (--dump-dmesg) has the console's pass line."""
    out = tmp_path / "dmesg.txt"
    p = subprocess.run([*_cdbdump(), "--dump-dmesg", str(vmcore), str(out)],
                       capture_output=True, text=True, env=_env(), check=False,
                       stdin=subprocess.DEVNULL, timeout=TOOL_TIMEOUT_S)
    assert p.returncode == 0, p.stderr
    lines = [line for line in out.read_text(errors="replace").splitlines()
             if "crash_dump_bitmap: pass:" in line]
    assert len(lines) == 1
    fields = dict(kv.split("=") for kv in lines[0].split("pass:", 1)[1].split())
    assert {k: int(v) for k, v in fields.items()} == real_bitmap_vmcore.panic_pass(vmcore)


def _describe(vmcore: Path, pfns: list[int]) -> list[str]:
    """flags, mapping and _mapcount of the struct pages of PFNS (for failure messages)."""
    with MappedFile(vmcore) as f:
        image = open_input(f)
        assert image.kernel is not None and image.mem_map is not None
        assert image.vmcoreinfo is not None
        info, mm = image.vmcoreinfo, image.mem_map
        names = {info.get_number(k): k.removeprefix("PG_") for k in
                 ("PG_lru", "PG_private", "PG_swapcache", "PG_swapbacked", "PG_slab",
                  "PG_head_mask", "PG_hwpoison")}
        out = []
        for pfn in pfns:
            run = next(r for r in mm.runs if r.start_pfn <= pfn < r.end_pfn)
            raw = image.kernel.read(run.mem_map_vaddr + (pfn - run.start_pfn)
                                    * mm.struct_page_size, mm.struct_page_size)
            flags = struct.unpack_from("<Q", raw, 0)[0]
            mapping = struct.unpack_from("<Q", raw, info.offset("page.mapping"))[0]
            mapcount = struct.unpack_from("<i", raw, info.offset("page._mapcount"))[0]
            set_bits = [names.get(b, str(b)) for b in range(64) if flags >> b & 1]
            out.append(f"pfn {pfn:#x}: flags {flags:#x} ({','.join(set_bits)}) "
                       f"mapping {mapping:#x} _mapcount {mapcount}")
        return out


def test_q_keeps_the_pages_the_scan_keeps(vmcore: Path, runs: Runs, tier: Any) -> None:
    """Same dumpable set as the mem_map scan; every page byte-equal to /proc/vmcore.

    tier.compare reads both dumps with libkdumpfile and the vmcore directly.
    """
    q_dump, q = runs.get(True, 31)
    scan_dump, scan = runs.get(False, 31)
    cmp = tier.compare(vmcore, scan_dump, q_dump)
    for key in ("ref_error", "ours_error"):
        assert key not in cmp, cmp[key]
    assert not cmp["read_errors"], cmp["read_errors"]
    assert cmp["ours_vs_source"] == 0, f"-q pages differ from the vmcore: {cmp}"
    assert cmp["ref_vs_source"] == 0, f"scan pages differ from the vmcore: {cmp}"
    assert cmp["ref_vs_ours"] == 0
    assert cmp["ours_pages"] == q["dumpable_pages"]
    assert cmp["ref_pages"] == scan["dumpable_pages"]
    differ = sorted(set(cmp["only_ours_all"]) | set(cmp["only_ref_all"]))
    assert not differ, (
        f"{cmp['only_ours']} pages only -q keeps, {cmp['only_ref']} only the scan keeps "
        f"(no class explains them):\n" + "\n".join(_describe(vmcore, differ[:20])))


def test_kernel_counters_equal_the_scan(vmcore: Path, runs: Runs) -> None:
    _, q = runs.get(True, 31)
    _, scan = runs.get(False, 31)
    kernel = {COUNTERS[k]: v for k, v in q["kernel_bitmap"].items() if k in COUNTERS}
    ours = {k: scan["counts"][k] for k in COUNTERS.values()}
    assert kernel == ours
    assert kernel["free"] > 0 and kernel["user"] > 0 and kernel["cache"] > 0
    assert kernel["cache_private"] > 0
    # offline pages have no counter in version 1: the pass prints them
    assert real_bitmap_vmcore.panic_pass(vmcore)["offline"] == scan["counts"]["offline"]


@pytest.mark.parametrize("level", [1, 15])
def test_q_falls_back_when_d_keeps_what_the_kernel_dropped(runs: Runs, level: int) -> None:
    """The kernel filtered at 31: -d 1 keeps cache/user/free, -d 15 keeps free pages."""
    _, q = runs.get(True, level)
    assert q["path_taken"] == "fallback"
    reason = q["fallback_reason"] or ""
    assert re.search(rf"the kernel excluded \d+ [a-z ]+ pages that -d {level} keeps$", reason), \
        reason
