"""Fuzz cdbdump with mutated vmcores (``make fuzz``; a short form runs in ``make test``).

    python -m tests.fuzz.fuzz [--inputs N] [--start K] [--plan] [--seed S] [--real VMCORE]
                              [--workdir DIR]

Inputs are drawn from one random sequence per seed, so ``--start K`` runs inputs
K..N-1 of exactly the sequence a full run draws (the first K are drawn, not run),
and ``--plan`` prints the categories of that range without running it. The
sequence also depends on the pristine runs (which pages they exclude), so resume
with the same cdbdump behaviour on the pristine bases.

Bases: a synthetic 6.1 machine with the RFC kernel bitmap (tests/builders), and
optionally a real vmcore (only in-place mutations, undone after each run, so
the 1 GiB file is never copied). Every input runs twice, ``-q -d 31`` and
``-d 31`` (the mem_map scan), in a forked child with RLIMIT_AS and a time limit
(tests/fuzz/worker.py). Findings:

* traceback — anything but one ``cdbdump: error:`` line on failure;
* hang — killed at the time limit;
* rss — peak RSS above 96 MiB;
* bad exit — an exit status other than 0 or 1;
* unreadable — exit 0 but the dump does not open or is flagged incomplete;
* wrong kept set — for mutations that change only the data of pages the
  pristine run excluded (no struct page, page table, kernel image or bitmap
  is touched), exit 0 and the 2nd bitmap equal to the pristine run's;
* output over input — a dump (complete or not) larger than the input plus
  room for headers and bitmaps.

Counts per category are printed; the exit status is 1 when anything was found.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cdbdump.errors import CdbdumpError  # noqa: E402
from cdbdump.fileio import MappedFile  # noqa: E402
from cdbdump.vmcore.kdumpfile import KdumpFile  # noqa: E402

RSS_LIMIT_KIB = 96 * 1024
# a dump holds no more page data than its input: headers and two bitmaps on top
OUTPUT_SLACK = 4 << 20
AS_LIMIT = 3 << 30  # address space: lets a runaway allocation fail instead of the machine
TIME_LIMIT_S = 30.0
# a real 1 GiB vmcore whose mutation defeats filtering is dumped whole, through the
# Python FUSE view: minutes, not a hang
REAL_TIME_LIMIT_S = 600.0
PAGE = 4096
PHDR = struct.Struct("<IIQQQQQQ")
ABSURD = [0, 1, 7, 0xFFF, 0x1000, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 32, 1 << 44, 1 << 45,
          (1 << 52) - PAGE, 1 << 52, 1 << 63, (1 << 64) - 1, (1 << 64) - PAGE]
ABSURD_TEXT = ["-1", "0", "1", "-129", "4294967295", "18446744073709551615",
               "99999999999999999999999999", "0x", "", "ff", "-0", "1e9", "\x7f", "64", "4096",
               "-9223372036854775809", "8192", "2048"]


@dataclass
class Phdr:
    index: int
    file_offset: int  # of the program header itself
    p_type: int
    p_offset: int
    p_paddr: int
    p_filesz: int
    p_memsz: int


@dataclass
class Base:
    """A pristine vmcore and what the harness knows of it."""

    name: str
    path: Path
    size: int
    phdrs: list[Phdr]
    vmcoreinfo: tuple[int, int]  # file offset, size of the VMCOREINFO desc
    vmcoreinfo_text: bytes
    copyable: bool  # small: each input is a copy; else served through a patching FUSE mount
    excluded_data: list[int]  # file offsets of pages the pristine runs excluded
    metadata: list[tuple[int, str]] = field(default_factory=list)  # (offset, what) to corrupt
    kept: dict[str, np.ndarray] = field(default_factory=dict)  # mode -> pristine 2nd bitmap
    info_offset: int | None = None  # file offset of crash_dump_bitmap_info
    mounted: Path | None = None  # the FUSE view of path (real bases)
    patches_file: Path | None = None


def parse_elf(path: Path) -> tuple[list[Phdr], tuple[int, int], bytes]:
    with path.open("rb") as f:
        head = f.read(1 << 16)
        e_phoff, = struct.unpack_from("<Q", head, 0x20)
        e_phnum, = struct.unpack_from("<H", head, 0x38)
        phdrs = []
        for i in range(e_phnum):
            off = e_phoff + PHDR.size * i
            t, _fl, p_off, _v, paddr, filesz, memsz, _a = PHDR.unpack_from(head, off)
            phdrs.append(Phdr(i, off, t, p_off, paddr, filesz, memsz))
        vmci = (0, 0)
        text = b""
        for ph in phdrs:
            if ph.p_type != 4:
                continue
            f.seek(ph.p_offset)
            notes = f.read(ph.p_filesz)
            pos = 0
            while pos + 12 <= len(notes):
                namesz, descsz, _t = struct.unpack_from("<III", notes, pos)
                name = notes[pos + 12 : pos + 12 + namesz].rstrip(b"\0")
                desc = pos + 12 + (namesz + 3) // 4 * 4
                if name == b"VMCOREINFO":
                    vmci = (ph.p_offset + desc, descsz)
                    text = notes[desc : desc + descsz]
                pos = desc + (descsz + 3) // 4 * 4
    return phdrs, vmci, text


def pfn_offset(base: Base, pfn: int) -> int | None:
    paddr = pfn * PAGE
    # overlapping PT_LOADs: cdbdump reads the first in program-header order that stores it
    for ph in (p for p in base.phdrs if p.p_type == 1):
        if ph.p_paddr <= paddr and paddr + PAGE <= ph.p_paddr + ph.p_filesz:
            return ph.p_offset + paddr - ph.p_paddr
    return None


# -- mutations: each returns (category, description, patches, truncate_to, oracle) ------

Patch = tuple[int, bytes]
Mutation = tuple[str, str, list[Patch], int | None, bool]


def m_truncate(rng: random.Random, base: Base) -> Mutation:
    points = [0x40, 0x40 + 56, base.vmcoreinfo[0], base.vmcoreinfo[0] + base.vmcoreinfo[1]]
    for ph in base.phdrs:
        points += [ph.file_offset, ph.file_offset + 56, ph.p_offset, ph.p_offset + ph.p_filesz]
    at = rng.choice(points) + rng.choice([-PAGE, -8, -1, 0, 1, 8, PAGE]) \
        if rng.random() < 0.7 else rng.randrange(base.size)
    at = max(0, min(base.size - 1, at))
    return "truncate", f"at {at:#x}", [], at, False


def m_ehdr(rng: random.Random, base: Base) -> Mutation:
    fields = [(0x04, 1), (0x05, 1), (0x10, 2), (0x12, 2), (0x20, 8), (0x36, 2), (0x38, 2)]
    off, width = rng.choice(fields)
    value = rng.choice([*ABSURD, rng.getrandbits(64)]) & ((1 << (8 * width)) - 1)
    return "elf header", f"ehdr+{off:#x}={value:#x}", [(off, value.to_bytes(width, "little"))], \
        None, False


def m_phdr(rng: random.Random, base: Base) -> Mutation:
    ph = rng.choice(base.phdrs)
    names = ["p_type", "p_flags", "p_offset", "p_vaddr", "p_paddr", "p_filesz", "p_memsz",
             "p_align"]
    i = rng.randrange(8)
    width = 4 if i < 2 else 8
    off = ph.file_offset + (i * 4 if i < 2 else 8 + (i - 2) * 8)
    orig = [ph.p_type, 0, ph.p_offset, 0, ph.p_paddr, ph.p_filesz, ph.p_memsz, 0][i]
    choice = rng.random()
    if choice < 0.5:
        value = rng.choice(ABSURD)
    elif choice < 0.8:
        value = orig + rng.choice([-PAGE, -1, 1, PAGE, 1 << 20, -(1 << 20)])
    else:
        value = rng.getrandbits(8 * width)
    value &= (1 << (8 * width)) - 1
    return "program header", f"phdr {ph.index} {names[i]}={value:#x}", \
        [(off, value.to_bytes(width, "little"))], None, False


def m_overlap(rng: random.Random, base: Base) -> Mutation:
    loads = [p for p in base.phdrs if p.p_type == 1]
    a, b = rng.sample(loads, 2) if len(loads) > 1 else (loads[0], loads[0])
    paddr = b.p_paddr + rng.choice([0, PAGE, b.p_memsz // 2, max(0, b.p_memsz - PAGE)])
    return "overlapping PT_LOADs", f"phdr {a.index} p_paddr -> {paddr:#x} (inside {b.index})", \
        [(a.file_offset + 24, paddr.to_bytes(8, "little"))], None, False


def m_huge(rng: random.Random, base: Base) -> Mutation:
    ph = rng.choice([p for p in base.phdrs if p.p_type == 1])
    end = rng.choice([1 << 40, 1 << 44, 1 << 45, 1 << 46, 1 << 52])
    patches = []
    if rng.random() < 0.5:  # memsz to reach end: a no-data tail
        memsz = max(ph.p_filesz, end - ph.p_paddr)
        patches.append((ph.file_offset + 48, memsz.to_bytes(8, "little")))
    else:  # move the segment up there (file-backed frames at a huge paddr)
        paddr = end - ph.p_memsz
        patches.append((ph.file_offset + 24, paddr.to_bytes(8, "little")))
    return "huge PT_LOAD", f"phdr {ph.index} reaching {end:#x}", patches, None, False


def _vmcoreinfo_patch(base: Base, lines: list[bytes]) -> list[Patch] | None:
    text = b"\n".join(lines) + b"\n"
    off, size = base.vmcoreinfo
    if len(text) > size:
        return None
    return [(off, text.ljust(size, b"\0"))]


def m_vmcoreinfo(rng: random.Random, base: Base) -> Mutation:
    lines = [ln for ln in base.vmcoreinfo_text.split(b"\0", 1)[0].split(b"\n") if ln]
    kind = rng.choice(["value", "drop", "duplicate", "value", "named"])
    if kind == "named":  # the ones the issue names
        key, value = rng.choice([
            (b"NUMBER(PAGE_OFFLINE_MAPCOUNT_VALUE)", b"-1"),
            (b"NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)", b"-1"), (b"SIZE(page)", b"-1"),
            (b"NUMBER(phys_base)", b"99999999999999999999999"), (b"CRASHTIME", b"-5"),
            (b"CRASHTIME", b"99999999999999999999999"), (b"PAGESIZE", b"8192"),
            (b"PAGESIZE", b"2048"), (b"SYMBOL(init_uts_ns)", b"zz"),
            (b"OFFSET(uts_namespace.name)", b"-99999")])
        lines = [ln for ln in lines if not ln.startswith(key + b"=")]
        lines.insert(0, key + b"=" + value)
        desc = f"{key.decode()}={value.decode()}"
    else:
        i = rng.randrange(len(lines))
        key = lines[i].split(b"=", 1)[0]
        if kind == "value":
            value = rng.choice(ABSURD_TEXT).encode("latin-1")
            lines[i] = key + b"=" + value
            desc = f"{key.decode()}={value!r}"
        elif kind == "drop":
            del lines[i]
            desc = f"drop {key.decode()}"
        else:  # an earlier duplicate wins (first line with a key wins): make room first
            value = rng.choice(ABSURD_TEXT).encode("latin-1")
            lines.insert(0, key + b"=" + value)
            j = rng.randrange(1, len(lines))
            dropped = lines.pop(j).split(b"=", 1)[0]
            desc = f"duplicate {key.decode()}={value!r} (and drop {dropped.decode()})"
    patches = _vmcoreinfo_patch(base, lines)
    if patches is None:
        return m_vmcoreinfo(rng, base)
    return "vmcoreinfo keys", desc, patches, None, False


def m_metadata(rng: random.Random, base: Base) -> Mutation:
    if not base.metadata:
        return m_flip(rng, base)
    what = rng.choice(sorted({w for _, w in base.metadata}))
    off, what = rng.choice([m for m in base.metadata if m[1] == what])
    patches = []
    for _ in range(rng.randint(1, 16)):
        at = off + rng.randrange(PAGE)
        patches.append((at, bytes([rng.getrandbits(8)])))
    if rng.random() < 0.2:
        patches = [(off, rng.choice([bytes(PAGE), b"\xff" * PAGE]))]
    return what, f"{len(patches)} bytes in {what} page at {off:#x}", patches, None, False


def m_bitmap_struct(rng: random.Random, base: Base) -> Mutation:
    """crash_dump_bitmap_info fields (version, bitmap, bitmap_size, five counters)."""
    if base.info_offset is None:
        return m_flip(rng, base)
    names = ["version", "bitmap", "bitmap_size", "cache_pages", "cache_private_pages",
             "user_pages", "free_pages", "hwpoison_pages"]
    i = rng.randrange(len(names))
    with base.path.open("rb") as f:
        f.seek(base.info_offset + 8 * i)
        orig = int.from_bytes(f.read(8), "little")
    value = (rng.choice(ABSURD) if rng.random() < 0.6
             else orig + rng.choice([-PAGE, -1, 1, 8, PAGE, 2 * PAGE])) % (1 << 64)
    return "kernel bitmap struct", f"{names[i]}={value:#x}", \
        [(base.info_offset + 8 * i, value.to_bytes(8, "little"))], None, False


def m_flip(rng: random.Random, base: Base) -> Mutation:
    head = rng.random() < 0.5
    patches = []
    for _ in range(rng.randint(1, 32)):
        at = rng.randrange(min(base.size, 0x4000) if head else base.size)
        patches.append((at, bytes([rng.getrandbits(8)])))
    return "byte flips", f"{len(patches)} flips {'in the head' if head else 'anywhere'}", \
        patches, None, False


def m_data_only(rng: random.Random, base: Base) -> Mutation:
    patches = []
    for off in rng.sample(base.excluded_data, min(len(base.excluded_data), rng.randint(1, 64))):
        if rng.random() < 0.5:
            patches.append((off, rng.randbytes(PAGE)))
        else:
            patches.append((off + rng.randrange(PAGE), bytes([rng.getrandbits(8) | 1])))
    return "page data only (oracle)", f"{len(patches)} excluded pages rewritten", patches, \
        None, True


MUTATORS: list[tuple[Callable[[random.Random, Base], Mutation], float]] = [
    (m_truncate, 1), (m_ehdr, 1), (m_phdr, 3), (m_overlap, 1), (m_huge, 1),
    (m_vmcoreinfo, 4), (m_metadata, 3), (m_bitmap_struct, 1), (m_flip, 2), (m_data_only, 3),
]


# -- bases --------------------------------------------------------------------------------


def synthetic_base(workdir: Path, seed: int) -> Base:
    from tests.builders import SyntheticKernel  # only the harness process builds machines

    kernel = SyntheticKernel("6.1", seed=seed, ram_size=32 << 20, crash_dump_bitmap=31)
    path = workdir / f"synthetic-{seed}.elf"
    kernel.write(path)
    base = _base(f"synthetic 6.1 seed {seed}", path, copyable=True)
    # metadata pages the classifier and the -q check read: struct pages, the
    # kernel bitmap and its struct, page-table pages of the kernel image mapping
    meta: list[tuple[int, str]] = []
    first = kernel.first_bitmap()
    for pfn in range(0, kernel.max_mapnr, 97):
        if first[pfn]:
            sp = kernel.vtop(kernel.struct_page_vaddr(pfn)) // PAGE
            off = pfn_offset(base, sp)
            if off is not None:
                meta.append((off, "struct pages"))
    for i in range(0, kernel.bitmap_pages):
        off = pfn_offset(base, kernel.bitmap_paddr // PAGE + i)
        if off is not None:
            meta.append((off, "kernel bitmap"))
    info_paddr = kernel.vtop(kernel.symbols["crash_dump_bitmap_info"])
    off = pfn_offset(base, info_paddr // PAGE)
    if off is not None:
        meta.append((off, "kernel bitmap struct"))
        base.info_offset = off + info_paddr % PAGE
    base.metadata = meta
    return base


def real_base(path: Path, workdir: Path) -> tuple[Base, subprocess.Popen[bytes]]:
    """A real vmcore served read-only through tests/faults/fusefile.py with patches laid
    over it: never copied (1 GiB), never written (it is a shared cache)."""
    base = _base(f"real {path.name}", path, copyable=False)
    base.patches_file = workdir / "patches.json"
    base.patches_file.write_text("[]")
    mnt = workdir / "real-mnt"
    mnt.mkdir(exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "tests.faults.fusefile", str(path), str(mnt),
                             "--patches", str(base.patches_file)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not (mnt / "vmcore").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("cannot mount the real vmcore through FUSE")
        time.sleep(0.05)
    base.mounted = mnt / "vmcore"
    return base, proc


def _base(name: str, path: Path, *, copyable: bool) -> Base:
    phdrs, vmci, text = parse_elf(path)
    return Base(name, path, path.stat().st_size, phdrs, vmci, text, copyable, [])


def learn_pristine(base: Base, runner: Runner, workdir: Path) -> None:
    """Run both modes on the pristine file: the oracle's kept sets and excluded pages."""
    excluded: set[int] = set()
    for mode in ("q", "scan"):
        res = runner.run(base.mounted or base.path, mode, workdir / "pristine.kdump")
        if res["exit"] != 0:
            raise SystemExit(f"pristine {base.name} fails in mode {mode}: {res}")
        with MappedFile(workdir / "pristine.kdump") as f:
            kd = KdumpFile.open(f)
            b1 = kd.bitmap1.get_bools(0, kd.max_mapnr)
            b2 = kd.bitmap2.get_bools(0, kd.max_mapnr)
        base.kept[mode] = b2
        gone = set(np.flatnonzero(b1 & ~b2).tolist())
        excluded = gone if not excluded else excluded & gone
    offsets = [pfn_offset(base, pfn) for pfn in sorted(excluded)]
    base.excluded_data = [o for o in offsets if o is not None]
    # metadata pages must not be among them (the oracle would be wrong)
    meta = {o for o, _ in base.metadata}
    base.excluded_data = [o for o in base.excluded_data if o not in meta]


