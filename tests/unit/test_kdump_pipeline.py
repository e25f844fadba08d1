"""The kdump writer's windows in flight: one read on the main thread while earlier ones
are compressed on the pool and the oldest is written on the I/O thread.

A run that stops early (a signal, or a window whose compression fails) keeps what is
on disk exact: the descriptors written are a prefix in pfn order, each pointing at
its page's data, the rest stay zero ("lost"), and nothing is written after the window
that failed although later ones were already read and compressed.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cdbdump.codecs import Codec
from cdbdump.errors import Interrupted, NotInDumpError, OutputError
from cdbdump.fileio import MappedFile
from cdbdump.vmcore.kdumpfile import KdumpFile
from cdbdump.writers import kdump as kdump_writer
from cdbdump.writers.compress import PageCompressor
from cdbdump.writers.kdump import write_kdump
from cdbdump.writers.sink import create_output
from tests.oracles import (
    ElfLoad,
    KdumpInputs,
    kdump_inputs,
    make_notes,
    make_vmcoreinfo,
    pfn_pattern_pages,
    write_elf_vmcore,
)

PS = 4096
FIRST_PFN = 16
NR_PAGES = 400
WINDOW = 16  # 25 windows: more than WINDOWS_IN_FLIGHT


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[dict[int, bytes], KdumpInputs]]:
    tmp = tmp_path_factory.mktemp("pipeline")
    pages = pfn_pattern_pages(range(FIRST_PFN, FIRST_PFN + NR_PAGES))
    for pfn in range(100, 140):  # zero pages: the shared descriptor with -d 1
        pages[pfn] = bytes(PS)
    notes, _ = make_notes(make_vmcoreinfo(), nr_cpus=1)
    path = tmp / "vmcore.elf"
    write_elf_vmcore(path, [ElfLoad(FIRST_PFN * PS, b"".join(
        pages[p] for p in range(FIRST_PFN, FIRST_PFN + NR_PAGES)))], notes, phoff=192)
    inputs = kdump_inputs(path, max_mapnr=FIRST_PFN + NR_PAGES + 8)
    yield pages, inputs
    inputs.close()


def _check_prefix(path: Path, pages: dict[int, bytes], nr_written: int) -> None:
    """The first nr_written dumpable pages read back; every later one is lost."""
    with MappedFile(path) as f:
        dump = KdumpFile.open(f)
        assert dump.is_incomplete
        for i, pfn in enumerate(sorted(pages)):
            if i < nr_written:
                assert dump.read_page(pfn) == pages[pfn], pfn
            else:
                with pytest.raises(NotInDumpError, match="lost"):
                    dump.read_page(pfn)


@pytest.mark.parametrize("exclude_zero", [False, True])
@pytest.mark.parametrize("codec", [Codec.LZO, Codec.ZLIB, Codec.NONE])
def test_a_signal_mid_run_keeps_an_exact_prefix(
    tmp_path: Path, source: tuple[dict[int, bytes], KdumpInputs], codec: Codec,
    exclude_zero: bool,
) -> None:
    pages, inputs = source
    stop_at = 10 * WINDOW  # a signal on the main thread after 10 windows were queued

    def progress(done: int, total: int) -> None:
        if done >= stop_at:
            raise Interrupted(signal.SIGTERM)

    path = tmp_path / "cut.kdump"
    with create_output(path, force=True) as out:
        result = write_kdump(out, inputs.meta, inputs.bitmap1, inputs.bitmap1.copy(),
                             inputs.memory, codec, exclude_zero, progress,
                             window_pages=WINDOW, threads=2, allow_incomplete=True)
    assert result.interrupted == signal.SIGTERM
    assert result.nr_pages_written + result.nr_pages_lost == NR_PAGES
    # the windows queued before the signal, less those still in flight
    in_flight = kdump_writer.WINDOWS_IN_FLIGHT * WINDOW
    assert stop_at - in_flight <= result.nr_pages_written <= stop_at
    assert result.nr_pages_written % WINDOW == 0
    _check_prefix(path, pages, result.nr_pages_written)


def test_a_failed_compression_stops_the_writes_after_its_window(
    tmp_path: Path, source: tuple[dict[int, bytes], KdumpInputs],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pages, inputs = source
    bad = pages[FIRST_PFN + 6 * WINDOW]  # the first page of the 7th window
    native_into = PageCompressor._native_into

    def failing(self: PageCompressor, flat: memoryview, index: object, lo: int,
                *rest: object) -> list[bytes | memoryview]:
        if bytes(flat[lo * PS : (lo + 1) * PS]) == bad:
            raise OutputError("lzo compression failed: injected")
        return native_into(self, flat, index, lo, *rest)  # type: ignore[arg-type]

    monkeypatch.setattr(PageCompressor, "_native_into", failing)
    path = tmp_path / "failed.kdump"
    with create_output(path, force=True) as out:
        with pytest.raises(OutputError, match="injected"):
            write_kdump(out, inputs.meta, inputs.bitmap1, inputs.bitmap1.copy(),
                        inputs.memory, Codec.LZO, False, window_pages=WINDOW, threads=2)
    _check_prefix(path, pages, 6 * WINDOW)


@pytest.mark.parametrize("sizes", [[], [0], [5], [3, 4, 0, 9], [8, 8], [1] * 20, [17, 2, 40]])
def test_windows_do_not_depend_on_the_bitmap_windows(sizes: list[int]) -> None:
    """_in_groups cuts the set pfns, whatever arrays they come in, at the same places."""
    from cdbdump.writers.kdump import _in_groups

    whole = np.arange(sum(sizes), dtype=np.int64) * 3
    parts = np.split(whole, np.cumsum(sizes)[:-1]) if sizes else []
    groups = list(_in_groups(iter(parts), 8))
    last = [whole.size % 8] if whole.size % 8 else []
    assert [g.size for g in groups] == [8] * (whole.size // 8) + last
    assert np.array_equal(np.concatenate(groups) if groups else whole, whole)
