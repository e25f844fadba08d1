"""-q: the RFC kernel bitmap is used when sound, and every refusal falls back with a reason."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cdbdump.bitmap import Bitmap
from cdbdump.codecs import Codec
from cdbdump.fileio import MappedFile
from cdbdump.formats.crash_dump_bitmap import CrashDumpBitmapInfo
from cdbdump.memory.physical import ElfMemory
from cdbdump.mm import crash_bitmap
from cdbdump.mm.crash_bitmap import KernelBitmap, apply_kernel_bitmap
from cdbdump.mm.levels import DumpLevel
from cdbdump.pipeline import DumpOptions, dump
from cdbdump.report import PathTaken
from cdbdump.vmcore.elfcore import LoadSegment
from cdbdump.vmcore.kdumpfile import KdumpFile
from tests.builders import SyntheticKernel

MakeVmcore = Callable[..., tuple[SyntheticKernel, Path]]


def _dump(vmcore: Path, out: Path, level: int, *, q: bool) -> tuple[Any, np.ndarray]:
    report = dump(
        DumpOptions(vmcore=vmcore, dumpfile=out, dump_level=DumpLevel(level), codec=Codec.ZSTD,
                    use_kernel_bitmap=q)
    )
    with MappedFile(out) as f:
        kdump = KdumpFile.open(f)
        bits = kdump.bitmap2.get_bools(0, kdump.max_mapnr).copy()
    return report, bits


@pytest.mark.parametrize("dialect", ["5.10", "6.1", "6.12", "7.1"])
def test_kernel_bitmap_is_used_and_matches_the_scan(
    tiny_vmcore: MakeVmcore, tmp_path: Path, dialect: str
) -> None:
    # a machine without makedumpfile's corner cases: there the kernel's view and the
    # mem_map scan agree page for page, so both paths must give the same dump
    kernel, vmcore = tiny_vmcore(dialect, seed=7, crash_dump_bitmap=31, catalog=False)
    q_report, q_bits = _dump(vmcore, tmp_path / "q.kdump", 31, q=True)
    l_report, l_bits = _dump(vmcore, tmp_path / "legacy.kdump", 31, q=False)
    assert q_report.path_taken is PathTaken.BITMAP
    assert l_report.path_taken is PathTaken.LEGACY
    assert q_report.fallback_reason is None
    expected = kernel.first_bitmap() & kernel.expected_kernel_bitmap()[: kernel.max_mapnr]
    assert np.array_equal(q_bits, expected)
    assert np.array_equal(q_bits, l_bits)
    assert (tmp_path / "q.kdump").read_bytes() == (tmp_path / "legacy.kdump").read_bytes()
    # the report's counters come from the struct the kernel filled
    values = kernel.crash_dump_bitmap_info_values()
    assert q_report.counts.free == values["free_pages"]
    assert q_report.counts.user == values["user_pages"]
    assert q_report.counts.zero == l_report.counts.zero > 0


def _break(**fields: int) -> dict[str, Any]:
    return {"crash_dump_bitmap": 31, "crash_dump_bitmap_info": fields}


@pytest.mark.parametrize(
    ("kwargs", "level", "reason"),
    [
        ({}, 31, "VMCOREINFO has no SYMBOL(crash_dump_bitmap_info)"),
        (_break(version=2), 31, "has version 2, expected 1"),
        (_break(bitmap=0), 31, "is empty (bitmap=0x0"),
        (_break(bitmap_size=0), 31, "is empty"),
        (_break(bitmap_size=16), 31, "bitmap_size 16 bytes covers 128 frames"),
        (_break(bitmap=0x7FFF_0000_0000), 31, "is not in the dump"),
        (_break(free_pages=1 << 60), 31, "free_pages=1152921504606846976 exceeds max_mapnr"),
        ({"crash_dump_bitmap": 31}, 1, "the kernel excluded"),
        (
            {
                "crash_dump_bitmap": 31,
                "vmcoreinfo_overrides": {"SYMBOL(crash_dump_bitmap_info)": 0xFFFF_8880_0000_1000},
            },
            31,
            "is not a kernel-image address",
        ),
        (
            {
                "crash_dump_bitmap": 31,
                "vmcoreinfo_overrides": {"SYMBOL(crash_dump_bitmap_info)": 0xFFFF_FFFF_BF00_0000},
            },
            31,
            "is not in the dump",
        ),
    ],
    ids=[
        "no-symbol", "version", "null-bitmap", "zero-size", "too-short", "bitmap-outside",
        "implausible-counter", "level-mismatch", "not-kernel-image", "struct-outside",
    ],
)
def test_every_refusal_falls_back_to_the_scan(
    tiny_vmcore: MakeVmcore, tmp_path: Path, kwargs: dict[str, Any], level: int, reason: str
) -> None:
    kernel, vmcore = tiny_vmcore("6.1", seed=11, **kwargs)
    report, bits = _dump(vmcore, tmp_path / "q.kdump", level, q=True)
    assert report.path_taken is PathTaken.FALLBACK
    assert report.fallback_reason is not None
    assert reason in report.fallback_reason
    assert "\n" not in report.fallback_reason
    # the fallback is the legacy scan: the dump is makedumpfile's at that level
    assert np.array_equal(bits, kernel.expected_dumpable(level))
    assert report.counts.free == kernel.expected_counts(level).free


def test_without_q_the_kernel_bitmap_is_ignored(tiny_vmcore: MakeVmcore, tmp_path: Path) -> None:
    kernel, vmcore = tiny_vmcore("6.1", seed=11, crash_dump_bitmap=31)
    report, bits = _dump(vmcore, tmp_path / "d.kdump", 31, q=False)
    assert report.path_taken is PathTaken.LEGACY
    assert np.array_equal(bits, kernel.expected_dumpable(31))


def test_refiltering_a_kdump_input_uses_its_kernel_bitmap(
    tiny_vmcore: MakeVmcore, tmp_path: Path
) -> None:
    # the -d 0 dump still holds the kernel's bitmap pages, so -q on it takes the
    # kernel's bitmap and gives the very bytes of -q on the ELF vmcore
    _kernel, vmcore = tiny_vmcore("6.1", seed=7, crash_dump_bitmap=31, catalog=False)
    _dump(vmcore, tmp_path / "d0.kdump", 0, q=False)
    direct, _ = _dump(vmcore, tmp_path / "q.kdump", 31, q=True)
    refilter, _ = _dump(tmp_path / "d0.kdump", tmp_path / "rq.kdump", 31, q=True)
    assert direct.path_taken is refilter.path_taken is PathTaken.BITMAP
    assert (tmp_path / "rq.kdump").read_bytes() == (tmp_path / "q.kdump").read_bytes()


@pytest.mark.parametrize("dialect", ["6.1", "6.12"])
def test_q_follows_the_kernel_where_it_differs_from_the_scan(
    tiny_vmcore: MakeVmcore, tmp_path: Path, dialect: str
) -> None:
    # The catalog chunk has compound heads whose order makedumpfile cannot trust
    # (corrupt order byte, unaligned heads): the scan keeps their tails, the kernel,
    # which knows the true size, clears them. -q must take the kernel's word.
    kernel, vmcore = tiny_vmcore(dialect, seed=11, crash_dump_bitmap=31, catalog=True)
    out = tmp_path / "q.kdump"
    report, bits = _dump(vmcore, out, 31, q=True)
    assert report.path_taken is PathTaken.BITMAP, report.fallback_reason
    want = kernel.expected_dumpable_q()
    assert np.array_equal(bits, want)
    differ = np.flatnonzero(want != kernel.expected_dumpable(31))
    assert differ.size > 0, "the catalog machine should make the two paths differ"
    kernel_bits = kernel.expected_kernel_bitmap()
    assert np.array_equal(bits[differ], kernel_bits[differ])  # the kernel decides them
    assert not bits[differ].any()  # here: tails only the kernel knows about
    expected = kernel.expected_counts_q(31)
    for name in ("cache", "cache_private", "user", "free", "hwpoison", "offline", "zero"):
        assert getattr(report.counts, name) == getattr(expected, name), name
    # and every kept page holds the machine's bytes
    with MappedFile(out) as f:
        kdump = KdumpFile.open(f)
        for pfn in np.flatnonzero(bits)[:: max(1, int(bits.sum()) // 300)].tolist():
            assert kdump.read_page(pfn) == kernel.page_bytes(pfn), pfn


# -- the windowed AND ------------------------------------------------------------------------


def _and_over_file(tmp_path: Path, nr_bits: int, window_bytes: int | None) -> tuple[Any, Any]:
    """apply_kernel_bitmap over a kernel bitmap stored at paddr 1 GiB of a plain file."""
    rng = np.random.default_rng(nr_bits)
    nbytes = (nr_bits + 7) // 8
    kernel_bytes = rng.integers(0, 256, nbytes, dtype=np.uint8)
    path = tmp_path / "bitmap.core"
    path.write_bytes(kernel_bytes.tobytes())
    mine = rng.integers(0, 256, nbytes, dtype=np.uint8)
    want = mine & kernel_bytes
    if nr_bits & 7:
        want[-1] &= (1 << (nr_bits & 7)) - 1
    bitmap2 = Bitmap(nr_bits, mine.copy())
    paddr = 1 << 30
    info = CrashDumpBitmapInfo(1, paddr, nbytes, 0, 0, 0, 0, 0)
    with MappedFile(path) as f:
        phys = ElfMemory(f, [LoadSegment(0, 0, 0, paddr, nbytes, nbytes, 0, 0)], 4096)
        kernel = KernelBitmap(0, 0, info)
        apply_kernel_bitmap(phys, kernel, bitmap2, window_bytes=window_bytes)
    return bitmap2.bits, want


def test_kernel_bitmap_and_over_several_default_windows(tmp_path: Path) -> None:
    # 32 Mi frames per 4 MiB window: 2**25 + 2**24 + 5 frames take two windows and a tail
    # byte with 5 valid bits
    nr_bits = (1 << 25) + (1 << 24) + 5
    assert nr_bits > 8 * crash_bitmap._WINDOW_BYTES
    got, want = _and_over_file(tmp_path, nr_bits, None)
    assert np.array_equal(got, want)


@pytest.mark.parametrize("window_bytes", [1, 3, 4096, 4099])
def test_kernel_bitmap_and_window_size_does_not_matter(tmp_path: Path,
                                                       window_bytes: int) -> None:
    got, want = _and_over_file(tmp_path, 100_003, window_bytes)
    assert np.array_equal(got, want)


def test_q_dump_is_the_same_for_every_and_window(
    tiny_vmcore: MakeVmcore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kernel, vmcore = tiny_vmcore("6.1", seed=11, crash_dump_bitmap=31, catalog=True)
    files = []
    for window_bytes in (1, 7, 4096, crash_bitmap._WINDOW_BYTES):
        monkeypatch.setattr(crash_bitmap, "_WINDOW_BYTES", window_bytes)
        out = tmp_path / f"w{window_bytes}.kdump"
        report, bits = _dump(vmcore, out, 31, q=True)
        assert report.path_taken is PathTaken.BITMAP
        assert np.array_equal(bits, kernel.expected_dumpable_q())
        files.append(out.read_bytes())
    assert all(f == files[0] for f in files)


def test_mem_map_page_ranges_merges_scattered_frames() -> None:
    """Scattered, overlapping, touching and unaligned runs: the pfn ranges are exactly
    the pages the runs touch (a set of pfns built one by one)."""
    rng = np.random.default_rng(7)
    page = 4096
    table: dict[tuple[int, int], list[tuple[int, int]]] = {}
    mem_map = [(0, 4096, 0xFFFFEA0000000000), (8192, 9000, 0xFFFFEA0000000000 + 8192 * 64),
               (4096, 4200, 0xFFFFEA0000000000 + 4096 * 64)]  # adjacent to the first: merged
    wanted: set[int] = set()
    for start, end, vaddr in [(0, 4200, 0xFFFFEA0000000000), mem_map[1]]:
        runs = []
        for _ in range(int(rng.integers(1, 60))):
            paddr = int(rng.integers(0, 1 << 24)) * (page if rng.random() < 0.7 else 8)
            size = int(rng.integers(1, 9)) * (2 << 20 if rng.random() < 0.5 else 100)
            runs.append((paddr, size))
            wanted.update(range(paddr // page, -(-(paddr + size) // page)))
        table[(vaddr, vaddr + (end - start) * 64)] = runs

    def run_arrays(vstart: int, vend: int) -> tuple[Any, Any, Any]:
        runs = table[(vstart, vend)]
        return (np.zeros(len(runs), dtype=np.uint64),
                np.array([p for p, _ in runs], dtype=np.int64),
                np.array([s for _, s in runs], dtype=np.int64))

    got = crash_bitmap.mem_map_page_ranges(run_arrays, mem_map, 64, page)
    assert all(lo < hi for lo, hi in got)
    assert all(a[1] < b[0] for a, b in itertools.pairwise(got))  # sorted, disjoint
    assert {pfn for lo, hi in got for pfn in range(lo, hi)} == wanted
    assert crash_bitmap.mem_map_page_ranges(run_arrays, [], 64, page) == []
