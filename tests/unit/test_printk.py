"""cdbdump.printk: the log readers on damaged buffers, and the line format.

The buffers come from tests/builders/printk.py and are read through tests/flatmem.py,
a small kernel-memory object with holes (the library's KernelReader protocol), so
that any part of a buffer can be left out of the "dump" or corrupted in place.
Agreement with makedumpfile on whole vmcores is tests/differential/
test_dmesg_makedumpfile.py and tests/real/test_real_dmesg.py.
"""

from __future__ import annotations

import struct

import pytest

from cdbdump.errors import CorruptDumpError, MissingVmcoreInfoKey, NotInDumpError, UnsupportedError
from cdbdump.printk import (
    LAYOUT_PRINTK_LOG,
    LAYOUT_RINGBUFFER,
    KernelLog,
    LogRecord,
    format_record,
    read_kernel_log,
)
from cdbdump.vmcore.vmcoreinfo import VmcoreInfo
from tests.builders import make_vmcoreinfo
from tests.builders.printk import PRB_RING_KEYS, PrintkLogBuilder, Record, RingBuilder
from tests.flatmem import BASE, FlatKernel, FlatMemory


def _records(log: KernelLog) -> list[Record]:
    return [Record(r.ts_nsec, r.text, r.caller_id or 0) for r in log.records]


def _ring(n: int = 40, **kwargs: int | bool) -> tuple[RingBuilder, FlatKernel, dict[str, int]]:
    ring = RingBuilder(**kwargs)  # type: ignore[arg-type]
    for i in range(n):
        ring.add(b"record %d" % i + b"." * (i % 13), 1_000_000 * i, i)
    placed = FlatKernel()
    ring.install(placed)  # type: ignore[arg-type]
    return ring, placed, dict(zip(("descs", "infos", "data", "prb", "ptr"), placed.placed,
                                  strict=True))


# -- the lockless ringbuffer --------------------------------------------------------------


def test_ring_records_and_overwritten_warning() -> None:
    ring, placed, _ = _ring()
    log = placed.read()
    assert log.layout == LAYOUT_RINGBUFFER
    assert _records(log) == ring.expected()
    first = ring.oldest_seq()
    assert first > 0  # 40 records do not fit 16 descriptors
    assert log.records[0].seq == first
    assert log.warnings == [f"printk ringbuffer: the log starts at record {first}: older "
                            "records were overwritten before the dump"]


def test_ring_without_wrap_has_no_warning() -> None:
    ring, placed, _ = _ring(n=5, count_bits=4, size_bits=10)
    log = placed.read()
    assert _records(log) == ring.expected() and len(log.records) == 5
    assert log.warnings == []


def test_ring_text_partly_not_in_dump() -> None:
    ring, placed, addrs = _ring(count_bits=4, size_bits=9)
    placed.memory.drop(addrs["data"], 256)  # the first half of the text ring
    log = placed.read()
    expected = ring.expected()
    got = _records(log)
    assert got and len(got) < len(expected)
    assert got == [r for r in expected if r in got]  # a subsequence, nothing made up
    lost = len(expected) - len(got)
    assert f"printk ringbuffer: {lost} record{'s' if lost > 1 else ''} skipped: not in the " \
           "dump (text)" in log.warnings


def test_ring_descriptors_not_in_dump() -> None:
    ring, placed, addrs = _ring(n=10, count_bits=4, size_bits=10)
    placed.memory.drop(addrs["descs"] + 24 * 2, 24 * 3)  # descriptors 2, 3, 4
    log = placed.read()
    assert _records(log) == [r for i, r in enumerate(ring.expected()) if i not in (2, 3, 4)]
    assert "printk ringbuffer: 3 records skipped: not in the dump (descriptor)" in log.warnings


def test_ring_corrupt_descriptors_are_skipped() -> None:
    ring, placed, addrs = _ring(n=10, count_bits=4, size_bits=10)
    descs = addrs["descs"]
    # descriptor 1: text position in another wrap; descriptor 5: block of another id
    placed.memory.poke(descs + 24 * 1 + 8, struct.pack("<QQ", 0x10, 0x7000))
    begin5 = struct.unpack("<Q", placed.memory.read(descs + 24 * 5 + 8, 8))[0]
    placed.memory.poke(descs + 24 * 6 + 8, struct.pack("<Q", begin5))
    log = placed.read()
    assert _records(log) == [r for i, r in enumerate(ring.expected()) if i not in (1, 6)]
    assert "printk ringbuffer: 2 records skipped: corrupt (data block does not match its " \
           "descriptor)" in log.warnings


def test_ring_head_and_tail_too_far_apart() -> None:
    ring, placed, addrs = _ring(n=10, count_bits=4, size_bits=10)
    placed.memory.poke(addrs["prb"] + 32, struct.pack("<Q", 5))  # tail_id
    log = placed.read()
    assert _records(log) == ring.expected()  # all 10 are among the newest 16 ids
    assert any("more than its 16 descriptors" in w for w in log.warnings)


def test_ring_unusable_structures_raise() -> None:
    _, placed, addrs = _ring(n=3)
    placed.memory.drop(addrs["prb"], 8)
    with pytest.raises(NotInDumpError):
        placed.read()
    _, placed, addrs = _ring(n=3)
    placed.memory.poke(addrs["prb"] + 48, struct.pack("<I", 60))  # size_bits
    with pytest.raises(CorruptDumpError, match="size_bits 60"):
        placed.read()
    _, placed, addrs = _ring(n=3)
    placed.memory.poke(addrs["prb"], struct.pack("<I", 28))  # count_bits
    placed.memory.poke(addrs["prb"] + 48, struct.pack("<I", 31))  # size_bits
    with pytest.raises(UnsupportedError, match="printk ringbuffer of 0x"):
        placed.read()  # 33 GiB of buffers: refused, not allocated
    _, placed, _ = _ring(n=3)
    placed.entries["SIZE(prb_desc)"] = 8
    with pytest.raises(CorruptDumpError, match=r"SIZE\(prb_desc\)=8"):
        placed.read()


