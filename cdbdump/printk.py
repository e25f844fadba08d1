"""The kernel log (dmesg) of a crashed machine, read from its memory.

Two layouts, told apart by VMCOREINFO as makedumpfile's dump_dmesg does:

* the lockless printk ringbuffer (SYMBOL(prb); Linux kernel commit 896fbe20b4e2
  "printk: use the lockless ringbuffer", in v5.10): a descriptor ring, an info
  array and a text data ring (reference: makedumpfile dump_lockless_dmesg,
  dump_record; kernel/printk/printk_ringbuffer.c get_data);
* variable-length struct printk_log records in log_buf (Linux kernel commit
  7ff9554bb578 "printk: convert byte-buffer to variable-length record buffer",
  in v3.5, until v5.9): walked from log_first_idx to log_next_idx, a record
  with len 0 meaning "continue at the start" (reference: makedumpfile
  dump_dmesg, log_from_ptr, log_next).

Everything is read in bulk through any object with KernelMemory's ``read`` and
``read_into``; what cannot be read (not in the dump, corrupt) is skipped and
said in ``KernelLog.warnings``. ``format_record`` renders a record as
makedumpfile's dump_log_entry does, byte for byte.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from cdbdump.errors import CorruptDumpError, MissingVmcoreInfoKey, UnsupportedError
from cdbdump.vmcore.vmcoreinfo import VmcoreInfo

__all__ = (
    "LAYOUT_PRINTK_LOG",
    "LAYOUT_RINGBUFFER",
    "KernelLog",
    "KernelReader",
    "LogRecord",
    "format_record",
    "format_records",
    "read_kernel_log",
)

LAYOUT_RINGBUFFER = "printk_ringbuffer"
LAYOUT_PRINTK_LOG = "printk_log"

# kernel/printk/printk_ringbuffer.h: state_var = 2 state bits above a 62-bit id
_SV_STATE_SHIFT = 62
_ID_MASK = (1 << _SV_STATE_SHIFT) - 1
_DESC_COMMITTED = 1
_DESC_FINALIZED = 2
_U64 = (1 << 64) - 1
_BLOCK_ID_BYTES = 8  # struct prb_data_block: unsigned long id, then the text
# Sanity bounds: log_buf_len= is at most LOG_BUF_LEN_MAX (1 << 31) in kernel/printk/printk.c;
# more than _MAX_READ_BYTES of buffers (a 1 GiB log) is refused rather than allocated.
_MAX_DATA_BITS = 31
_MAX_LOG_BUF_LEN = 1 << 31
_MAX_READ_BYTES = 4 << 30

_NS_PER_S = 1_000_000_000
_CALLER_CPU = 0x80000000  # caller_id bit 31: a CPU number rather than a task id

_Int = TypeVar("_Int", np.uint16, np.uint32, np.uint64)


class KernelReader(Protocol):
    """What the log readers need: kernel virtual reads (KernelMemory has both)."""

    def read(self, vaddr: int, size: int) -> bytes:
        """``size`` bytes at ``vaddr``; raises AddressError when they cannot be read."""
        ...

    def read_into(self, vaddr: int, out: npt.NDArray[np.uint8]) -> list[tuple[int, int]]:
        """Fill ``out`` from ``vaddr``; return the (offset, length) ranges not read (zeroed)."""
        ...


class LogRecord(NamedTuple):
    """One printk record (a NamedTuple: a full ring holds a million of them)."""

    ts_nsec: int
    text: bytes
    caller_id: int | None = None  # None when VMCOREINFO does not describe the field
    seq: int | None = None  # printk_info.seq (lockless ringbuffer only)


@dataclass(slots=True)
class KernelLog:
    """The records that could be read, oldest first, and what could not."""

    layout: str  # LAYOUT_RINGBUFFER or LAYOUT_PRINTK_LOG
    records: list[LogRecord] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def read_kernel_log(kernel: KernelReader, info: VmcoreInfo) -> KernelLog:
    """Read the kernel log of the dumped machine.

    Raises:
        MissingVmcoreInfoKey: VMCOREINFO does not describe a log buffer.
        AddressError: the log's control structures cannot be read.
        CorruptDumpError: they hold values no kernel writes.
        UnsupportedError: the pre-3.5 character buffer (SYMBOL(log_end)).
    """
    if "SYMBOL(prb)" in info:
        return _read_ringbuffer(kernel, info)
    if "SYMBOL(log_buf)" in info and "SYMBOL(log_buf_len)" in info:
        if "SYMBOL(log_end)" in info:
            raise UnsupportedError("the kernel log of a kernel before 3.5 (SYMBOL(log_end))")
        return _read_printk_log(kernel, info)
    raise MissingVmcoreInfoKey("SYMBOL(prb)", "the kernel log")


# -- output ---------------------------------------------------------------------------

# makedumpfile copies the bytes for which isprint() or isspace() holds in the C locale and
# writes the others as "\\x%02x" of a signed char: 0x80..0xff become "\\xffffff80".."\\xffffffff".
_NEEDS_ESCAPE = re.compile(rb"[\x00-\x08\x0e-\x1f\x7f-\xff]")
_ESCAPES = {b: b"\\x%02x" % (b if b < 0x80 else 0xFFFFFF00 | b) for b in range(256)}


def format_record(record: LogRecord, *, caller_id: bool = True) -> bytes:
    """One record as makedumpfile writes it, ending with a newline.

    ``[%5llu.%06lu] `` from ts_nsec, then ``[%8s] `` of ``T<pid>``/``C<cpu>``
    when the record has a caller id and ``caller_id`` is set (makedumpfile
    1.7.5 and later; 1.7.2 prints none); each newline in the text is followed by
    spaces up to the prefix width (reference: makedumpfile dump_log_entry).
    """
    seconds, nanos = divmod(record.ts_nsec, _NS_PER_S)
    prefix = b"[%5d.%06d] " % (seconds, nanos // 1000)
    if caller_id and record.caller_id is not None:
        cid = record.caller_id
        tag = b"%c%d" % (b"C" if cid & _CALLER_CPU else b"T", cid & ~_CALLER_CPU)
        prefix += b"[%8s] " % tag
    text = record.text
    if _NEEDS_ESCAPE.search(text) is not None:
        text = _NEEDS_ESCAPE.sub(lambda m: _ESCAPES[m.group()[0]], text)
    if b"\n" in text:
        text = text.replace(b"\n", b"\n" + b" " * len(prefix))
    return prefix + text + b"\n"


def format_records(records: Iterable[LogRecord], *, caller_id: bool = True) -> Iterator[bytes]:
    for record in records:
        yield format_record(record, caller_id=caller_id)


# -- helpers ----------------------------------------------------------------------------


def _u32(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset : offset + 4], "little")


def _u64(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset : offset + 8], "little")


def _column(
    buf: npt.NDArray[np.uint8], count: int, stride: int, offset: int, dtype: type[_Int]
) -> npt.NDArray[_Int]:
    """Little-endian field ``offset`` of each of ``count`` structs of ``stride`` bytes."""
    view: npt.NDArray[_Int] = np.ndarray(
        (count,), dtype=np.dtype(dtype).newbyteorder("<"), buffer=buf, offset=offset,
        strides=(stride,),
    )
    return view


def _bad_elements(missing: list[tuple[int, int]], count: int, stride: int) -> npt.NDArray[np.bool_]:
    """Which of ``count`` structs of ``stride`` bytes touch a missing byte range."""
    bad = np.zeros(count, dtype=bool)
    for offset, length in missing:
        bad[offset // stride : (offset + length - 1) // stride + 1] = True
    return bad


def _merge(missing: list[tuple[int, int]]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Missing (offset, length) ranges as sorted, merged [start, end) arrays."""
    merged: list[list[int]] = []
    for offset, length in sorted(missing):
        if merged and offset <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], offset + length)
        else:
            merged.append([offset, offset + length])
    starts = np.array([m[0] for m in merged], dtype=np.int64)
    ends = np.array([m[1] for m in merged], dtype=np.int64)
    return starts, ends


