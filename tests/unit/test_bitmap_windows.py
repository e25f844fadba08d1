"""Bitmaps built in their place in the output file, walked in windows: the same
bits as in memory, the same dump bytes whatever the window, and a process that
holds a window of them, not 2 x max_mapnr bits (issue 9, memory)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdbdump import pipeline
from cdbdump.bitmap import Bitmap
from cdbdump.codecs import Codec
from cdbdump.formats.kdump import bitmap_bytes
from cdbdump.mm.levels import DumpLevel
from cdbdump.pipeline import DumpOptions, dump
from tests.builders.elfcore import ElfCoreBuilder
from tests.builders.vmcoreinfo import make_vmcoreinfo

GiB = 1 << 30
TIB = 1 << 40
PS = 4096


@settings(max_examples=40, deadline=None)
@given(
    nr_bits=st.integers(1, 5000),
    ops=st.lists(st.tuples(st.booleans(), st.integers(0, 5100), st.integers(0, 5100)),
                 max_size=12),
    skew=st.integers(0, 3 * PS),
)
def test_in_file_bitmap_matches_memory(tmp_path_factory: pytest.TempPathFactory, nr_bits: int,
                                       ops: list[tuple[bool, int, int]], skew: int) -> None:
    path = tmp_path_factory.mktemp("bm") / "file"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.posix_fallocate(fd, skew, (nr_bits + 7) // 8)
        in_file = Bitmap.in_file(fd, skew, nr_bits)
        mem = Bitmap(nr_bits)
        for setting, a, b in ops:
            lo, hi = min(a, b), max(a, b)
            for bm in (in_file, mem):
                (bm.set_range if setting else bm.clear_range)(lo, hi)
            in_file.release()  # the bits survive the pages leaving the mapping
        assert in_file.count() == mem.count()
        assert in_file.count(3, nr_bits - 2) == mem.count(3, nr_bits - 2)
        got = [p.tolist() for p in in_file.iter_set_pfns(window=64)]
        assert got == [p.tolist() for p in mem.iter_set_pfns(window=64)]
        other = Bitmap(nr_bits)
        other.set_range(nr_bits // 3, nr_bits)
        in_file.intersect(other)
        mem.intersect(other)
        # what a reader of the file sees: pread, not the mapping
        on_disk = os.pread(fd, (nr_bits + 7) // 8, skew)
        assert on_disk == mem.bits.tobytes()
        in_file.assign(other)
        assert os.pread(fd, (nr_bits + 7) // 8, skew) == other.bits.tobytes()
    finally:
        os.close(fd)


def _tera_machine(path: Path) -> int:
    """A sparse ELF vmcore whose PT_LOADs end at 1 TiB (max_mapnr 2^28, bitmaps of
    32 MiB each) but hold 2 GiB + 16 MiB of frames, a few of them non-zero."""
    b = ElfCoreBuilder()
    b.add_vmcoreinfo(make_vmcoreinfo("6.1"))
    b.add_load(0, data=None, memsz=2 * GiB, filesz=2 * GiB)  # a hole: zero pages
    top = bytearray(16 << 20)
    for i in range(0, len(top), 97 * PS):  # ~40 pages of data
        top[i : i + PS] = bytes([i // PS & 0xFF or 1]) * PS
    b.add_load(TIB - len(top), data=bytes(top))
    b.write(path)
    return TIB // PS


def _peak_rss_kib(args: list[str], stdout: Path | None = None) -> int:
    """Peak RSS (anonymous and mapped) of one cdbdump run, from a fresh small parent;
    its stdout goes to ``stdout`` when given (-F)."""
    probe = (
        "import resource, subprocess, sys;"
        "out = open(sys.argv[1], 'wb') if sys.argv[1] else None;"
        "r = subprocess.run(sys.argv[2:], stdout=out);"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss if r.returncode == 0"
        " else -r.returncode)"
    )
    proc = subprocess.run([sys.executable, "-c", probe, str(stdout or ""), sys.executable, "-m",
                           "cdbdump", *args],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout.split()[-1])


def test_terabyte_bitmaps_stay_out_of_memory(tmp_path: Path) -> None:
    vmcore = tmp_path / "tera.vmcore"
    max_mapnr = _tera_machine(vmcore)
    assert bitmap_bytes(max_mapnr, PS) == 32 << 20
    outputs = []
    for window in (None, "1", "300"):  # KiB of bitmap per window (--cyclic-buffer)
        out = tmp_path / f"out-{window}"
        args = ["-l", "-d", "1", "--message-level", "0", str(vmcore), str(out)]
        if window is not None:
            args[:0] = ["--cyclic-buffer", window]
        rss_kib = _peak_rss_kib(args)
        assert 0 < rss_kib <= 96 << 10, f"peak RSS {rss_kib >> 10} MiB, --cyclic-buffer {window}"
        outputs.append(out.read_bytes())
    assert all(o == outputs[0] for o in outputs[1:])


def test_bitmaps_in_memory_write_the_same_file(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    vmcore = tmp_path / "tera.vmcore"
    _tera_machine(vmcore)
    in_file, in_memory = tmp_path / "in-file", tmp_path / "in-memory"
    report = dump(DumpOptions(vmcore, in_file, DumpLevel(1), Codec.LZO))
    # the 2nd bitmap marks the frames of both PT_LOADs (zero ones too: -d 1 keeps their bit)
    assert report.dumpable_pages == (2 * GiB + (16 << 20)) // PS
    monkeypatch.setattr(pipeline, "bitmaps_in_output", lambda options, image: None)
    dump(DumpOptions(vmcore, in_memory, DumpLevel(1), Codec.LZO))
    assert in_file.read_bytes() == in_memory.read_bytes()


@pytest.mark.parametrize("mode", ["flattened", "elf", "split"])
def test_terabyte_bitmaps_bounded_in_every_output_mode(tmp_path: Path, mode: str) -> None:
    """-F, -E and --split hold a window of the bitmaps too (a file-backed temporary or
    the output), and write the same bytes whatever --cyclic-buffer is."""
    vmcore = tmp_path / "tera.vmcore"
    _tera_machine(vmcore)
    outputs: list[list[bytes]] = []
    for window in (None, "1", "300"):
        names = [tmp_path / f"{mode}-{window}-{i}" for i in range(2 if mode == "split" else 1)]
        args = ["-d", "31", "--message-level", "0", *([] if mode == "elf" else ["-l"])]
        if window is not None:
            args += ["--cyclic-buffer", window]
        if mode == "flattened":
            args += ["-F", str(vmcore)]
        elif mode == "elf":
            args += ["-E", str(vmcore), str(names[0])]
        else:
            args += ["--split", str(vmcore), *map(str, names)]
        rss_kib = _peak_rss_kib(args, stdout=names[0] if mode == "flattened" else None)
        assert 0 < rss_kib <= 96 << 10, f"{mode}: peak RSS {rss_kib >> 10} MiB, window {window}"
        outputs.append([p.read_bytes() for p in names])
        for p in names:
            p.unlink()
    assert all(o == outputs[0] for o in outputs[1:])
    assert len(outputs[0][0]) > 16 << 10  # pages were written, not just headers
