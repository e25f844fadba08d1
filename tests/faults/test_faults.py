"""Faults a capture kernel meets, injected for real: a disk that returns EIO, an
input that shrinks while it is read, a full output file system, termination
signals at known points, SIGKILL. After each: one line, the exit status that
says what happened, and any dump file left either complete or flagged
INCOMPLETE, opening in libkdumpfile with every page it claims byte-equal to
the input.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from cdbdump.fileio import MappedFile
from cdbdump.vmcore.kdumpfile import KdumpFile
from tests.builders import SyntheticKernel
from tests.faults.conftest import ROOT, FaultyMount
from tests.oracles import libkdumpfile_check

PAGE = 4096
Mount = Callable[..., FaultyMount]


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory) -> tuple[SyntheticKernel, Path]:
    # no PG_hwpoison: at -d 0 no struct page is read, so the writer is the only
    # reader of page data and a gate on page data fires inside the writer
    kernel = SyntheticKernel("6.1", seed=2, ram_size=64 << 20,
                             vmcoreinfo_drop=("NUMBER(PG_hwpoison)",))
    path = tmp_path_factory.mktemp("faults") / "vmcore"
    kernel.write(path)
    return kernel, path


def _loads(path: Path) -> list[tuple[int, int, int]]:
    """(paddr, filesz, file offset) of each PT_LOAD, read straight from the ELF header."""
    raw = path.read_bytes()[:0x10000]
    e_phoff, = struct.unpack_from("<Q", raw, 0x20)
    e_phnum, = struct.unpack_from("<H", raw, 0x38)
    out = []
    for i in range(e_phnum):
        p_type, _f, off, _v, paddr, filesz, _m, _a = struct.unpack_from(
            "<IIQQQQQQ", raw, e_phoff + 56 * i)
        if p_type == 1:
            out.append((paddr, filesz, off))
    return out


def _file_offset(path: Path, pfn: int) -> int:
    paddr = pfn * PAGE
    for seg_paddr, filesz, off in _loads(path):  # an overlap: the first in header order
        if seg_paddr <= paddr < seg_paddr + filesz:
            return off + paddr - seg_paddr
    raise AssertionError(f"pfn {pfn:#x} is in no PT_LOAD")


def _cdbdump(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cdbdump", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=timeout, check=False)


def _one_line(stderr: str) -> None:
    assert "Traceback" not in stderr
    assert len([ln for ln in stderr.splitlines() if ln.startswith("cdbdump: error:")]) == 1


def _check_partial(dump: Path, source: Path) -> tuple[KdumpFile, set[int]]:
    """The dump opens, and every page it claims is the source's; returns the lost pfns."""
    with MappedFile(dump) as f:
        kdump = KdumpFile.open(f)
        lost: set[int] = set()
        for pfns in kdump.iter_dumpable_pfns():
            descs = kdump.page_descs(pfns)
            lost.update(pfns[descs["offset"] == 0].tolist())
    seen = libkdumpfile_check(dump, source)
    assert seen.mismatched_pfns == [] and seen.outside_source == []
    assert set(seen.read_errors) <= lost  # only lost pages fail to read
    return kdump, lost


def _status(dump: Path) -> int:
    with dump.open("rb") as f:
        f.seek(424)  # signature 8, version 4, utsname 390, pad to 8, struct timeval 16
        return int.from_bytes(f.read(4), "little")


def _dumpable_data_pfns(kernel: SyntheticKernel, level: int) -> np.ndarray:
    keep = kernel.expected_dumpable(level) & ~kernel.expected_zero_pages(1)
    return np.flatnonzero(keep)