def _overlaps(
    missing: list[tuple[int, int]], begin: npt.NDArray[np.int64], end: npt.NDArray[np.int64]
) -> npt.NDArray[np.bool_]:
    """For each [begin, end), whether it overlaps a missing range."""
    if not missing:
        return np.zeros(begin.shape, dtype=bool)
    starts, ends = _merge(missing)
    j = np.searchsorted(ends, begin, side="right")  # first missing range ending after begin
    inside = j < len(starts)
    hit = np.zeros(begin.shape, dtype=bool)
    hit[inside] = starts[j[inside]] < end[inside]
    return hit


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


# -- the lockless ringbuffer (5.10+) ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _PrbLayout:
    """The VMCOREINFO sizes and offsets dump_lockless_dmesg reads."""

    size_prb: int
    desc_ring: int
    text_data_ring: int
    count_bits: int
    descs: int
    infos: int
    head_id: int
    tail_id: int
    size_desc: int
    state_var: int
    text_blk_lpos: int
    lpos_begin: int
    lpos_next: int
    size_bits: int
    data: int
    size_info: int
    ts_nsec: int
    text_len: int
    caller_id: int | None
    seq: int | None
    counter: int

    @classmethod
    def from_vmcoreinfo(cls, info: VmcoreInfo) -> _PrbLayout:
        # reference: makedumpfile read_vmcoreinfo (the printk_ringbuffer block)
        counter = info.get_offset("atomic_long_t.counter")
        return cls(
            size_prb=info.size("printk_ringbuffer"),
            desc_ring=info.offset("printk_ringbuffer.desc_ring"),
            text_data_ring=info.offset("printk_ringbuffer.text_data_ring"),
            count_bits=info.offset("prb_desc_ring.count_bits"),
            descs=info.offset("prb_desc_ring.descs"),
            infos=info.offset("prb_desc_ring.infos"),
            head_id=info.offset("prb_desc_ring.head_id"),
            tail_id=info.offset("prb_desc_ring.tail_id"),
            size_desc=info.size("prb_desc"),
            state_var=info.offset("prb_desc.state_var"),
            text_blk_lpos=info.offset("prb_desc.text_blk_lpos"),
            lpos_begin=info.offset("prb_data_blk_lpos.begin"),
            lpos_next=info.offset("prb_data_blk_lpos.next"),
            size_bits=info.offset("prb_data_ring.size_bits"),
            data=info.offset("prb_data_ring.data"),
            size_info=info.size("printk_info"),
            ts_nsec=info.offset("printk_info.ts_nsec"),
            text_len=info.offset("printk_info.text_len"),
            caller_id=info.get_offset("printk_info.caller_id"),
            seq=info.get_offset("printk_info.seq"),
            counter=0 if counter is None else counter,
        )

    def check(self) -> None:
        """Every member read lies inside its struct (else VMCOREINFO is not usable)."""
        ring, data = self.desc_ring, self.text_data_ring
        members = {
            ("printk_ringbuffer", self.size_prb): [
                (ring + self.count_bits, 4), (ring + self.descs, 8), (ring + self.infos, 8),
                (ring + self.head_id + self.counter, 8), (ring + self.tail_id + self.counter, 8),
                (data + self.size_bits, 4), (data + self.data, 8)],
            ("prb_desc", self.size_desc): [
                (self.state_var, 8), (self.text_blk_lpos + self.lpos_begin, 8),
                (self.text_blk_lpos + self.lpos_next, 8)],
            ("printk_info", self.size_info): [
                (self.ts_nsec, 8), (self.text_len, 2), (self.caller_id or 0, 4),
                (self.seq or 0, 8)],
        }
        for (name, size), fields in members.items():
            if any(offset < 0 or offset + width > size for offset, width in fields):
                raise CorruptDumpError(f"SIZE({name})={size} does not hold the members "
                                       "at their OFFSET()s", field="VMCOREINFO")


