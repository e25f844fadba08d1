from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from cdbdump.bitmap import Bitmap


def test_lsb_first_layout() -> None:
    bm = Bitmap(20)
    bm.set_range(1, 2)
    bm.set_range(9, 11)
    assert bm.bits.tolist() == [0b10, 0b110, 0]  # pfn N is byte N>>3, bit N&7


@given(
    nr_bits=st.integers(1, 300),
    ops=st.lists(st.tuples(st.booleans(), st.integers(0, 320), st.integers(0, 320)), max_size=20),
)
def test_ranges_match_a_bool_model(nr_bits: int, ops: list[tuple[bool, int, int]]) -> None:
    bm = Bitmap(nr_bits)
    model = np.zeros(nr_bits, dtype=bool)
    for setting, a, b in ops:
        lo, hi = min(a, b), max(a, b)
        if setting:
            bm.set_range(lo, hi)
        else:
            bm.clear_range(lo, hi)
        model[lo:hi] = setting
    assert np.array_equal(bm.get_bools(0, nr_bits), model)
    assert bm.count() == int(model.sum())
    got = np.concatenate([*bm.iter_set_pfns(window=64), np.zeros(0, np.int64)])
    assert got.tolist() == np.flatnonzero(model).tolist()
    # bits past nr_bits stay clear, so byte popcounts are exact
    assert int(np.unpackbits(bm.bits, bitorder="little")[nr_bits:].sum()) == 0


@given(st.integers(0, 200), st.lists(st.booleans(), max_size=100))
def test_put_and_clear_where(start: int, values: list[bool]) -> None:
    bm = Bitmap(256)
    bm.set_range(0, 256)
    mask = np.array(values, dtype=bool)
    bm.clear_where(start, mask)
    expect = np.ones(256, dtype=bool)
    expect[start : start + mask.size] &= ~mask[: max(0, 256 - start)]
    assert np.array_equal(bm.get_bools(0, 256), expect)
