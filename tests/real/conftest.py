"""Real-vmcore tier: vmcores of real Debian kernels, built under QEMU on demand.

The vmcores come from fixtures/real_vmcores.py (cached in .cache/vmcores/). When
QEMU, the packages or the kernel download are not available the tests are
skipped, except with CI=true, where that is a failure: CI must not skip them.

Environment:
  CDBDUMP_REAL_VMCORES  comma-separated catalogue names to test (default below)
  CDBDUMP_CMD           command that runs cdbdump (default: this python -m cdbdump)
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fixtures import real_vmcores  # noqa: E402
from tests.ci_gate import IN_CI  # noqa: E402

DEFAULT_VMCORES = ",".join(real_vmcores.TESTED)
VMCORES = os.environ.get("CDBDUMP_REAL_VMCORES", DEFAULT_VMCORES).split(",")
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's python3-libkdumpfile only works here
TOOL_TIMEOUT_S = 600

# Lines of the --message-level 31 report ("<name> : 0x%016llx").
COUNT_LINES = (
    "Original pages",
    "Excluded pages",
    "Pages filled with zero",
    "Non-private cache pages",
    "Private cache pages",
    "User process data pages",
    "Free pages",
    "Hwpoison pages",
    "Offline pages",
    "Remaining pages",
    "Memory Hole",
    "Total pages",
)
_COUNT_RE = re.compile(r"^\s*(" + "|".join(COUNT_LINES) + r")\s*:\s*0x([0-9a-fA-F]+)", re.M)


def unavailable(reason: str) -> NoReturn:
    """Skip, or fail under CI=true: CI must run this tier."""
    if IN_CI:
        pytest.fail(f"real-vmcore tier unavailable under CI: {reason}", pytrace=False)
    pytest.skip(reason)


def parse_report(text: str) -> dict[str, int]:
    """The page counts of a makedumpfile-style report."""
    return {m.group(1): int(m.group(2), 16) for m in _COUNT_RE.finditer(text)}


@dataclass
class RealVmcore:
    name: str
    raw: Path  # QEMU's ELF as written (program headers at 192): cdbdump's input
    norm: Path  # program headers at 64: makedumpfile's input
    vmcoreinfo: dict[str, str]
    guest: dict[str, int]  # /proc/vmstat + /proc/meminfo (kB) just before the dump
    mode: str  # "qemu" (QMP dump of the running guest) or "kdump" (/proc/vmcore)

    @property
    def kernel(self) -> tuple[int, int]:
        major, minor = self.vmcoreinfo["OSRELEASE"].split(".")[:2]
        return int(major), int(minor)


@dataclass
class Run:
    tool: str
    cmd: list[str]
    out: Path
    returncode: int
    stdout: str
    stderr: str
    counts: dict[str, int] = field(default_factory=dict)

    def check(self) -> None:
        assert self.returncode == 0, (
            f"{self.tool} failed (rc {self.returncode}): {shlex.join(self.cmd)}\n"
            f"stdout:\n{self.stdout[-3000:]}\nstderr:\n{self.stderr[-3000:]}"
        )
        assert self.out.is_file(), f"{self.tool} wrote no {self.out}"


def run_tool(tool: str, cmd: list[str], out: Path, env: dict[str, str] | None = None) -> Run:
    out.unlink(missing_ok=True)
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, errors="replace",
                           stdin=subprocess.DEVNULL, timeout=TOOL_TIMEOUT_S, env=env,
                           check=False)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{tool} took more than {TOOL_TIMEOUT_S}s: {shlex.join(cmd)} ({e})")
    return Run(tool, cmd, out, p.returncode, p.stdout, p.stderr,
               parse_report(p.stdout + "\n" + p.stderr))


def cdbdump_cmd() -> list[str]:
    return shlex.split(os.environ.get("CDBDUMP_CMD", "")) or [sys.executable, "-m", "cdbdump"]


def cdbdump_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


# A reader run under /usr/bin/python3 with Debian's libkdumpfile. It compares two
# kdump files (makedumpfile's REF, cdbdump's OURS) page by page with each other and
# with SOURCE, an ELF vmcore read directly (honouring e_phoff; bytes beyond p_filesz
# or outside every PT_LOAD read as zero). Prints a JSON summary.
READER = r'''
import json, mmap, struct, sys
import kdumpfile
PAGE, CHUNK, SHOW = 4096, 256, 20

def dumpable(path):
    k = kdumpfile.kdumpfile(path)
    a = k.attr
    bm, n, pfns, i = a["file.pagemap"], a["max_pfn"], set(), 0
    while i < n:
        try:
            s = bm.find_set(i)
        except Exception:
            break
        if s >= n:
            break
        try:
            e = min(bm.find_clear(s), n)
        except Exception:
            e = n
        pfns.update(range(s, e))
        i = e
    return k, n, pfns

class Source:
    def __init__(self, path):
        self.f = open(path, "rb")
        self.m = mmap.mmap(self.f.fileno(), 0, access=mmap.ACCESS_READ)
        phoff, shoff = struct.unpack_from("<QQ", self.m, 0x20)
        phnum = struct.unpack_from("<H", self.m, 0x38)[0]
        if phnum == 0xFFFF:
            phnum = struct.unpack_from("<I", self.m, shoff + 44)[0]
        self.segs = []
        for i in range(phnum):
            t, _, off, _, pa, fs = struct.unpack_from("<IIQQQQ", self.m, phoff + 56 * i)
            if t == 1 and fs:
                self.segs.append((pa, pa + fs, off))
        # pages that a PT_LOAD's file data ends inside (not covered by another one)
        self.partial_end = sorted({e // PAGE for _, e, _ in self.segs if e % PAGE
                                   and not self.covered(e, e + 1)})

    def covered(self, start, end):
        return any(s <= start and end <= e for s, e, _ in self.segs)

    def touches(self, pfn):
        return any(s < (pfn + 1) * PAGE and pfn * PAGE < e for s, e, _ in self.segs)

    def read(self, addr, size):
        buf = bytearray(size)
        for s, e, off in self.segs:
            lo, hi = max(s, addr), min(e, addr + size)
            if lo < hi:
                buf[lo - addr:hi - addr] = self.m[off + lo - s:off + hi - s]
        return bytes(buf)

def runs(pfns):
    out, start, prev = [], None, None
    for p in sorted(pfns):
        if start is None or p != prev + 1 or p - start >= CHUNK:
            if start is not None:
                out.append((start, prev + 1))
            start = p
        prev = p
    if start is not None:
        out.append((start, prev + 1))
    return out

def main(source_path, ref_path, ours_path):
    src = Source(source_path)
    res = {"partial_end_pfns": src.partial_end}
    dumps = {}
    for tag, path in (("ref", ref_path), ("ours", ours_path)):
        try:
            dumps[tag] = dumpable(path)
        except Exception as e:
            res[tag + "_error"] = "%s: %s" % (type(e).__name__, e)
    if len(dumps) < 2:
        print(json.dumps(res)); return
    (rk, rn, rp), (ok, on, op) = dumps["ref"], dumps["ours"]
    res.update(ref_max_pfn=rn, ours_max_pfn=on, ref_pages=len(rp), ours_pages=len(op))
    only_ref, only_ours = sorted(rp - op), sorted(op - rp)
    res.update(only_ref=len(only_ref), only_ref_first=only_ref[:SHOW],
               only_ours=len(only_ours), only_ours_first=only_ours[:SHOW],
               only_ours_all=only_ours, only_ref_all=only_ref)
    outside = sorted(p for p in op if not src.touches(p))
    res.update(ours_outside_source=len(outside), ours_outside_source_first=outside[:SHOW])
    bad = {"ref_vs_source": [], "ours_vs_source": [], "ref_vs_ours": []}
    errors = {"ref": [], "ours": []}
    for readers, pfns in (((rk, ok), rp & op), ((rk,), rp - op), ((ok,), op - rp)):
        for s, e in runs(pfns):
            addr, size = s * PAGE, (e - s) * PAGE
            want = src.read(addr, size)
            got = []
            for k in readers:
                tag = "ref" if k is rk else "ours"
                try:
                    got.append((tag, k.read(kdumpfile.KDUMP_MACHPHYSADDR, addr, size)))
                except Exception as ex:
                    errors[tag].append([s, "%s: %s" % (type(ex).__name__, ex)])
            if all(data == want for _, data in got) and len(got) == len(readers):
                continue
            for i in range(e - s):
                page = slice(i * PAGE, (i + 1) * PAGE)
                pages = {tag: bytes(data[page]) for tag, data in got}
                for tag, data in pages.items():
                    if data != want[page]:
                        bad[tag + "_vs_source"].append(s + i)
                if len(pages) == 2 and pages["ref"] != pages["ours"]:
                    bad["ref_vs_ours"].append(s + i)
    for key, pfns in bad.items():
        res[key] = len(pfns)
        res[key + "_first"] = pfns[:SHOW]
    res["read_errors"] = {tag: e[:SHOW] for tag, e in errors.items() if e}
    print(json.dumps(res))

main(*sys.argv[1:4])
'''


def compare_dumps(source: Path, ref: Path, ours: Path) -> dict[str, Any]:
    """Run READER; see its comment."""
    p = subprocess.run([SYSTEM_PYTHON, "-c", READER, str(source), str(ref), str(ours)],
                       capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=False)
    assert p.returncode == 0, f"libkdumpfile reader failed:\n{p.stderr[-3000:]}"
    result: dict[str, Any] = json.loads(p.stdout)
    return result


@pytest.fixture(scope="session")
def real_tools() -> None:
    """makedumpfile and Debian's libkdumpfile module (the independent reader)."""
    if shutil.which("makedumpfile") is None:
        unavailable("makedumpfile is not installed (apt-get install makedumpfile)")
    try:
        ok = subprocess.run([SYSTEM_PYTHON, "-c", "import kdumpfile"], capture_output=True,
                            timeout=60, check=False).returncode == 0
    except OSError:
        ok = False
    if not ok:
        unavailable(f"{SYSTEM_PYTHON} cannot import kdumpfile (apt-get install "
                    "python3-libkdumpfile)")