# -- running ------------------------------------------------------------------------------


class Runner:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fuzz.worker"], cwd=ROOT, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True,
        )

    def run(self, vmcore: Path, mode: str, out: Path,
            timeout: float = TIME_LIMIT_S) -> dict[str, object]:
        if out.exists():
            out.unlink()
        argv = (["-q"] if mode == "q" else []) + ["-d", "31", "--message-level", "4",
                                                   str(vmcore), str(out)]
        req = {"argv": argv, "stdout": str(self.workdir / "stdout"),
               "stderr": str(self.workdir / "stderr"), "timeout": timeout,
               "as_limit": AS_LIMIT}
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        answer: dict[str, object] = json.loads(self.proc.stdout.readline())
        answer["stderr"] = (self.workdir / "stderr").read_text(errors="replace")
        return answer

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


def prepare(base: Base, mutation: Mutation, work: Path) -> tuple[Path, list[Patch]]:
    """The mutated file; for in-place bases, the patches that restore the original."""
    _, _, patches, truncate_to, _ = mutation
    if base.mounted is not None and base.patches_file is not None:
        tmp = base.patches_file.with_suffix(".tmp")
        tmp.write_text(json.dumps([[o, d.hex()] for o, d in patches if o < base.size]))
        tmp.replace(base.patches_file)
        return base.mounted, []
    if base.copyable:
        with base.path.open("rb") as src, work.open("wb") as dst:
            length = base.size if truncate_to is None else truncate_to
            done = 0
            while done < length:
                n = os.copy_file_range(src.fileno(), dst.fileno(), length - done)
                if n == 0:
                    break
                done += n
        target, undo = work, []
    else:
        target, undo = base.path, []
    size = target.stat().st_size
    with target.open("r+b") as f:
        for off, data in patches:
            if off >= size:
                continue
            data = data[: size - off]
            if not base.copyable:
                f.seek(off)
                undo.append((off, f.read(len(data))))
            f.seek(off)
            f.write(data)
    return target, undo[::-1]


