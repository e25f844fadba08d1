"""Streams and formats on a real kernel vmcore, against Debian's makedumpfile 1.7.2.

* -F: cdbdump's flattened stream, rebuilt by makedumpfile -R, is the direct dump
  byte for byte (two codecs, two levels); makedumpfile's stream rebuilt by
  cdbdump -R is makedumpfile's direct dump.
* -E: cdbdump's ELF dump against makedumpfile -E; libkdumpfile and drgn read
  every kept page equal to the source; crash parses it.
* --split files equal makedumpfile's; --split / --reassemble, both ways round, equal
  the direct dumps.
* Debian kdump-tools' dump line run verbatim under dash.

makedumpfile reads the normalised copy (it ignores e_phoff), cdbdump QEMU's ELF.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.oracles import crash_header, drgn_check, libkdumpfile_check
from tests.real.conftest import cdbdump_cmd, cdbdump_env

pytestmark = pytest.mark.real

VMCORE = "debian12-6.1-1g"  # a QEMU dump of a kernel 1.7.2 classifies right
TIMEOUT_S = 600
PAGE = 4096


def _run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[bytes]:
    kw.setdefault("stdout", subprocess.PIPE)
    return subprocess.run(cmd, stderr=subprocess.PIPE, timeout=TIMEOUT_S, check=False, **kw)


def _ok(proc: subprocess.CompletedProcess[bytes], what: str) -> None:
    assert proc.returncode == 0, f"{what}: rc {proc.returncode}\n{proc.stderr[-3000:]!r}"


def _cdbdump(*args: str, **kw: Any) -> subprocess.CompletedProcess[bytes]:
    return _run([*cdbdump_cmd(), *args], env=cdbdump_env(), **kw)


def _pipe(left: list[str], right: list[str], env_left: dict[str, str] | None = None,
          env_right: dict[str, str] | None = None) -> tuple[int, int, bytes, bytes]:
    """left | right; returns both exit codes and both stderrs."""
    a = subprocess.Popen(left, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env_left)
    b = subprocess.Popen(right, stdin=a.stdout, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env_right)
    assert a.stdout is not None
    a.stdout.close()
    _, err_b = b.communicate(timeout=TIMEOUT_S)
    err_a = a.stderr.read() if a.stderr else b""
    a.wait(timeout=TIMEOUT_S)
    return a.returncode, b.returncode, err_a, err_b


def _same(a: Path, b: Path) -> None:
    assert a.stat().st_size == b.stat().st_size, f"{a}: {a.stat().st_size}, {b}: {b.stat().st_size}"
    with a.open("rb") as fa, b.open("rb") as fb:
        offset = 0
        while True:
            x, y = fa.read(1 << 22), fb.read(1 << 22)
            if x != y:
                i = next(k for k in range(min(len(x), len(y))) if x[k] != y[k])
                raise AssertionError(f"{a} and {b} differ at byte {offset + i:#x}")
            if not x:
                return
            offset += len(x)


@pytest.fixture(scope="module")
def vm(real_tools: None) -> Any:
    from tests.real.conftest import get_vmcore
    return get_vmcore(VMCORE)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Any:
    d = tmp_path_factory.mktemp("streams")
    yield d
    shutil.rmtree(d, ignore_errors=True)


# zlib at -d 1 costs ~1.5 min on the 2-core CI machine: zlib takes 23 and 31
@pytest.mark.parametrize(("codec", "level"), [("-l", 1), ("-l", 31), ("-c", 23), ("-c", 31)])
def test_our_stream_rebuilt_by_makedumpfile_is_the_direct_dump(vm: Any, work: Path, codec: str,
                                                               level: int) -> None:
    direct, rebuilt = work / "direct.kdump", work / "rebuilt.kdump"
    direct.unlink(missing_ok=True)
    rebuilt.unlink(missing_ok=True)
    _ok(_cdbdump(codec, "-d", str(level), str(vm.raw), str(direct)), "cdbdump")
    rc_a, rc_b, err_a, err_b = _pipe([*cdbdump_cmd(), "-F", codec, "-d", str(level), str(vm.raw)],
                                     ["makedumpfile", "-R", str(rebuilt)], env_left=cdbdump_env())
    assert (rc_a, rc_b) == (0, 0), (err_a[-2000:], err_b[-2000:])
    assert b"The dumpfile is saved to STDOUT." in err_a  # messages on stderr
    _same(direct, rebuilt)
    direct.unlink()
    rebuilt.unlink()


def test_makedumpfile_stream_rebuilt_by_us_is_its_direct_dump(vm: Any, work: Path) -> None:
    direct, rebuilt = work / "mdf.kdump", work / "mdf-rebuilt.kdump"
    for p in (direct, rebuilt):
        p.unlink(missing_ok=True)
    _ok(_run(["makedumpfile", "-l", "-d", "31", str(vm.norm), str(direct)]), "makedumpfile")
    rc_a, rc_b, err_a, err_b = _pipe(["makedumpfile", "-F", "-l", "-d", "31", str(vm.norm)],
                                     [*cdbdump_cmd(), "-R", str(rebuilt)],
                                     env_right=cdbdump_env())
    assert (rc_a, rc_b) == (0, 0), (err_a[-2000:], err_b[-2000:])
    _same(direct, rebuilt)
    # trailing junk after the end marker (a whole partition read by dd) is ignored
    stream = work / "mdf.flat"
    with stream.open("wb") as f:
        _ok(_run(["makedumpfile", "-F", "-l", "-d", "31", str(vm.norm)], stdout=f), "-F")
    with stream.open("ab") as f:
        f.write(os.urandom(1 << 16))
    again = work / "mdf-again.kdump"
    with stream.open("rb") as f:
        _ok(_cdbdump("-f", "-R", str(again), stdin=f), "cdbdump -R with junk")
    _same(direct, again)
    for p in (direct, rebuilt, stream, again):
        p.unlink()


def _phdrs(path: Path) -> list[tuple[int, ...]]:
    with path.open("rb") as f:
        head = f.read(64)
        phoff, = struct.unpack_from("<Q", head, 32)
        phnum, = struct.unpack_from("<H", head, 56)
        f.seek(phoff)
        table = f.read(56 * phnum)
    return [struct.unpack_from("<IIQQQQQQ", table, 56 * i) for i in range(phnum)]


@pytest.mark.parametrize("level", [0, 30])
def test_elf_dump_byte_identical_to_makedumpfile(vm: Any, work: Path, level: int) -> None:
    ours, ref = work / f"ours.d{level}.elf", work / f"ref.d{level}.elf"
    for p in (ours, ref):
        p.unlink(missing_ok=True)
    _ok(_cdbdump("-E", "-d", str(level), str(vm.raw), str(ours)), "cdbdump -E")
    _ok(_run(["makedumpfile", "-E", "-d", str(level), str(vm.norm), str(ref)]), "makedumpfile")
    _same(ours, ref)
    ours.unlink()
    ref.unlink()


def test_elf_dump_d31_against_makedumpfile_and_readers(vm: Any, work: Path) -> None:
    """-d 31: identical except where makedumpfile's zero test goes wrong above max_mapnr.

    QEMU dumps the BIOS ROM at 0xfffc0000 (64 pages), above the last mem_map
    section, so above max_mapnr. makedumpfile's ELF cycles do cover it, and its
    zero-page test there drops the ROM's last 29 pages although none of them is
    zero (1.7.2 and 1.7.6 alike); cdbdump keeps them (only the ROM's first 18
    pages are zero, and as a run shorter than 256 pages both keep those). Every
    other byte is the same, and the readers check the ROM data against the source.
    """
    ours, ref = work / "ours.d31.elf", work / "ref.d31.elf"
    for p in (ours, ref):
        p.unlink(missing_ok=True)
    _ok(_cdbdump("-E", "-d", "31", str(vm.raw), str(ours)), "cdbdump -E")
    _ok(_run(["makedumpfile", "-E", "-d", "31", str(vm.norm), str(ref)]), "makedumpfile")
    ph_ours, ph_ref = _phdrs(ours), _phdrs(ref)
    assert len(ph_ours) == len(ph_ref) > 2
    high = 1 << 30  # the guests have 1 GiB of RAM: max_mapnr ends there
    differ = [i for i, (a, b) in enumerate(zip(ph_ours, ph_ref, strict=True)) if a != b]
    assert all(ph_ours[i][4] >= high for i in differ), (differ, ph_ours, ph_ref)
    assert len(differ) <= 1
    # byte identity up to the first PT_LOAD above max_mapnr (the ROM, which is last)
    first_high = min((ph[2] for ph in ph_ours if ph[0] == 1 and ph[4] >= high),
                     default=ours.stat().st_size)
    with ours.open("rb") as a, ref.open("rb") as b:
        for start in range(0, first_high, 1 << 22):
            n = min(1 << 22, first_high - start)
            x, y = bytearray(a.read(n)), bytearray(b.read(n))
            for i in differ:  # the ROM's program header, compared above
                lo = 64 + 56 * i - start
                if 0 <= lo < n:
                    x[lo : lo + 56] = y[lo : lo + 56] = bytes(56)
            assert x == y, f"ELF dumps differ in [{start:#x}, {start + n:#x})"
    # readers: every kept page equals the source (the ROM included), excluded runs are holes
    lib = libkdumpfile_check(ours, vm.raw)
    assert lib.ok, lib.summary()
    assert lib.nr_dumpable > 20000
    pfns = lib.dumpable_pfns.tolist()
    dr = drgn_check(ours, vm.raw, pfns=pfns, page_size=PAGE)
    assert dr.ok and dr.nr_dumpable == len(pfns), dr.summary()
    header = crash_header_elf(ours)
    assert header == vm.vmcoreinfo["OSRELEASE"]
    ours.unlink()
    ref.unlink()


def crash_header_elf(dump: Path) -> str:
    """crash's parse of an ELF dump: the release it finds in the VMCOREINFO note."""
    proc = _run(["crash", "--osrelease", str(dump)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.decode().strip()


@pytest.mark.parametrize("nr_files", [2, 3])
def test_split_and_reassemble_both_ways(vm: Any, work: Path, nr_files: int) -> None:
    direct, mdirect = work / "split-direct.kdump", work / "split-mdirect.kdump"
    ours = [work / f"ours.{i}" for i in range(nr_files)]
    theirs = [work / f"theirs.{i}" for i in range(nr_files)]
    joined_by_mdf, joined_by_us = work / "joined-by-mdf.kdump", work / "joined-by-us.kdump"
    for p in (direct, mdirect, *ours, *theirs, joined_by_mdf, joined_by_us):
        p.unlink(missing_ok=True)
    _ok(_cdbdump("-l", "-d", "31", str(vm.raw), str(direct)), "cdbdump")
    _ok(_cdbdump("--split", "-l", "-d", "31", str(vm.raw), *map(str, ours)), "cdbdump --split")
    sizes = [p.stat().st_size for p in ours]
    assert all(s > 0 for s in sizes)
    _ok(_run(["makedumpfile", "--reassemble", *map(str, ours), str(joined_by_mdf)]),
        "makedumpfile --reassemble")
    _same(direct, joined_by_mdf)
    # crash reads the split set's first file (its headers and bitmaps)
    assert crash_header(ours[0])["split"].startswith("1")
    # the same split by makedumpfile: each file byte for byte (start/end pfn included)
    _ok(_run(["makedumpfile", "--split", "-l", "-d", "31", str(vm.norm),
              *map(str, theirs)]), "makedumpfile --split")
    for a, b in zip(ours, theirs, strict=True):
        _same(a, b)
        b.unlink()
    _ok(_run(["makedumpfile", "-l", "-d", "31", str(vm.norm), str(mdirect)]), "makedumpfile")
    _ok(_run(["makedumpfile", "--split", "--splitblock-size", "4096", "-l", "-d", "31",
              str(vm.norm), *map(str, theirs)]), "makedumpfile --split")
    _ok(_cdbdump("--reassemble", *map(str, theirs), str(joined_by_us)), "cdbdump --reassemble")
    _same(mdirect, joined_by_us)
    for p in (direct, mdirect, *ours, *theirs, joined_by_mdf, joined_by_us):
        p.unlink()


def test_split_files_equal_makedumpfile_1_7_6_zstd(vm: Any, work: Path,
                                                   makedumpfile_new: Path) -> None:
    ours = [work / f"zours.{i}" for i in range(3)]
    theirs = [work / f"ztheirs.{i}" for i in range(3)]
    for p in (*ours, *theirs):
        p.unlink(missing_ok=True)
    _ok(_cdbdump("--split", "-z", "-d", "31", str(vm.raw), *map(str, ours)), "cdbdump --split")
    _ok(_run([str(makedumpfile_new), "--split", "-z", "-d", "31", str(vm.norm),
              *map(str, theirs)]), "makedumpfile 1.7.6 --split")
    for a, b in zip(ours, theirs, strict=True):
        _same(a, b)
        a.unlink()
        b.unlink()


# Debian kdump-tools 1.8 (kdump-config, kdump_save_core): the dump line, with its
# defaulting of MAKEDUMP_ARGS (a -F is appended unless the arguments start with one:
# "-c -F -d 31" from the config becomes "-c -F -d 31 -F"). KDUMP_COMPRESSION unset
# makes compress() a cat; dash has no pipefail, so ERROR is compress's status.
DEBIAN_LINE = 'makedumpfile $MAKEDUMP_ARGS $vmcore_file | compress > "$KDUMP_CORETEMP"\n'


def _debian_script(work: Path, vmcore: str, out: Path) -> str:
    shim = work / "bin"
    shim.mkdir(exist_ok=True)
    tool = shim / "makedumpfile"
    tool.write_text("#!/bin/sh\nexec " + " ".join(cdbdump_cmd()) + ' "$@"\n')
    tool.chmod(0o755)
    return (f'PATH="{shim}:$PATH"\n'
            'compress() { case "$KDUMP_COMPRESSION" in gzip) gzip -c ;; *) cat ;; esac; }\n'
            'MAKEDUMP_ARGS="-c -F -d 31"\n'
            '[ "${MAKEDUMP_ARGS#-F*}" != "${MAKEDUMP_ARGS}" ] || '
            'MAKEDUMP_ARGS="${MAKEDUMP_ARGS} -F"\n'
            f'vmcore_file="{vmcore}"\n'
            f'KDUMP_CORETEMP="{out}"\n'
            + DEBIAN_LINE +
            'ERROR=$?\n'
            'echo "status $ERROR" >&2\n')


def test_debian_kdump_tools_line_under_dash(vm: Any, work: Path) -> None:
    dash = shutil.which("dash")
    if dash is None:
        pytest.fail("dash is not installed (apt-get install dash)")
    direct, incomplete, rebuilt = work / "deb.direct", work / "dump-incomplete", work / "deb.R"
    for p in (direct, incomplete, rebuilt):
        p.unlink(missing_ok=True)
    proc = _run([dash, "-c", _debian_script(work, str(vm.raw), incomplete)], env=cdbdump_env())
    _ok(proc, "dash")
    assert incomplete.stat().st_size > 0
    with incomplete.open("rb") as f:
        _ok(_cdbdump("-R", str(rebuilt), stdin=f), "cdbdump -R")
    _ok(_cdbdump("-c", "-d", "31", str(vm.raw), str(direct)), "cdbdump")
    _same(direct, rebuilt)
    # an unreadable input: the pipeline still "succeeds" under dash, but the file it
    # leaves is empty, and -R refuses it
    junk = work / "junk.vmcore"
    junk.write_bytes(os.urandom(1 << 16))
    for bad in (work / "no-such-vmcore", junk):
        incomplete.unlink()
        proc = _run([dash, "-c", _debian_script(work, str(bad), incomplete)], env=cdbdump_env())
        assert b"status 0" in proc.stderr  # what kdump-tools sees
        assert b"cdbdump: error: " in proc.stderr
        assert incomplete.stat().st_size == 0
        with incomplete.open("rb") as f:
            refused = _cdbdump("-R", str(work / "never"), stdin=f)
        assert refused.returncode == 1 and not (work / "never").exists()
    for p in (direct, incomplete, rebuilt):
        p.unlink(missing_ok=True)


def test_elf_dump_of_a_real_proc_vmcore(work: Path, real_tools: None) -> None:
    """/proc/vmcore through kexec: kexec's kernel-text PT_LOAD overlaps RAM (written
    twice, as makedumpfile does) and the e820 range 0x1000-0x9fbff ends mid-page.

    makedumpfile runs this machine in cyclic mode (max_mapnr is not a multiple of 4),
    where create_bitmap_from_memhole() leaves that partial last page out of the 1st
    bitmap; cdbdump follows it, so the files are byte-identical at -d 31 and at -d 30,
    where the page is not excluded by any other rule.
    """
    from tests.real.conftest import get_vmcore

    vm = get_vmcore("debian12-6.1-1g-kdump")
    ours, ref = work / "kdump-ours.elf", work / "kdump-ref.elf"
    for level in ("31", "30"):
        for p in (ours, ref):
            p.unlink(missing_ok=True)
        _ok(_cdbdump("-E", "-d", level, str(vm.raw), str(ours)), "cdbdump -E")
        _ok(_run(["makedumpfile", "-E", "-d", level, str(vm.norm), str(ref)]), "makedumpfile")
        _same(ours, ref)
    for p in (ours, ref):
        p.unlink()