_built: dict[str, RealVmcore] = {}


def get_vmcore(name: str) -> RealVmcore:
    """Build (once, cached on disk) and describe catalogue vmcore NAME."""
    if name not in _built:
        try:
            raw = real_vmcores.ensure(name)
            norm = real_vmcores.ensure_normalized(name)
        except real_vmcores.VmcoreUnavailable as e:
            unavailable(f"cannot build real vmcore {name}: {e}")
        except real_vmcores.VmcoreBuildError as e:
            pytest.fail(str(e), pytrace=False)
        _built[name] = RealVmcore(name, raw, norm, real_vmcores.vmcoreinfo(name),
                                  real_vmcores.guest_stats(name),
                                  real_vmcores.CATALOGUE[name].mode)
    return _built[name]


@pytest.fixture(scope="session", params=VMCORES)
def vmcore(request: pytest.FixtureRequest, real_tools: None) -> RealVmcore:
    return get_vmcore(request.param)


@pytest.fixture(scope="session",
                params=[n for n in VMCORES if real_vmcores.CATALOGUE[n].mode == "qemu"])
def qemu_vmcore(request: pytest.FixtureRequest, real_tools: None) -> RealVmcore:
    """Only the QEMU dumps: their guest counters were taken right before the dump."""
    return get_vmcore(request.param)


