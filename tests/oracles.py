"""Independent readers ("oracles") that check a kdump-compressed file against its source.

Every test in the project may use these. None of them shares code with cdbdump:

* :func:`libkdumpfile_check`: Debian's python3-libkdumpfile, importable only by
  /usr/bin/python3, so it runs as a subprocess. It lists the dumpable pfns from
  the dump's own bitmap (``file.pagemap``), reads each one and compares it with
  the source ELF read by :class:`SourceElf` (a ~60-line stdlib reader that honours
  e_phoff and PN_XNUM, assembles pages that straddle segments and zero-fills
  beyond p_filesz).
* :func:`drgn_check`: drgn (PyPI, in the dev venv; it bundles its own newer
  libkdumpfile) probes candidate pfns physically; FaultError = not dumpable.
* :func:`makedumpfile_refilter`: Debian's makedumpfile 1.7.2 re-reads every
  dumpable page of a zlib/lzo dump when refiltering it.

When an oracle is missing the test is skipped, except under CI=true, where
that is a failure (:func:`oracle_unavailable`).

Also here: :func:`write_elf_vmcore` and :func:`kdump_inputs`, small adapters over
tests/builders (ElfCoreBuilder, make_vmcoreinfo) for the writer's own tests.
"""

from __future__ import annotations

import inspect
import json
import mmap
import os
import shutil
import struct
import subprocess
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pytest

from tests.ci_gate import IN_CI

SYSTEM_PYTHON = "/usr/bin/python3"  # the only interpreter with Debian's kdumpfile module
MAKEDUMPFILE = shutil.which("makedumpfile") or "/usr/sbin/makedumpfile"
ORACLE_TIMEOUT_S = 900


def oracle_unavailable(reason: str) -> NoReturn:
    """Skip, or fail under CI=true (CI must run every oracle)."""
    if IN_CI:
        pytest.fail(f"oracle unavailable under CI: {reason}", pytrace=False)
    pytest.skip(reason)


# -- the independent source reader (stdlib only: it also runs under /usr/bin/python3) ------


class SourceElf:
    """Pages of an ELF64 little-endian vmcore, read without any cdbdump code."""

    def __init__(self, path, page_size=4096):  # type: ignore[no-untyped-def]
        self.page_size = page_size
        self._fd = os.open(path, os.O_RDONLY)
        size = os.fstat(self._fd).st_size
        self._map = mmap.mmap(self._fd, size, prot=mmap.PROT_READ)
        eh = self._map[:64]
        if eh[:4] != b"\x7fELF" or eh[4] != 2 or eh[5] != 1:
            raise ValueError(f"{path}: not an ELF64 little-endian file")
        e_phoff, e_shoff = struct.unpack_from("<QQ", eh, 0x20)
        e_phentsize, e_phnum = struct.unpack_from("<HH", eh, 0x36)
        if e_phnum == 0xFFFF:  # PN_XNUM: the real count is sh_info of section header 0
            (e_phnum,) = struct.unpack_from("<I", self._map, e_shoff + 44)
        self.loads = []  # (paddr, memsz, file_offset, filesz)
        self.notes = b""
        for i in range(e_phnum):
            p_type, _flags, p_offset, _vaddr, p_paddr, p_filesz, p_memsz, _align = (
                struct.unpack_from("<IIQQQQQQ", self._map, e_phoff + i * e_phentsize)
            )
            if p_type == 1:  # PT_LOAD
                filesz = max(0, min(p_filesz, size - p_offset))
                self.loads.append((p_paddr, p_memsz, p_offset, filesz))
            elif p_type == 4:  # PT_NOTE
                self.notes += self._map[p_offset : p_offset + p_filesz]

    def read_page(self, pfn):  # type: ignore[no-untyped-def]
        """The page's bytes (zero where no file data), or None if no PT_LOAD touches it."""
        ps = self.page_size
        start = pfn * ps
        out = bytearray(ps)
        touched = False
        for paddr, memsz, file_offset, filesz in self.loads:
            lo = max(start, paddr)
            hi = min(start + ps, paddr + memsz)
            if lo >= hi:
                continue
            touched = True
            fhi = min(hi, paddr + filesz)
            if lo < fhi:
                src = file_offset + lo - paddr
                out[lo - start : fhi - start] = self._map[src : src + fhi - lo]
        return bytes(out) if touched else None

    def vmcoreinfo(self):  # type: ignore[no-untyped-def]
        """The VMCOREINFO note's descriptor bytes, or None."""
        pos = 0
        notes = self.notes
        while pos + 12 <= len(notes):
            namesz, descsz, _n_type = struct.unpack_from("<III", notes, pos)
            name_off = pos + 12
            desc_off = name_off + (namesz + 3) // 4 * 4
            if namesz == 0 and descsz == 0:
                break
            if notes[name_off : name_off + namesz].rstrip(b"\0") == b"VMCOREINFO":
                return bytes(notes[desc_off : desc_off + descsz])
            pos = desc_off + (descsz + 3) // 4 * 4
        return None

    def close(self):  # type: ignore[no-untyped-def]
        self._map.close()
        os.close(self._fd)


