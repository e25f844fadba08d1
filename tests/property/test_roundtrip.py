"""Round trip: random physical image + random dumpable subset -> write -> read back.

The expected page contents come from tests.oracles.SourceElf, a reader of the
source ELF that shares no code with cdbdump.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdbdump.bitmap import Bitmap
from cdbdump.codecs import Codec
from cdbdump.errors import NotInDumpError
from cdbdump.fileio import MappedFile
from cdbdump.vmcore.kdumpfile import KdumpFile
from cdbdump.writers.kdump import write_kdump
from cdbdump.writers.sink import create_output
from tests.oracles import (
    ElfLoad,
    SourceElf,
    kdump_inputs,
    make_notes,
    make_vmcoreinfo,
    write_elf_vmcore,
)

PS = 4096
KINDS = ("zero", "pattern", "random", "byte", "sparse")


def _page(kind: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    if kind == "zero":
        return bytes(PS)
    if kind == "pattern":
        return (np.arange(PS // 8, dtype=np.uint64) * np.uint64(seed + 1)).tobytes()
    if kind == "random":
        return rng.integers(0, 256, PS, dtype=np.uint8).tobytes()
    if kind == "byte":
        return bytes([seed & 0xFF]) * PS
    page = bytearray(PS)  # mostly zero with a few set bytes anywhere
    for pos in rng.integers(0, PS, 3).tolist():
        page[pos] = 1 + seed % 255
    return bytes(page)


@st.composite
def images(draw: st.DrawFn) -> tuple[list[ElfLoad], int]:
    """2-3 disjoint PT_LOADs, some ending mid-page or with a zero-filled p_memsz tail."""
    loads = []
    pfn = draw(st.integers(0, 8))
    for _ in range(draw(st.integers(1, 3))):
        nr = draw(st.integers(1, 12))
        kinds = draw(st.lists(st.sampled_from(KINDS), min_size=nr, max_size=nr))
        data = b"".join(_page(k, pfn * 31 + i) for i, k in enumerate(kinds))
        cut = draw(st.sampled_from([0, 0, 100, PS - 8]))  # bytes missing from the last page
        if cut:
            data = data[:-cut]
        extra = draw(st.sampled_from([0, 0, 2 * PS]))  # p_memsz beyond p_filesz
        loads.append(ElfLoad(pfn * PS, data, memsz=len(data) + extra))
        pfn += -(-(len(data) + extra) // PS) + draw(st.integers(0, 5))
    return loads, pfn + draw(st.integers(0, 3))


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(image=images(), codec=st.sampled_from(list(Codec)), exclude_zero=st.booleans(),
       window=st.integers(1, 9), keep_seed=st.integers(0, 2**32 - 1))
def test_write_then_read_gives_the_source_pages(
    image: tuple[list[ElfLoad], int], codec: Codec, exclude_zero: bool, window: int,
    keep_seed: int,
) -> None:
    loads, max_mapnr = image
    with tempfile.TemporaryDirectory() as tmp:
        elf = Path(tmp) / "v.elf"
        notes, _ = make_notes(make_vmcoreinfo())
        write_elf_vmcore(elf, loads, notes)
        inputs = kdump_inputs(elf, max_mapnr=max_mapnr, dump_level=1 if exclude_zero else 0)
        try:
            present = inputs.bitmap1.get_bools(0, max_mapnr)
            keep = np.random.default_rng(keep_seed).random(max_mapnr) < 0.7
            bitmap2 = Bitmap(max_mapnr)
            bitmap2.put_bools(0, present & keep)
            out_path = Path(tmp) / "d.kdump"
            with create_output(out_path) as out:
                result = write_kdump(out, inputs.meta, inputs.bitmap1, bitmap2, inputs.memory,
                                     codec, exclude_zero, window_pages=window, threads=1)
        finally:
            inputs.close()
        source = SourceElf(elf)
        try:
            with MappedFile(out_path) as f:
                dump = KdumpFile.open(f)
                assert dump.nr_dumpable == int((present & keep).sum())
                assert result.nr_pages_written == dump.nr_dumpable
                nr_zero = 0
                for pfn in range(max_mapnr):
                    want = source.read_page(pfn)
                    if present[pfn] and keep[pfn]:
                        assert want is not None
                        assert dump.read_page(pfn) == want, pfn
                        nr_zero += want == bytes(PS)
                    else:
                        try:
                            dump.read_page(pfn)
                        except NotInDumpError:
                            pass
                        else:
                            raise AssertionError(f"pfn {pfn:#x} is readable but not dumpable")
                assert result.nr_zero_pages == (nr_zero if exclude_zero else 0)
                assert dump.codec is codec
        finally:
            source.close()
