"""Log buffers of any history: the reader finds what the kernel's writer left, and damage
ends in records plus warnings or a CdbdumpError, never another exception.

The histories (record sizes, ring geometry, the 2025 exact-fit rule, a last record
still committed or reserved) drive tests/builders/printk.py; the reader reads them
through tests/flatmem.py.
"""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from cdbdump.errors import CdbdumpError
from cdbdump.printk import KernelLog
from tests.builders.printk import (
    COMMITTED,
    FINALIZED,
    RESERVED,
    PrintkLogBuilder,
    Record,
    RingBuilder,
)
from tests.flatmem import FlatKernel

# any lengths, or lengths whose blocks (text + 8-byte id, 8-aligned) divide the ring, so
# that blocks end exactly at its end (where the exact-fit rule matters)
texts = st.one_of(
    st.lists(st.binary(max_size=40), max_size=120),
    st.lists(st.one_of(st.binary(min_size=8, max_size=8), st.binary(min_size=24, max_size=24)),
             max_size=120),
)


def _records(log: KernelLog) -> list[Record]:
    return [Record(r.ts_nsec, r.text, r.caller_id or 0) for r in log.records]


def _ring(texts: list[bytes], count_bits: int, size_bits: int, exact_fit: bool,
          last_state: int) -> tuple[RingBuilder, FlatKernel]:
    ring = RingBuilder(count_bits, size_bits, exact_fit=exact_fit)
    for i, text in enumerate(texts):
        state = last_state if i == len(texts) - 1 else FINALIZED
        ring.add(text, 7919 * i, i | (0x80000000 if i % 3 == 0 else 0), state=state)
    flat = FlatKernel()
    ring.install(flat)  # type: ignore[arg-type]
    return ring, flat


@given(texts, st.integers(2, 5), st.integers(7, 10), st.booleans(),
       st.sampled_from([FINALIZED, COMMITTED, RESERVED]))
@example([b"x" * 24] * 20, 3, 7, True, FINALIZED)  # 32-byte blocks end at the ring's end
@example([b"x" * 24] * 20, 3, 7, False, COMMITTED)  # the same blocks wrap to index 0
def test_ring_reader_finds_what_the_writer_left(texts: list[bytes], count_bits: int,
                                                size_bits: int, exact_fit: bool,
                                                last_state: int) -> None:
    ring, flat = _ring(texts, count_bits, size_bits, exact_fit, last_state)
    log = flat.read()
    assert _records(log) == ring.expected()
    assert [r.seq is not None for r in log.records] == [True] * len(log.records)
    assert len(log.warnings) == (1 if ring.oldest_seq() else 0)


@given(texts, st.integers(2, 4), st.integers(7, 9), st.booleans(),
       st.lists(st.tuples(st.integers(0, 4), st.integers(0, 1 << 12), st.binary(min_size=1,
                                                                               max_size=8)),
                min_size=1, max_size=6))
def test_damaged_ring(texts: list[bytes], count_bits: int, size_bits: int, exact_fit: bool,
                      damage: list[tuple[int, int, bytes]]) -> None:
    _, flat = _ring(texts, count_bits, size_bits, exact_fit, FINALIZED)
    # placed: descs, infos, data, prb, the prb pointer
    for which, offset, data in damage:
        flat.memory.poke(flat.placed[which] + offset % 0x1000, data)
    try:
        log = flat.read()
    except CdbdumpError:
        return
    size = 1 << size_bits
    assert len(log.records) <= 1 << count_bits
    assert all(len(r.text) < size for r in log.records)


@given(texts, st.sampled_from([512, 1024, 4096]), st.booleans())
def test_printk_log_reader_finds_what_the_writer_left(texts: list[bytes], buf_len: int,
                                                      caller_id: bool) -> None:
    log = PrintkLogBuilder(buf_len, caller_id=caller_id)
    for i, text in enumerate(texts):
        log.add(text, 104729 * i, i)
    flat = FlatKernel()
    log.install(flat)  # type: ignore[arg-type]
    got = flat.read()
    assert _records(got) == log.expected()
    assert len(got.warnings) == (1 if log.first_idx else 0)


@given(texts, st.lists(st.tuples(st.integers(0, 4095), st.binary(min_size=1, max_size=4)),
                       min_size=1, max_size=6))
def test_damaged_printk_log(texts: list[bytes], damage: list[tuple[int, bytes]]) -> None:
    log = PrintkLogBuilder(1024, caller_id=True)
    for i, text in enumerate(texts):
        log.add(text, 104729 * i, i)
    flat = FlatKernel()
    log.install(flat)  # type: ignore[arg-type]
    buf = flat.placed[0]
    for offset, data in damage:
        flat.memory.poke(buf + offset % 1024, data)
    try:
        got = flat.read()
    except CdbdumpError:
        return
    assert len(got.records) <= 1024 // 24 + 1