# -- results ---------------------------------------------------------------------------


@dataclass
class OracleResult:
    """What one independent reader saw in a dump, compared with the source ELF."""

    oracle: str
    dumpable_pfns: np.ndarray  # sorted pfns the reader can read
    mismatched_pfns: list[int]  # readable, but different from the source
    outside_source: list[int]  # readable, but no source PT_LOAD touches them
    read_errors: dict[int, str]  # in the dump's bitmap, but the read failed
    readable_excluded: list[int]  # not dumpable per the bitmap, yet readable
    vmcoreinfo_raw: bytes | None
    notes: list[str] = field(default_factory=list)

    @property
    def nr_dumpable(self) -> int:
        return int(self.dumpable_pfns.size)

    @property
    def ok(self) -> bool:
        return not (self.mismatched_pfns or self.outside_source or self.read_errors
                    or self.readable_excluded)

    def summary(self) -> str:
        return (
            f"{self.oracle}: {self.nr_dumpable} dumpable, mismatched {self.mismatched_pfns[:8]}, "
            f"outside source {self.outside_source[:8]}, read errors "
            f"{dict(list(self.read_errors.items())[:4])}, readable excluded "
            f"{self.readable_excluded[:8]}; {'; '.join(self.notes)}"
        )


# -- libkdumpfile (subprocess under /usr/bin/python3) ------------------------------------

_LIBKDUMPFILE_DRIVER = """
import json, sys
import kdumpfile
from kdumpfile.exceptions import NoDataException

def main(dump, source, probe_excluded, max_report):
    k = kdumpfile.kdumpfile(dump)
    attr = k.attr
    ps = attr["arch.page_size"]
    max_pfn = attr["max_pfn"]
    bm = attr["file.pagemap"]
    ranges, i = [], 0
    while i < max_pfn:
        try:
            s = bm.find_set(i)
        except Exception:  # no set bit left: libkdumpfile raises
            break
        if s >= max_pfn:
            break
        try:
            e = min(bm.find_clear(s), max_pfn)
        except Exception:
            e = max_pfn
        ranges.append([s, e])
        i = e
    src = SourceElf(source, ps)
    phys = kdumpfile.KDUMP_MACHPHYSADDR
    mismatched, outside, errors, nr_mismatched = [], [], {}, 0
    for s, e in ranges:
        for pfn in range(s, e):
            try:
                got = k.read(phys, pfn * ps, ps)
            except Exception as exc:
                if len(errors) < max_report:
                    errors[pfn] = "%s: %s" % (type(exc).__name__, exc)
                continue
            want = src.read_page(pfn)
            if want is None:
                outside.append(pfn)
            elif bytes(got) != want:
                nr_mismatched += 1
                if len(mismatched) < max_report:
                    mismatched.append(pfn)
    readable_excluded, probes = [], 0
    gaps = zip([0] + [e for _, e in ranges], [s for s, _ in ranges] + [max_pfn])
    for lo, hi in gaps:
        for pfn in range(lo, min(hi, lo + 4)):
            if probes >= probe_excluded:
                break
            probes += 1
            try:
                k.read(phys, pfn * ps, ps)
                readable_excluded.append(pfn)
            except NoDataException:
                pass
            except Exception:
                pass  # out of range etc.: not readable either
    vmcoreinfo = None
    try:
        vmcoreinfo = bytes(attr["linux.vmcoreinfo.raw"]).hex()
    except Exception:
        pass
    json.dump({"page_size": ps, "max_pfn": max_pfn, "ranges": ranges,
               "mismatched": mismatched, "nr_mismatched": nr_mismatched,
               "outside": outside, "errors": {str(p): m for p, m in errors.items()},
               "readable_excluded": readable_excluded, "vmcoreinfo": vmcoreinfo,
               "format": str(attr["file.format"])}, sys.stdout)

main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
"""