def test_no_log_in_vmcoreinfo() -> None:
    info = VmcoreInfo.parse(make_vmcoreinfo("6.1", **dict.fromkeys(PRB_RING_KEYS)))
    with pytest.raises(MissingVmcoreInfoKey, match=r"SYMBOL\(prb\)"):
        read_kernel_log(FlatMemory(), info)
    old = VmcoreInfo.parse(make_vmcoreinfo("6.1", **dict.fromkeys(PRB_RING_KEYS), **{
        "SYMBOL(log_buf)": BASE, "SYMBOL(log_buf_len)": BASE, "SYMBOL(log_end)": BASE}))
    with pytest.raises(UnsupportedError, match=r"before 3\.5"):
        read_kernel_log(FlatMemory(), old)


# -- struct printk_log ------------------------------------------------------------------------


def _printk_log(n: int = 60, buf_len: int = 1024) -> tuple[PrintkLogBuilder, FlatKernel, int]:
    log = PrintkLogBuilder(buf_len, caller_id=True)
    for i in range(n):
        log.add(b"line %d" % i + b"-" * (i % 11), 1000 * i, i)
    placed = FlatKernel()
    log.install(placed)  # type: ignore[arg-type]
    buf = struct.unpack("<Q", placed.memory.read(int(placed.entries["SYMBOL(log_buf)"] or 0),
                                                  8))[0]
    return log, placed, buf


def test_printk_log_wrapped() -> None:
    builder, placed, _ = _printk_log()
    log = placed.read()
    assert log.layout == LAYOUT_PRINTK_LOG
    assert _records(log) == builder.expected()
    assert builder.first_idx != 0
    assert log.warnings == [f"printk log_buf: the log starts at index {builder.first_idx:#x}: "
                            "older records were overwritten before the dump"]


def test_printk_log_cycle_stops_once_round() -> None:
    builder, placed, buf = _printk_log(n=5, buf_len=4096)
    # record 3 gets length 0, the wrap marker: 0 1 2 (0 as 3) 1 ... never log_next_idx
    records = [0]
    for _ in range(3):
        records.append(records[-1] + struct.unpack("<H", placed.memory.read(
            buf + records[-1] + 8, 2))[0])
    placed.memory.poke(buf + records[3] + 8, struct.pack("<H", 0))
    log = placed.read()
    expected = builder.expected()
    assert _records(log) == [*expected[:3], expected[0]]
    assert f"a cycle at index {records[1]:#x}" in log.warnings[-1]


def test_printk_log_damage() -> None:
    builder, placed, buf = _printk_log(n=5, buf_len=4096)
    second = struct.unpack("<H", placed.memory.read(buf + 8, 2))[0]
    placed.memory.drop(buf + second + 24, 2)  # text of record 1
    log = placed.read()
    assert _records(log) == [r for i, r in enumerate(builder.expected()) if i != 1]
    assert "printk log_buf: 1 record skipped: text not in the dump" in log.warnings

    builder, placed, buf = _printk_log(n=5, buf_len=4096)
    placed.memory.drop(buf + second, 4)  # header of record 1
    log = placed.read()
    assert _records(log) == builder.expected()[:1]
    assert "not in the dump; the log stops after 1 record" in log.warnings[-1]

    builder, placed, buf = _printk_log(n=5, buf_len=4096)
    placed.memory.poke(buf + second + 10, struct.pack("<H", 0xFFFF))  # text_len
    log = placed.read()
    assert _records(log) == builder.expected()[:1]
    assert "runs past log_buf" in log.warnings[-1]

    builder, placed, buf = _printk_log(n=5, buf_len=4096)
    placed.memory.poke(buf + second + 8, struct.pack("<H", 4))  # len below the header
    log = placed.read()
    assert _records(log) == builder.expected()[:1]
    assert "has length 0x4" in log.warnings[-1]


# -- the line format -------------------------------------------------------------------------


def test_format_prefix_caller_and_indent() -> None:
    rec = LogRecord(ts_nsec=12_345_678_901_234, text=b"a\nb", caller_id=0x80000003)
    assert format_record(rec) == b"[12345.678901] [      C3] a\n" + b" " * 26 + b"b\n"
    assert format_record(rec, caller_id=False) == b"[12345.678901] a\n" + b" " * 15 + b"b\n"
    task = LogRecord(ts_nsec=999, text=b"", caller_id=123456789)
    assert format_record(task) == b"[    0.000000] [T123456789] \n"
    assert format_record(LogRecord(ts_nsec=1, text=b"x")) == b"[    0.000000] x\n"


@pytest.mark.parametrize("byte", range(256))
def test_format_every_byte(byte: int) -> None:
    line = format_record(LogRecord(ts_nsec=0, text=bytes([byte])), caller_id=False)
    body = line[len(b"[    0.000000] "):-1]
    if byte == 0x0A:
        assert body == b"\n" + b" " * 15
    elif 0x20 <= byte < 0x7F or byte in b"\t\v\f\r":
        assert body == bytes([byte])
    else:  # C's "\\x%02x" of a signed char
        signed = byte - 256 if byte >= 0x80 else byte
        assert body == b"\\x" + format(signed & 0xFFFFFFFF, "02x").encode()