def _read_ringbuffer(kernel: KernelReader, info: VmcoreInfo) -> KernelLog:
    lay = _PrbLayout.from_vmcoreinfo(info)
    lay.check()
    log = KernelLog(LAYOUT_RINGBUFFER)
    # reference: makedumpfile dump_lockless_dmesg: prb is a pointer to the ringbuffer
    prb_vaddr = _u64(kernel.read(info.symbol("prb"), 8), 0)
    prb = kernel.read(prb_vaddr, lay.size_prb)
    ring = lay.desc_ring
    data_ring = lay.text_data_ring
    count_bits = _u32(prb, ring + lay.count_bits)
    size_bits = _u32(prb, data_ring + lay.size_bits)
    if not 0 < size_bits <= _MAX_DATA_BITS or count_bits > size_bits:
        raise CorruptDumpError(
            f"count_bits {count_bits}, size_bits {size_bits}: not a printk ringbuffer",
            field=f"printk_ringbuffer at {prb_vaddr:#x}",
        )
    count = 1 << count_bits
    size = 1 << size_bits
    need = count * (lay.size_desc + lay.size_info) + size
    if need > _MAX_READ_BYTES:
        raise UnsupportedError(f"a printk ringbuffer of {need:#x} bytes (count_bits "
                               f"{count_bits}, size_bits {size_bits})")
    head_id = _u64(prb, ring + lay.head_id + lay.counter) & _ID_MASK
    tail_id = _u64(prb, ring + lay.tail_id + lay.counter) & _ID_MASK

    descs = np.zeros(count * lay.size_desc, dtype=np.uint8)
    desc_bad = _bad_elements(
        kernel.read_into(_u64(prb, ring + lay.descs), descs), count, lay.size_desc)
    infos = np.zeros(count * lay.size_info, dtype=np.uint8)
    info_bad = _bad_elements(
        kernel.read_into(_u64(prb, ring + lay.infos), infos), count, lay.size_info)
    text = np.zeros(size, dtype=np.uint8)
    text_missing = kernel.read_into(_u64(prb, data_ring + lay.data), text)

    # every id from the tail to the head, inclusive, as dump_lockless_dmesg walks them
    span = ((head_id - tail_id) & _ID_MASK) + 1
    if span > count:
        log.warnings.append(
            f"printk ringbuffer: tail id {tail_id:#x} and head id {head_id:#x} are "
            f"{span:#x} apart, more than its {count} descriptors; reading the newest {count}")
        span = count
        tail_id = (head_id - count + 1) & _ID_MASK
    ids = (np.uint64(tail_id) + np.arange(span, dtype=np.uint64)) & np.uint64(_ID_MASK)
    idx = (ids & np.uint64(count - 1)).astype(np.intp)

    state_var = _column(descs, count, lay.size_desc, lay.state_var, np.uint64)[idx]
    state = state_var >> np.uint64(_SV_STATE_SHIFT)
    live = ((state_var & np.uint64(_ID_MASK)) == ids) & (
        (state == _DESC_COMMITTED) | (state == _DESC_FINALIZED))
    unread = desc_bad[idx]
    live &= ~unread
    no_info = live & info_bad[idx]
    live &= ~no_info
    # the oldest record the ring still describes: those before it were overwritten
    oldest = np.flatnonzero(live)[:1]
    first_seq = (0 if lay.seq is None or not oldest.size else
                 int(_column(infos, count, lay.size_info, lay.seq, np.uint64)[idx[oldest[0]]]))

    lpos = lay.text_blk_lpos
    begin = _column(descs, count, lay.size_desc, lpos + lay.lpos_begin, np.uint64)[idx]
    nxt = _column(descs, count, lay.size_desc, lpos + lay.lpos_next, np.uint64)[idx]
    # data-less records (empty lines, failed allocations: both lpos odd) are not printed
    # (makedumpfile dump_record skips begin == next)
    live &= ~((begin & np.uint64(1)).astype(bool) & (nxt & np.uint64(1)).astype(bool))

    # Where the block is, as the kernel's get_data finds it: in one wrap (the id and text
    # at begin), or wrapped (only the id at begin; id and text from index 0). The wrap of
    # a block is the wrap of its last byte, next - 1 (Linux kernel commit 67e1b0052f6b
    # "printk_ringbuffer: don't needlessly wrap data blocks around": a block may now end
    # exactly at the end of the ring; makedumpfile reads such a block from index 0).
    with np.errstate(over="ignore"):
        last = nxt - np.uint64(1)
        length = nxt - begin
        wraps_last = last >> np.uint64(size_bits)
        regular = ((begin >> np.uint64(size_bits)) == wraps_last) & (length > 0) & (
            length <= size)
        wrapped = ~regular & (((begin + np.uint64(size)) >> np.uint64(size_bits)) == wraps_last)
    mask = np.uint64(size - 1)
    start = np.where(regular, begin & mask, np.uint64(0)).astype(np.int64)
    blk_len = np.where(regular, length, nxt & mask).astype(np.int64)
    geometry_ok = (regular | wrapped) & (blk_len >= _BLOCK_ID_BYTES) & (start + blk_len <= size)
    corrupt = live & ~geometry_ok
    live &= geometry_ok

    end = start + blk_len
    lost_text = live & _overlaps(text_missing, start, end)
    live &= ~lost_text
    # the block must start with the id of its descriptor (prb_data_block.id)
    sel = np.flatnonzero(live)
    at = start[sel][:, None] + np.arange(_BLOCK_ID_BYTES)[None, :]
    block_ids = np.ascontiguousarray(text[at]).view(np.uint64).reshape(-1) & np.uint64(_ID_MASK)
    foreign = np.zeros(span, dtype=bool)
    foreign[sel] = block_ids != ids[sel]
    corrupt |= foreign
    live &= ~foreign

    sel = np.flatnonzero(live)
    rec_idx = idx[sel]
    ts = _column(infos, count, lay.size_info, lay.ts_nsec, np.uint64)[rec_idx].tolist()
    text_len = _column(infos, count, lay.size_info, lay.text_len, np.uint16)[rec_idx]
    text_start = start[sel] + _BLOCK_ID_BYTES
    # a text_len beyond the block is cut to it (makedumpfile dump_record)
    text_end = (text_start + np.minimum(text_len, blk_len[sel] - _BLOCK_ID_BYTES)).tolist()
    callers: list[int | None] = (
        [None] * len(sel) if lay.caller_id is None else
        _column(infos, count, lay.size_info, lay.caller_id, np.uint32)[rec_idx].tolist())
    seqs: list[int | None] = (
        [None] * len(sel) if lay.seq is None else
        _column(infos, count, lay.size_info, lay.seq, np.uint64)[rec_idx].tolist())
    raw = text.tobytes()
    log.records = [
        LogRecord(t, raw[a:b], c, s)
        for t, a, b, c, s in zip(ts, text_start.tolist(), text_end, callers, seqs, strict=True)
    ]

    lost = {
        "not in the dump (descriptor)": int(unread.sum()),
        "not in the dump (printk_info)": int(no_info.sum()),
        "not in the dump (text)": int(lost_text.sum()),
        "corrupt (data block does not match its descriptor)": int(corrupt.sum()),
    }
    for why, n in lost.items():
        if n:
            log.warnings.append(f"printk ringbuffer: {_plural(n, 'record')} skipped: {why}")
    if first_seq:
        log.warnings.append(f"printk ringbuffer: the log starts at record {first_seq}: older "
                            "records were overwritten before the dump")
    return log