def _libkdumpfile_script() -> str:
    source = textwrap.dedent(inspect.getsource(SourceElf))
    return "import mmap, os, struct\n" + source + _LIBKDUMPFILE_DRIVER


def libkdumpfile_available() -> str | None:
    """None if usable, else the reason it is not."""
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} not found"
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import kdumpfile"], capture_output=True,
                           text=True, check=False)
    if probe.returncode:
        return f"{SYSTEM_PYTHON} cannot import kdumpfile (apt install python3-libkdumpfile)"
    return None


def libkdumpfile_check(
    dump: str | os.PathLike[str],
    source: str | os.PathLike[str],
    *,
    probe_excluded: int = 64,
    max_report: int = 100,
) -> OracleResult:
    """Read every dumpable page of ``dump`` with libkdumpfile; compare with ``source``."""
    reason = libkdumpfile_available()
    if reason:
        oracle_unavailable(reason)
    proc = subprocess.run(
        [SYSTEM_PYTHON, "-c", _libkdumpfile_script(), os.fspath(dump), os.fspath(source),
         str(probe_excluded), str(max_report)],
        capture_output=True, text=True, timeout=ORACLE_TIMEOUT_S, check=False,
        env={**os.environ, "PYTHONPATH": ""},
    )
    if proc.returncode:
        raise AssertionError(f"libkdumpfile could not read {dump}:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout)
    pfns = [np.arange(s, e, dtype=np.int64) for s, e in out["ranges"]]
    vmci = out["vmcoreinfo"]
    return OracleResult(
        oracle="libkdumpfile",
        dumpable_pfns=np.concatenate(pfns) if pfns else np.zeros(0, dtype=np.int64),
        mismatched_pfns=out["mismatched"],
        outside_source=out["outside"],
        read_errors={int(p): m for p, m in out["errors"].items()},
        readable_excluded=out["readable_excluded"],
        vmcoreinfo_raw=bytes.fromhex(vmci) if vmci is not None else None,
        notes=[f"format {out['format']}, max_pfn {out['max_pfn']}, "
               f"{out['nr_mismatched']} mismatched"],
    )


# -- drgn (in-process; PyPI drgn bundles its own libkdumpfile) -----------------------------


def _header_max_mapnr(dump: str | os.PathLike[str]) -> tuple[int, int]:
    """(block_size, max_mapnr) straight from the header bytes (no cdbdump code)."""
    with Path(dump).open("rb") as f:
        head = f.read(464)
        (block_size,) = struct.unpack_from("<i", head, 428)
        (max_mapnr,) = struct.unpack_from("<I", head, 440)
        (version,) = struct.unpack_from("<i", head, 8)
        if version >= 6:
            f.seek(block_size + 96)
            (max_mapnr,) = struct.unpack("<Q", f.read(8))
    return block_size, max_mapnr


def drgn_check(
    dump: str | os.PathLike[str],
    source: str | os.PathLike[str],
    *,
    pfns: Iterable[int] | None = None,
    max_report: int = 100,
    page_size: int | None = None,
) -> OracleResult:
    """Probe pfns through drgn (all below max_mapnr by default); compare with ``source``.

    ``page_size`` is given for dumps without a kdump header (ELF), with ``pfns``.
    """
    try:
        import drgn
    except ImportError:
        oracle_unavailable("drgn is not installed (pip install drgn)")
    prog = drgn.Program()
    prog.set_core_dump(os.fspath(dump))
    if page_size is None:
        page_size, max_mapnr = _header_max_mapnr(dump)
    else:
        max_mapnr = 0
    src = SourceElf(os.fspath(source), page_size)
    readable: list[int] = []
    mismatched: list[int] = []
    outside: list[int] = []
    candidates = range(max_mapnr) if pfns is None else pfns
    try:
        for pfn in candidates:
            try:
                got = prog.read(pfn * page_size, page_size, True)
            except drgn.FaultError:
                continue
            readable.append(pfn)
            want = src.read_page(pfn)
            if want is None:
                outside.append(pfn)
            elif got != want and len(mismatched) < max_report:
                mismatched.append(pfn)
    finally:
        src.close()
    vmcoreinfo: bytes | None
    try:
        vmcoreinfo = prog["VMCOREINFO"].string_()
    except (LookupError, drgn.FaultError, ValueError):
        vmcoreinfo = None
    return OracleResult(
        oracle="drgn",
        dumpable_pfns=np.array(readable, dtype=np.int64),
        mismatched_pfns=mismatched,
        outside_source=outside,
        read_errors={},
        readable_excluded=[],
        vmcoreinfo_raw=vmcoreinfo,
        notes=[f"drgn {drgn.__version__}"],
    )


# -- makedumpfile ---------------------------------------------------------------------------


def makedumpfile_codecs() -> set[str]:
    """The compression options (-c, -l, -p, -z) the installed makedumpfile supports."""
    if not Path(MAKEDUMPFILE).exists():
        return set()
    out = subprocess.run([MAKEDUMPFILE, "-v"], capture_output=True, text=True, check=False)
    text = out.stdout + out.stderr
    have = {"-c"}
    for name, opt in (("lzo", "-l"), ("snappy", "-p"), ("zstd", "-z")):
        if f"{name}\tenabled" in text or f"{name} enabled" in text:
            have.add(opt)
    return have


def run_makedumpfile(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    level: int = 31,
    codec_option: str = "-c",
    extra: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """``makedumpfile <codec> -d LEVEL SOURCE OUT`` (skips if the codec is not built in).

    With a kdump file as SOURCE this is a refilter, which reads every dumpable
    page of SOURCE (:func:`makedumpfile_refilter`).
    """
    if codec_option and codec_option not in makedumpfile_codecs():
        oracle_unavailable(f"makedumpfile lacks {codec_option}")
    cmd = [MAKEDUMPFILE, *([codec_option] if codec_option else []), "-d", str(level),
           *extra, os.fspath(source), os.fspath(out)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=ORACLE_TIMEOUT_S,
                          check=False)


makedumpfile_refilter = run_makedumpfile


def rearrange_flattened(flat: str | os.PathLike[str], out: str | os.PathLike[str]) -> None:
    """``makedumpfile -R OUT < FLAT``: a flattened (-F) stream back into a normal file."""
    if not Path(MAKEDUMPFILE).exists():
        oracle_unavailable("makedumpfile is not installed")
    with Path(flat).open("rb") as stream:
        proc = subprocess.run([MAKEDUMPFILE, "-R", os.fspath(out)], stdin=stream,
                              capture_output=True, text=True, timeout=ORACLE_TIMEOUT_S,
                              check=False)
    if proc.returncode:
        raise AssertionError(f"makedumpfile -R failed on {flat}: {proc.stderr[-2000:]}")


# -- crash (header dump without a vmlinux) ----------------------------------------------------

CRASH = shutil.which("crash") or "/usr/bin/crash"


def crash_header(dump: str | os.PathLike[str]) -> dict[str, str]:
    """``crash -d 1 --osrelease DUMP``: crash's own parse of the headers, as "field: value".

    The first occurrence of each field wins (disk_dump_header before kdump_sub_header);
    values keep crash's formatting, e.g. status "20 (DUMP_DH_COMPRESSED_ZSTD)".
    """
    if not Path(CRASH).exists():
        oracle_unavailable("crash is not installed (apt install crash)")
    proc = subprocess.run([CRASH, "-d", "1", "--osrelease", os.fspath(dump)],
                          capture_output=True, text=True, timeout=ORACLE_TIMEOUT_S,
                          check=False)
    fields: dict[str, str] = {}
    for line in (proc.stdout + proc.stderr).splitlines():
        key, sep, value = line.partition(":")
        key = key.strip()
        if sep and key and " " not in key and key not in fields:
            fields[key] = value.strip()
    if "total_valid_pages" not in fields:
        raise AssertionError(f"crash could not read {dump}:\n{proc.stdout[-2000:]}"
                             f"{proc.stderr[-2000:]}")
    return fields


# -- a minimal ELF vmcore writer (until tests/builders/ has ElfCoreBuilder) ------------------


def make_note(name: bytes, n_type: int, desc: bytes) -> bytes:
    """One ELF note with 4-byte padded name and descriptor."""
    namesz = len(name) + 1
    pad = lambda b: b + bytes(-len(b) % 4)  # noqa: E731
    return struct.pack("<III", namesz, len(desc), n_type) + pad(name + b"\0") + pad(desc)


def make_vmcoreinfo(extra: Sequence[str] = (), crashtime: int | None = 1_700_000_000) -> bytes:
    """A realistic 6.1 VMCOREINFO (tests/builders), plus ``extra`` lines."""
    try:
        from tests.builders.vmcoreinfo import make_vmcoreinfo as builder_vmcoreinfo
    except ImportError:  # builders not there (yet): the minimum drgn and libkdumpfile need
        lines = ["OSRELEASE=6.1.0-synthetic", "PAGESIZE=4096",
                 "SYMBOL(swapper_pg_dir)=ffffffff82a0a000", "SYMBOL(init_top_pgt)=ffffffff82a0a000",
                 "NUMBER(pgtable_l5_enabled)=0", "NUMBER(phys_base)=0", "KERNELOFFSET=0",
                 *([f"CRASHTIME={crashtime}"] if crashtime is not None else [])]
        return ("\n".join([*lines, *extra]) + "\n").encode()
    return builder_vmcoreinfo("6.1", crashtime=crashtime, extra_lines=extra)


def make_notes(vmcoreinfo: bytes | None, nr_cpus: int = 2) -> tuple[bytes, int | None]:
    """(PT_NOTE bytes with nr_cpus NT_PRSTATUS notes and VMCOREINFO, desc offset)."""
    notes = b"".join(make_note(b"CORE", 1, bytes(336)) for _ in range(nr_cpus))
    if vmcoreinfo is None:
        return notes, None
    desc_offset = len(notes) + 12 + 12  # Nhdr + "VMCOREINFO\0" padded to 12
    return notes + make_note(b"VMCOREINFO", 0, vmcoreinfo), desc_offset


@dataclass(frozen=True)
class ElfLoad:
    paddr: int
    data: bytes  # p_filesz bytes
    memsz: int | None = None  # default len(data); larger = zero-filled tail


def write_elf_vmcore(path: str | os.PathLike[str], loads: Sequence[ElfLoad], notes: bytes,
                     *, phoff: int = 64) -> None:
    """An ELF64 x86_64 ET_CORE file with the given PT_NOTE bytes and PT_LOADs.

    phoff 192 gives QEMU's layout (section headers at 64), 64 the kernel's
    /proc/vmcore layout (tests/builders ElfCoreBuilder).
    """
    try:
        from tests.builders.elfcore import ElfCoreBuilder
    except ImportError:
        _write_elf_minimal(path, loads, notes, phoff=phoff)
        return
    builder = ElfCoreBuilder("qemu" if phoff == 192 else "proc_vmcore")
    builder.notes_raw = notes
    for load in loads:
        memsz = len(load.data) if load.memsz is None else load.memsz
        builder.add_load(load.paddr, data=load.data, memsz=memsz, filesz=len(load.data),
                         vaddr=0xFFFF888000000000 + load.paddr)
    builder.write(path)


def _write_elf_minimal(path: str | os.PathLike[str], loads: Sequence[ElfLoad], notes: bytes,
                       *, phoff: int = 64) -> None:
    nr_phdrs = 1 + len(loads)
    data_start = phoff + 56 * nr_phdrs
    body = bytearray(notes)
    phdrs = [struct.pack("<IIQQQQQQ", 4, 0, data_start, 0, 0, len(notes), len(notes), 0)]
    for load in loads:
        offset = data_start + len(body)
        memsz = len(load.data) if load.memsz is None else load.memsz
        phdrs.append(struct.pack("<IIQQQQQQ", 1, 7, offset, 0xFFFF888000000000 + load.paddr,
                                 load.paddr, len(load.data), memsz, 0))
        body += load.data
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    ehdr = struct.pack("<16sHHIQQQIHHHHHH", ident, 4, 62, 1, 0, phoff, 0, 0, 64, 56,
                       nr_phdrs, 0, 0, 0)
    out = bytearray(ehdr) + bytes(phoff - 64) + b"".join(phdrs) + body
    Path(path).write_bytes(bytes(out))


def pfn_pattern_pages(pfns: Iterable[int], page_size: int = 4096) -> dict[int, bytes]:
    """Pages whose content encodes their pfn (wrong offsets show up as readable diffs)."""
    out = {}
    for pfn in pfns:
        words = np.arange(page_size // 8, dtype=np.uint64) ^ np.uint64(pfn * 0x9E3779B97F4A7C15
                                                                       % (1 << 64))
        out[pfn] = words.tobytes()
    return out



def make_utsname(release: str = "6.1.0-synthetic", machine: str = "x86_64") -> bytes:
    """struct new_utsname (6 x 65 bytes) that libkdumpfile's uts_looks_sane accepts."""
    fields = ["Linux", "synthetic-host", release, "#1 SMP PREEMPT_DYNAMIC", machine, "(none)"]
    return b"".join(f.encode().ljust(65, b"\0") for f in fields)


@dataclass
class KdumpInputs:
    """What write_kdump needs for one ELF vmcore (built with cdbdump's input side)."""

    meta: Any
    memory: Any
    bitmap1: Any  # present pages: every pfn a PT_LOAD touches, clipped to max_mapnr
    core: Any
    file: Any

    def close(self) -> None:
        self.file.close()


def kdump_inputs(elf_path: str | os.PathLike[str], *, dump_level: int = 31,
                 max_mapnr: int | None = None, phys_base: int = 0,
                 timestamp_sec: int = 1_700_000_000) -> KdumpInputs:
    from cdbdump.bitmap import Bitmap
    from cdbdump.fileio import MappedFile
    from cdbdump.memory.physical import ElfMemory
    from cdbdump.vmcore.elfcore import ElfCore
    from cdbdump.writers.kdump import KdumpMetadata

    file = MappedFile(elf_path)
    core = ElfCore.parse(file)
    memory = ElfMemory(file, core.loads, 4096)
    end_pfn = max((e for _, e in memory.present_pfn_ranges()), default=0)
    nr = end_pfn if max_mapnr is None else max_mapnr
    bitmap1 = Bitmap(nr)
    for start, end in memory.present_pfn_ranges():
        bitmap1.set_range(start, end)
    note = core.vmcoreinfo_note
    meta = KdumpMetadata(
        utsname=make_utsname(), timestamp_sec=timestamp_sec, page_size=4096, max_mapnr=nr,
        phys_base=phys_base, dump_level=dump_level, notes_raw=core.notes_raw,
        vmcoreinfo_desc_offset=core.vmcoreinfo_desc_offset,
        vmcoreinfo_size=note.desc_size if note is not None else 0, nr_cpus=core.nr_cpus,
    )
    return KdumpInputs(meta, memory, bitmap1, core, file)
