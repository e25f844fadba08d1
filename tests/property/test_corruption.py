"""Damaged inputs: a dump or a typed CdbdumpError, never another exception.

Truncations and byte flips of a small synthetic vmcore's headers, notes,
VMCOREINFO text, page tables and mem_map must end in success (maybe degraded)
or in a CdbdumpError subclass, which the CLI turns into one line. And when a
dump is written, it must still open.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from cdbdump.errors import CdbdumpError
from cdbdump.fileio import MappedFile
from cdbdump.mm.levels import DumpLevel
from cdbdump.pipeline import DumpOptions, dump
from cdbdump.vmcore.kdumpfile import KdumpFile
from tests.builders import SyntheticKernel


def _run(vmcore: Path, out: Path, level: int, q: bool) -> None:
    if out.exists():
        out.unlink()
    try:
        dump(DumpOptions(vmcore=vmcore, dumpfile=out, dump_level=DumpLevel(level),
                         use_kernel_bitmap=q))
    except CdbdumpError:
        assert not out.exists() or out.stat().st_size > 0
        return
    with MappedFile(out) as f:
        KdumpFile.open(f)


def _vmcore(tiny_kernel: Callable[..., SyntheticKernel], tmp: Path) -> tuple[bytes, Path]:
    kernel = tiny_kernel("6.1", seed=2, ram_size=32 << 20, crash_dump_bitmap=31)
    pristine = tmp / "pristine.elf"
    if not pristine.exists():
        kernel.write(pristine)
    return pristine.read_bytes(), pristine


def _copy(src: Path, dst: Path, length: int) -> None:
    """In-kernel copy of the first ``length`` bytes (the pristine file is 37 MB)."""
    with src.open("rb") as fin, dst.open("wb") as fout:
        done = 0
        while done < length:
            n = os.copy_file_range(fin.fileno(), fout.fileno(), length - done)
            if n == 0:
                break
            done += n


@settings(max_examples=30)
@given(data=st.data())
def test_truncated_and_flipped_inputs(
    tiny_kernel: Callable[..., SyntheticKernel], data: st.DataObject
) -> None:
    tmp = Path(tempfile.gettempdir()) / f"cdbdump-corrupt-{os.getpid()}"
    tmp.mkdir(exist_ok=True)
    raw, pristine = _vmcore(tiny_kernel, tmp)
    vmcore = tmp / "bad.elf"
    kind = data.draw(st.sampled_from(["truncate", "flip-head", "flip-anywhere", "vmcoreinfo"]))
    length = len(raw)
    if kind == "truncate":
        length = data.draw(st.integers(0, len(raw) - 1))
    _copy(pristine, vmcore, length)
    flips: list[tuple[int, int]] = []
    if kind == "flip-head":
        for _ in range(data.draw(st.integers(1, 8))):
            pos = data.draw(st.integers(0, min(len(raw), 0x3000) - 1))
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