def test_eio_on_a_page_loses_that_page_only(machine: tuple[SyntheticKernel, Path],
                                            faulty_mount: Mount, tmp_path: Path) -> None:
    kernel, vmcore = machine
    pfns = _dumpable_data_pfns(kernel, 31)
    bad = int(pfns[pfns.size // 2])
    mount = faulty_mount(vmcore, "--eio", f"{_file_offset(vmcore, bad):#x}:{PAGE:#x}")
    out, rj = tmp_path / "out.kdump", tmp_path / "r.json"
    proc = _cdbdump("-d", "31", "--report-json", str(rj), str(mount.path), str(out))
    assert proc.returncode == 1, proc.stderr
    _one_line(proc.stderr)
    assert f"pfn {bad:#x}" in proc.stderr
    report = json.loads(rj.read_text())
    assert report["pages_unreadable"] == 1
    assert report["unreadable_pages"][0]["pfn"] == bad
    kdump, lost = _check_partial(out, vmcore)
    assert kdump.is_incomplete and lost == set()
    expected = kernel.expected_dumpable(31).copy()
    expected[bad] = False
    assert np.array_equal(kdump.bitmap2.get_bools(0, kdump.max_mapnr), expected)


def test_eio_on_struct_pages_keeps_their_frames(machine: tuple[SyntheticKernel, Path],
                                                faulty_mount: Mount, tmp_path: Path) -> None:
    kernel, vmcore = machine
    pfn = int(_dumpable_data_pfns(kernel, 31)[100])
    struct_paddr = kernel.vtop(kernel.struct_page_vaddr(pfn))
    struct_pfn = struct_paddr // PAGE
    mount = faulty_mount(vmcore, "--eio", f"{_file_offset(vmcore, struct_pfn):#x}:{PAGE:#x}")
    out = tmp_path / "out.kdump"
    proc = _cdbdump("-d", "31", str(mount.path), str(out))
    assert proc.returncode == 1, proc.stderr  # the struct page itself is lost
    _one_line(proc.stderr)
    kdump, _ = _check_partial(out, vmcore)
    got = kdump.bitmap2.get_bools(0, kdump.max_mapnr)
    # every frame that page of struct pages describes is kept (could not be classified)
    first = pfn - pfn % (PAGE // 64)
    described = np.arange(first, first + PAGE // 64)
    present = kernel.first_bitmap()[described]
    assert got[described][present].all()
    assert not got[struct_pfn]


def test_eio_in_a_kdump_input_loses_that_page_only(machine: tuple[SyntheticKernel, Path],
                                                  faulty_mount: Mount,
                                                  tmp_path: Path) -> None:
    # refiltering reads through KdumpMemory: the same pread errors, the same salvage
    kernel, vmcore = machine
    full = tmp_path / "full.kdump"
    proc = _cdbdump("-d", "0", str(vmcore), str(full))
    assert proc.returncode == 0, proc.stderr
    reference = tmp_path / "ref.kdump"
    proc = _cdbdump("-d", "31", str(full), str(reference))
    assert proc.returncode == 0, proc.stderr
    pfns = _dumpable_data_pfns(kernel, 31)
    bad = int(pfns[pfns.size // 2])
    with MappedFile(full) as f:
        desc = KdumpFile.open(f).page_descs(np.array([bad], dtype=np.int64))[0]
    assert int(desc["size"]) > 0
    mount = faulty_mount(full, "--eio", f"{int(desc['offset']):#x}:0x1")
    out, rj = tmp_path / "out.kdump", tmp_path / "r.json"
    proc = _cdbdump("-d", "31", "--report-json", str(rj), str(mount.path), str(out))
    assert proc.returncode == 1, proc.stderr
    _one_line(proc.stderr)
    assert f"pfn {bad:#x}" in proc.stderr
    report = json.loads(rj.read_text())
    assert report["pages_unreadable"] == 1
    assert report["unreadable_pages"][0]["pfn"] == bad
    kdump, lost = _check_partial(out, vmcore)
    assert kdump.is_incomplete and lost == set()
    with MappedFile(reference) as f:
        ref = KdumpFile.open(f)
        expected = ref.bitmap2.get_bools(0, ref.max_mapnr).copy()
    assert expected[bad]
    expected[bad] = False
    assert np.array_equal(kdump.bitmap2.get_bools(0, kdump.max_mapnr), expected)


def _elf_pages(path: Path) -> dict[int, int]:
    """pfn -> file offset of every whole page an ELF dump's PT_LOADs store."""
    pages: dict[int, int] = {}
    for paddr, filesz, off in _loads(path):
        first = -(-paddr // PAGE)
        for pfn in range(first, (paddr + filesz) // PAGE):
            pages.setdefault(pfn, off + pfn * PAGE - paddr)
    return pages


@pytest.mark.parametrize("level", [0, 31])
def test_eio_in_elf_output_excludes_that_page(machine: tuple[SyntheticKernel, Path],
                                              faulty_mount: Mount, tmp_path: Path,
                                              level: int) -> None:
    # -E plans every page's place before reading it: the pass that meets the bad page
    # is written again without it (at -d 31 the zero-page pass meets the error first)
    kernel, vmcore = machine
    pfns = _dumpable_data_pfns(kernel, 31)
    bad = int(pfns[pfns.size // 3])
    reference = tmp_path / "ref.elf"
    proc = _cdbdump("-E", "-d", str(level), str(vmcore), str(reference))
    assert proc.returncode == 0, proc.stderr
    mount = faulty_mount(vmcore, "--eio", f"{_file_offset(vmcore, bad):#x}:{PAGE:#x}")
    out, rj = tmp_path / "out.elf", tmp_path / "r.json"
    proc = _cdbdump("-E", "-d", str(level), "--report-json", str(rj), str(mount.path),
                    str(out))
    assert proc.returncode == 1, proc.stderr
    _one_line(proc.stderr)
    assert f"pfn {bad:#x}" in proc.stderr
    report = json.loads(rj.read_text())
    assert report["pages_unreadable"] == 1
    assert report["unreadable_pages"][0]["pfn"] == bad
    raw = out.read_bytes()
    e_flags, = struct.unpack_from("<I", raw, 0x30)
    assert e_flags & 1  # DUMP_ELF_INCOMPLETE
    ours, ref = _elf_pages(out), _elf_pages(reference)
    # excluded as -E excludes a page: left out, or zeros inside a run of fewer than
    # PFN_EXCLUDED excluded pages (makedumpfile write_elf_pages_cyclic)
    assert bad in ref and set(ours) - {bad} == set(ref) - {bad}
    assert bad not in ours or raw[ours[bad] : ours[bad] + PAGE] == bytes(PAGE)
    source = vmcore.read_bytes()
    ref_raw = reference.read_bytes()
    for pfn, off in ours.items():
        if pfn != bad:
            assert raw[off : off + PAGE] == ref_raw[ref[pfn] : ref[pfn] + PAGE], hex(pfn)
    for pfn in [p for p in ours if p != bad][:: max(1, len(ours) // 200)]:
        at = _file_offset(vmcore, pfn)
        assert raw[ours[pfn] : ours[pfn] + PAGE] == source[at : at + PAGE], hex(pfn)


def test_unreadable_elf_header_is_one_line(machine: tuple[SyntheticKernel, Path],
                                           faulty_mount: Mount, tmp_path: Path) -> None:
    _, vmcore = machine
    mount = faulty_mount(vmcore, "--eio", "0:0x1000")
    out = tmp_path / "out.kdump"
    proc = _cdbdump("-d", "31", str(mount.path), str(out))
    assert proc.returncode == 1
    _one_line(proc.stderr)
    assert not out.exists()


def test_input_truncated_while_read(machine: tuple[SyntheticKernel, Path],
                                    faulty_mount: Mount, tmp_path: Path) -> None:
    kernel, vmcore = machine
    pfns = _dumpable_data_pfns(kernel, 1)
    cut = _file_offset(vmcore, int(pfns[pfns.size * 3 // 4]))
    mount = faulty_mount(vmcore, "--shrink-at", f"{cut:#x}", "--shrink-to", f"{cut:#x}")
    out = tmp_path / "out.kdump"
    proc = _cdbdump("-d", "1", str(mount.path), str(out))
    assert proc.returncode == 1, proc.stderr
    _one_line(proc.stderr)
    assert "truncated while being read" in proc.stderr
    kdump, lost = _check_partial(out, vmcore)
    assert kdump.is_incomplete and lost == set()
    got = kdump.bitmap2.get_bools(0, kdump.max_mapnr)
    assert got.sum() < kernel.expected_dumpable(1).sum()


def test_enospc_on_a_small_tmpfs(machine: tuple[SyntheticKernel, Path],
                                 small_tmpfs: Callable[[int], Path], tmp_path: Path) -> None:
    _, vmcore = machine
    where = small_tmpfs(2 << 20)
    out = where / "out.kdump"
    proc = _cdbdump("-d", "0", "--no-compress", str(vmcore), str(out))
    assert proc.returncode == 1, proc.stderr
    _one_line(proc.stderr)
    assert "incomplete" in proc.stderr
    # read a copy: on the full tmpfs a reader's mmap fault on a hole gets SIGBUS
    saved = tmp_path / "saved.kdump"
    shutil.copyfile(out, saved)
    kdump, lost = _check_partial(saved, vmcore)
    assert kdump.is_incomplete and lost


def test_output_refusals_before_reading(machine: tuple[SyntheticKernel, Path],
                                        tmp_path: Path) -> None:
    _, vmcore = machine
    for target, why in ((tmp_path / "missing" / "out", "does not exist"),
                        (vmcore, "same file")):
        proc = _cdbdump("-d", "31", str(vmcore), str(target))
        assert proc.returncode == 1 and why in proc.stderr, proc.stderr
        _one_line(proc.stderr)
        assert "STEP" not in proc.stdout


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130),
                                                 (signal.SIGHUP, 129)])
def test_signal_while_writing_keeps_an_incomplete_dump(
    machine: tuple[SyntheticKernel, Path], faulty_mount: Mount, tmp_path: Path,
    signum: signal.Signals, status: int,
) -> None:
    kernel, vmcore = machine
    pfns = _dumpable_data_pfns(kernel, 0)
    gate = _file_offset(vmcore, int(pfns[pfns.size // 2]))
    mount = faulty_mount(vmcore, "--gate", f"{gate:#x}", "--gate-dir", str(tmp_path),
                         "--gate-min-size", "0x10000")
    out = tmp_path / "out.kdump"
    proc = subprocess.Popen([sys.executable, "-m", "cdbdump", "-d", "0", str(mount.path),
                             str(out)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for(tmp_path / "hit")
    proc.send_signal(signum)
    (tmp_path / "release").touch()
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == status, stderr
    _one_line(stderr)
    assert signal.Signals(signum).name in stderr
    kdump, lost = _check_partial(out, vmcore)
    assert kdump.is_incomplete and lost


def test_signal_before_writing_leaves_no_file(machine: tuple[SyntheticKernel, Path],
                                              faulty_mount: Mount, tmp_path: Path) -> None:
    _, vmcore = machine
    mount = faulty_mount(vmcore, "--gate", "0", "--gate-dir", str(tmp_path))
    out = tmp_path / "out.kdump"
    proc = subprocess.Popen([sys.executable, "-m", "cdbdump", "-d", "31", str(mount.path),
                             str(out)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for(tmp_path / "hit")
    proc.send_signal(signal.SIGTERM)
    (tmp_path / "release").touch()
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    _one_line(stderr)
    assert not out.exists()


def test_sigkill_while_writing_leaves_a_file_marked_incomplete(
    machine: tuple[SyntheticKernel, Path], faulty_mount: Mount, tmp_path: Path,
) -> None:
    kernel, vmcore = machine
    pfns = _dumpable_data_pfns(kernel, 0)
    gate = _file_offset(vmcore, int(pfns[pfns.size // 2]))
    mount = faulty_mount(vmcore, "--gate", f"{gate:#x}", "--gate-dir", str(tmp_path),
                         "--gate-min-size", "0x10000")
    out = tmp_path / "out.kdump"
    proc = subprocess.Popen([sys.executable, "-m", "cdbdump", "-d", "0", str(mount.path),
                             str(out)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _wait_for(tmp_path / "hit")
    time.sleep(0.2)  # the I/O thread finishes the window before the gate
    proc.kill()
    (tmp_path / "release").touch()  # a FUSE read in flight holds the kill until it returns
    proc.wait(timeout=60)
    assert _status(out) & 0x8  # DUMP_DH_COMPRESSED_INCOMPLETE
    kdump, lost = _check_partial(out, vmcore)
    assert kdump.is_incomplete and lost


def _wait_for(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)
    os.sync()