def restore(base: Base, undo: list[Patch]) -> None:
    with base.path.open("r+b") as f:
        for off, data in undo:
            f.seek(off)
            f.write(data)


@dataclass
class Stats:
    inputs: Counter[str] = field(default_factory=Counter)
    runs: Counter[str] = field(default_factory=Counter)
    exit0: Counter[str] = field(default_factory=Counter)
    findings: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    max_rss_kib: int = 0
    max_wall_s: float = 0.0

    @property
    def nr_findings(self) -> int:
        return sum(len(v) for v in self.findings.values())


def check(base: Base, mutation: Mutation, mode: str, res: dict[str, object], out: Path,
          stats: Stats) -> None:
    category, desc, _, _, oracle = mutation
    where = f"[{base.name}] {category}: {desc} ({mode})"
    stderr = str(res["stderr"])
    code = res["exit"]
    stats.runs[category] += 1
    stats.max_rss_kib = max(stats.max_rss_kib, int(res["max_rss_kib"]))  # type: ignore[call-overload]
    stats.max_wall_s = max(stats.max_wall_s, float(res["wall_s"]))  # type: ignore[arg-type]
    if res["timed_out"]:
        stats.findings["hang"].append(where)
        return
    if "Traceback" in stderr:
        stats.findings["traceback"].append(f"{where}: {stderr.strip().splitlines()[-1]}")
        return
    if int(res["max_rss_kib"]) > RSS_LIMIT_KIB:  # type: ignore[call-overload]
        stats.findings["rss over 96 MiB"].append(f"{where}: {res['max_rss_kib']} KiB")
    if code not in (0, 1):
        stats.findings["bad exit"].append(f"{where}: exit {code}: {stderr[-300:]}")
        return
    if out.exists() and out.stat().st_size > base.size + OUTPUT_SLACK:
        stats.findings["output over input"].append(
            f"{where}: {out.stat().st_size} bytes out of {base.size}")
    if code == 1:
        errors = [ln for ln in stderr.splitlines() if ln.startswith("cdbdump: error:")]
        if len(errors) != 1:
            stats.findings["not one error line"].append(f"{where}: {stderr[-300:]}")
    if code == 0:
        stats.exit0[category] += 1
        try:
            with MappedFile(out) as f:
                kd = KdumpFile.open(f)
                incomplete = kd.is_incomplete
                kept = kd.bitmap2.get_bools(0, kd.max_mapnr)
        except CdbdumpError as exc:
            stats.findings["unreadable"].append(f"{where}: {exc}")
            return
        if incomplete:
            stats.findings["unreadable"].append(f"{where}: exit 0 but flagged incomplete")
        if oracle and not np.array_equal(kept, base.kept[mode]):
            stats.findings["wrong kept set"].append(where)
    elif oracle:
        stats.findings["wrong kept set"].append(f"{where}: exit {code}: {stderr[-200:]}")