# -- struct printk_log records in log_buf (3.5 .. 5.9) -------------------------------------


def _read_printk_log(kernel: KernelReader, info: VmcoreInfo) -> KernelLog:
    # reference: makedumpfile read_vmcoreinfo: "printk_log", or "log" before Linux kernel
    # commit 62e32ac3505a ("printk: rename struct log to struct printk_log") in v3.11
    name = "printk_log" if "SIZE(printk_log)" in info else "log"
    header = info.size(name)
    off_ts = info.offset(f"{name}.ts_nsec")
    off_len = info.offset(f"{name}.len")
    off_text_len = info.offset(f"{name}.text_len")
    off_caller = info.get_offset(f"{name}.caller_id")
    if header <= 0 or any(o < 0 or o + w > header for o, w in (
            (off_ts, 8), (off_len, 2), (off_text_len, 2), (off_caller or 0, 4))):
        raise CorruptDumpError(f"SIZE({name})={header} is too small for the offsets of its "
                               "members", field="VMCOREINFO")
    log = KernelLog(LAYOUT_PRINTK_LOG)
    buf_vaddr = _u64(kernel.read(info.symbol("log_buf"), 8), 0)
    buf_len = _u32(kernel.read(info.symbol("log_buf_len"), 4), 0)
    first_idx = _u32(kernel.read(info.symbol("log_first_idx"), 4), 0)
    next_idx = _u32(kernel.read(info.symbol("log_next_idx"), 4), 0)
    if not header <= buf_len <= _MAX_LOG_BUF_LEN:
        raise CorruptDumpError(f"log_buf_len {buf_len:#x} is not a log buffer size",
                               field=f"log_buf at {buf_vaddr:#x}")
    buf = np.zeros(buf_len, dtype=np.uint8)
    missing = kernel.read_into(buf_vaddr, buf)
    raw = buf.tobytes()
    starts, ends = _merge(missing)
    last_header = buf_len - header  # the highest index a record header may start at

    def readable(begin: int, end: int) -> bool:
        j = int(np.searchsorted(ends, begin, side="right"))
        return j >= len(starts) or int(starts[j]) >= end

    def length(index: int) -> int:
        return int.from_bytes(raw[index + off_len : index + off_len + 2], "little")

    seen: set[int] = set()
    ptr = first_idx
    skipped = 0
    problem = ""
    while ptr != next_idx:
        if ptr in seen:
            problem = f"a cycle at index {ptr:#x}"
            break
        seen.add(ptr)
        if ptr > last_header or not readable(ptr, ptr + header):
            problem = (f"index {ptr:#x} is outside log_buf" if ptr > last_header else
                       f"the record header at index {ptr:#x} is not in the dump")
            break
        # a record of length 0 marks the end of the buffer: the record is at index 0
        record = ptr if length(ptr) else 0
        if record != ptr and not readable(0, header):
            problem = "the record header at index 0x0 is not in the dump"
            break
        if length(record) < header:
            problem = f"the record at index {record:#x} has length {length(record):#x}"
            break
        text_begin = record + header
        text_end = text_begin + int.from_bytes(
            raw[record + off_text_len : record + off_text_len + 2], "little")
        if text_end > buf_len:
            problem = f"the text of the record at index {record:#x} runs past log_buf"
            break
        if readable(text_begin, text_end):
            log.records.append(LogRecord(
                ts_nsec=_u64(raw, record + off_ts),
                text=raw[text_begin:text_end],
                caller_id=None if off_caller is None else _u32(raw, record + off_caller),
            ))
        else:
            skipped += 1
        # reference: makedumpfile log_next
        ptr = record + length(record)
    if skipped:
        log.warnings.append(f"printk log_buf: {_plural(skipped, 'record')} skipped: "
                            "text not in the dump")
    if problem:
        log.warnings.append(f"printk log_buf is corrupt: {problem}; the log stops after "
                            f"{_plural(len(log.records), 'record')}")
    if first_idx:
        log.warnings.append(f"printk log_buf: the log starts at index {first_idx:#x}: older "
                            "records were overwritten before the dump")
    return log
