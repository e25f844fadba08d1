"""Damaged inputs: a dump or a typed CdbdumpError, never another exception.

Truncations and byte flips of a small synthetic vmcore's headers, notes,
VMCOREINFO text, page tables, mem_section, struct pages and the kernel bitmap
(most flips land there; some anywhere) must end in success (maybe degraded)
or in a CdbdumpError subclass, which the CLI turns into one line. And when a
dump is written, it must still open.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import struct
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdbdump.errors import CdbdumpError
from cdbdump.fileio import MappedFile
from cdbdump.mm.levels import DumpLevel
from cdbdump.pipeline import DumpOptions, dump
from cdbdump.vmcore.kdumpfile import KdumpFile
from tests.builders import SyntheticKernel

# No honest dump of the 37 MB input comes near this; a damaged header can make the
# writer ask for many GB (seen: a 17 GB out.kdump). Past it writes fail with EFBIG,
# which cdbdump reports as a full output (IncompleteDumpError).
OUTPUT_LIMIT = 512 << 20


def _run(vmcore: Path, out: Path, level: int, q: bool) -> None:
    if out.exists():
        out.unlink()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (OUTPUT_LIMIT, hard))
    try:
        dump(DumpOptions(vmcore=vmcore, dumpfile=out, dump_level=DumpLevel(level),
                         use_kernel_bitmap=q))
    except CdbdumpError:
        assert not out.exists() or out.stat().st_size > 0
        return
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    with MappedFile(out) as f:
        KdumpFile.open(f)


PAGE = 4096
CHUNK = 512 * PAGE  # the builder's 2 MiB allocation unit


@pytest.fixture(scope="module")
def corrupt_dir() -> Iterator[Path]:
    """One directory for the module's files (a 37 MB pristine vmcore), removed after."""
    path = Path(tempfile.mkdtemp(prefix="cdbdump-corrupt-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _vmcore(tiny_kernel: Callable[..., SyntheticKernel], tmp: Path
            ) -> tuple[SyntheticKernel, bytes, Path]:
    kernel = tiny_kernel("6.1", seed=2, ram_size=32 << 20, crash_dump_bitmap=31)
    pristine = tmp / "pristine.elf"
    if not pristine.exists():
        kernel.write(pristine)
    return kernel, pristine.read_bytes(), pristine


def metadata_regions(kernel: SyntheticKernel, raw: bytes) -> list[tuple[int, int]]:
    """File-offset ranges [start, end) of what cdbdump reads besides page data: ELF
    header, program headers and notes (PRSTATUS, VMCOREINFO), page tables, the
    mem_section root, the struct pages, the kernel bitmap and its info struct.
    Located from the builder's own addresses and the ELF's program headers."""
    phoff, = struct.unpack_from("<Q", raw, 0x20)
    phnum, = struct.unpack_from("<H", raw, 0x38)
    loads = []
    for i in range(phnum):
        p_type, _, off, _, paddr, filesz = struct.unpack_from("<IIQQQQ", raw, phoff + 56 * i)
        if p_type == 1 and filesz:
            loads.append((paddr, paddr + filesz, off))
    assert loads, "no PT_LOAD in the pristine vmcore"

    def at(paddr: int, size: int) -> tuple[int, int]:
        for start, end, off in loads:
            if start <= paddr < end:
                return off + paddr - start, off + min(paddr + size, end) - start
        raise AssertionError(f"paddr {paddr:#x} is in no PT_LOAD")

    regions = [(0, min(off for _, _, off in loads))]
    regions += [at(table, PAGE) for table in sorted(kernel.pagetables.tables)]
    regions.append(at(kernel.mem_section_root_paddr, PAGE))
    regions += [at(chunk * CHUNK, CHUNK) for chunk in kernel.memmap_chunk.values()]
    regions.append(at(kernel.bitmap_paddr, kernel.bitmap_nbytes))
    info = kernel.vtop(kernel.symbols["crash_dump_bitmap_info"])
    assert info is not None
    regions.append(at(info, 64))
    return regions


def _copy(src: Path, dst: Path, length: int) -> None:
    """In-kernel copy of the first ``length`` bytes (the pristine file is 37 MB)."""
    with src.open("rb") as fin, dst.open("wb") as fout:
        done = 0
        while done < length:
            n = os.copy_file_range(fin.fileno(), fout.fileno(), length - done)
            if n == 0:
                break
            done += n


# Most damage goes where cdbdump looks (metadata); some anywhere, some truncation.
KINDS = ["truncate", "flip-head", "flip-metadata", "flip-metadata", "flip-metadata",
         "flip-metadata", "flip-anywhere", "vmcoreinfo"]


@settings(max_examples=30)
@given(data=st.data())
def test_truncated_and_flipped_inputs(
    tiny_kernel: Callable[..., SyntheticKernel], corrupt_dir: Path, data: st.DataObject
) -> None:
    tmp = corrupt_dir
    kernel, raw, pristine = _vmcore(tiny_kernel, tmp)
    vmcore = tmp / "bad.elf"
    kind = data.draw(st.sampled_from(KINDS))
    length = len(raw)
    if kind == "truncate":
        length = data.draw(st.integers(0, len(raw) - 1))
    _copy(pristine, vmcore, length)
    flips: list[tuple[int, int]] = []
    if kind == "flip-head":
        for _ in range(data.draw(st.integers(1, 8))):
            pos = data.draw(st.integers(0, min(len(raw), 0x3000) - 1))
            flips.append((pos, raw[pos] ^ data.draw(st.integers(1, 255))))
    elif kind == "flip-metadata":
        regions = metadata_regions(kernel, raw)
        for _ in range(data.draw(st.integers(1, 16))):
            start, end = data.draw(st.sampled_from(regions))
            pos = data.draw(st.integers(start, end - 1))
            flips.append((pos, raw[pos] ^ data.draw(st.integers(1, 255))))
    elif kind == "flip-anywhere":
        for _ in range(data.draw(st.integers(1, 64))):
            pos = data.draw(st.integers(0, len(raw) - 1))
            flips.append((pos, raw[pos] ^ data.draw(st.integers(1, 255))))
    elif kind == "vmcoreinfo":
        start = raw.find(b"OSRELEASE=")
        end = raw.find(b"\0", start)
        pos = data.draw(st.integers(start, end - 1))
        flips.append((pos, data.draw(st.sampled_from(list(b"0123456789abcdef=\n()xZ-")))))
    if flips:
        with vmcore.open("r+b") as f:
            for pos, value in flips:
                f.seek(pos)
                f.write(bytes([value]))
    level = data.draw(st.sampled_from([0, 1, 31]))
    _run(vmcore, tmp / "out.kdump", level, data.draw(st.booleans()))


def test_metadata_regions_are_metadata(tiny_kernel: Callable[..., SyntheticKernel],
                                       corrupt_dir: Path) -> None:
    kernel, raw, _ = _vmcore(tiny_kernel, corrupt_dir)
    regions = metadata_regions(kernel, raw)
    total = sum(end - start for start, end in regions)
    assert 0 < total < len(raw) // 4  # a small, targeted part of the file
    assert all(0 <= start < end <= len(raw) for start, end in regions)
    vmcoreinfo = raw.find(b"OSRELEASE=")
    assert any(start <= vmcoreinfo < end for start, end in regions)
    # a page-table page holds the builder's table, byte for byte
    table = sorted(kernel.pagetables.tables)[0]
    start, end = regions[1]
    assert raw[start:end] == kernel.pagetables.table_page(table)