def fuzz(n_inputs: int, seed: int, workdir: Path, real: Path | None = None,
         log: Callable[[str], None] = print, start: int = 0, plan: bool = False) -> Stats:
    rng = random.Random(seed)
    runner = Runner(workdir)
    stats = Stats()
    mount: subprocess.Popen[bytes] | None = None
    try:
        bases = [synthetic_base(workdir, s) for s in (seed % 7 + 1,)]
        if real is not None:
            real_one, mount = real_base(real, workdir)
            bases.append(real_one)
        for base in bases:
            learn_pristine(base, runner, workdir)
        mutators, weights = zip(*MUTATORS, strict=True)
        out = workdir / "out.kdump"
        for i in range(n_inputs):
            base = bases[i % len(bases)]
            mutator = rng.choices(mutators, weights)[0]
            mutation = mutator(rng, base)
            if not base.copyable and mutation[3] is not None:
                mutation = m_phdr(rng, base)  # no truncation of the shared real copy
            if i < start:  # drawn, so the sequence from `start` is a full run's
                continue
            stats.inputs[mutation[0]] += 1
            if plan:
                continue
            target, undo = prepare(base, mutation, workdir / "input.elf")
            try:
                for mode in ("q", "scan"):
                    res = runner.run(target, mode, out,
                                     TIME_LIMIT_S if base.copyable else REAL_TIME_LIMIT_S)
                    check(base, mutation, mode, res, out, stats)
            finally:
                if undo:
                    restore(base, undo)
            if (i + 1 - start) % 500 == 0:
                log(f"-- after input {i + 1} ({i + 1 - start} run) --\n{render(stats)}")
    finally:
        runner.close()
        if mount is not None:
            subprocess.run(["fusermount3", "-u", "-z", str(workdir / "real-mnt")], check=False)
            mount.wait(timeout=30)
    return stats