class Tier:
    """What the tests use: run both tools, compare their dumps, cached reports."""

    count_lines = COUNT_LINES

    def __init__(self, outdir: Path) -> None:
        self.outdir = outdir
        self.runs: dict[tuple[str, str, int], Run] = {}

    def dump_both(self, vm: RealVmcore, level: int) -> tuple[Run, Run]:
        """makedumpfile on the normalised copy, cdbdump on QEMU's raw ELF: -l -d LEVEL."""
        opts = ["-l", "-d", str(level), "--message-level", "31"]
        ref_out = self.outdir / f"{vm.name}.d{level}.ref.kdump"
        ours_out = self.outdir / f"{vm.name}.d{level}.ours.kdump"
        ref = run_tool("makedumpfile", ["makedumpfile", *opts, str(vm.norm), str(ref_out)],
                       ref_out)
        ours = run_tool("cdbdump", [*cdbdump_cmd(), *opts, str(vm.raw), str(ours_out)],
                        ours_out, env=cdbdump_env())
        self.runs[vm.name, "makedumpfile", level] = ref
        self.runs[vm.name, "cdbdump", level] = ours
        return ref, ours

    def report(self, vm: RealVmcore, tool: str, level: int) -> Run:
        """The (cached) run of TOOL at LEVEL; its dump file may be gone already."""
        if (vm.name, tool, level) not in self.runs:
            for r in self.dump_both(vm, level):
                r.out.unlink(missing_ok=True)
        return self.runs[vm.name, tool, level]

    @staticmethod
    def compare(source: Path, ref: Path, ours: Path) -> dict[str, Any]:
        return compare_dumps(source, ref, ours)


@pytest.fixture(scope="session")
def tier(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tier]:
    d = tmp_path_factory.mktemp("real-dumps")
    yield Tier(d)
    shutil.rmtree(d, ignore_errors=True)  # dumps of up to ~0.5 GB each