def render(stats: Stats) -> str:
    lines = [f"{'category':<28} {'inputs':>7} {'runs':>7} {'exit 0':>7}"]
    lines.extend(f"{cat:<28} {stats.inputs[cat]:>7} {stats.runs[cat]:>7} {stats.exit0[cat]:>7}"
                 for cat in sorted(stats.inputs))
    lines.append(f"{'total':<28} {sum(stats.inputs.values()):>7} "
                 f"{sum(stats.runs.values()):>7} {sum(stats.exit0.values()):>7}")
    lines.append(f"peak RSS {stats.max_rss_kib / 1024:.1f} MiB, slowest run "
                 f"{stats.max_wall_s:.2f} s")
    for kind in ("traceback", "hang", "rss over 96 MiB", "bad exit", "not one error line",
                 "unreadable", "wrong kept set", "output over input"):
        found = stats.findings.get(kind, [])
        lines.append(f"{kind}: {len(found)}")
        lines.extend(f"  {item}" for item in found[:10])
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=int, default=10_000)
    ap.add_argument("--start", type=int, default=0,
                    help="draw the first START inputs without running them")
    ap.add_argument("--plan", action="store_true",
                    help="print the categories of the inputs, run none of them")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--real", type=Path, help="a real vmcore (mutated in a working copy)")
    ap.add_argument("--workdir", type=Path)
    args = ap.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cdbdump-fuzz-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        stats = fuzz(args.inputs, args.seed, workdir, args.real,
                     log=lambda line: print(line, flush=True), start=args.start,
                     plan=args.plan)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(render(stats))
    sys.exit(1 if stats.nr_findings else 0)


if __name__ == "__main__":
    main()
