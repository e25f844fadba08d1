"""Kernel log buffers as a running kernel fills them, for --dump-dmesg tests.

Written from the kernel's writers, not from cdbdump's reader:

* RingBuilder: the lockless printk ringbuffer (kernel/printk/printk_ringbuffer.c,
  v5.10+): desc_reserve (push the descriptor tail when the ring is full),
  data_alloc / get_next_lpos (a block that would cross the end of the data ring is
  stored whole at index 0, its id also at the old position), data_push_tail
  (blocks that are overwritten make their descriptors reusable). ``exact_fit=True``
  is the rule of Linux kernel commit 67e1b0052f6b (2025): a block may end exactly
  at the end of the ring instead of wrapping.
* PrintkLogBuilder: struct printk_log records in log_buf (kernel/printk/printk.c,
  v3.5 .. v5.9): log_store, log_make_free_space, logbuf_has_space and the
  zeroed header that marks the wrap.

Both know which records a reader must still find (``expected()``), and
``install(kernel)`` puts the buffer into a SyntheticKernel's memory and its
VMCOREINFO (the struct offsets are those of a Debian x86_64 kernel).
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.builders.kernel import SyntheticKernel

__all__ = ("PrintkLogBuilder", "Record", "RingBuilder")

U64 = (1 << 64) - 1
ID_MASK = (1 << 62) - 1
RESERVED, COMMITTED, FINALIZED, REUSABLE = 0, 1, 2, 3
FAILED_LPOS = 0x1
NO_LPOS = 0x3  # a record without text (an empty line)

# struct sizes and member offsets of a Debian 6.1 x86_64 kernel (its VMCOREINFO)
PRB_SIZE, DESC_SIZE, INFO_SIZE = 88, 24, 88
PRB_RING_KEYS = (
    "SYMBOL(prb)", "SYMBOL(printk_rb_static)", "SYMBOL(clear_seq)",
    "SIZE(printk_ringbuffer)", "OFFSET(printk_ringbuffer.desc_ring)",
    "OFFSET(printk_ringbuffer.text_data_ring)", "OFFSET(printk_ringbuffer.fail)",
    "SIZE(prb_desc_ring)", "OFFSET(prb_desc_ring.count_bits)", "OFFSET(prb_desc_ring.descs)",
    "OFFSET(prb_desc_ring.infos)", "OFFSET(prb_desc_ring.head_id)",
    "OFFSET(prb_desc_ring.tail_id)", "SIZE(prb_desc)", "OFFSET(prb_desc.state_var)",
    "OFFSET(prb_desc.text_blk_lpos)", "SIZE(prb_data_blk_lpos)",
    "OFFSET(prb_data_blk_lpos.begin)", "OFFSET(prb_data_blk_lpos.next)", "SIZE(printk_info)",
    "OFFSET(printk_info.seq)", "OFFSET(printk_info.ts_nsec)", "OFFSET(printk_info.text_len)",
    "OFFSET(printk_info.caller_id)", "OFFSET(printk_info.dev_info)", "SIZE(dev_printk_info)",
    "OFFSET(dev_printk_info.subsystem)", "LENGTH(printk_info_subsystem)",
    "OFFSET(dev_printk_info.device)", "LENGTH(printk_info_device)", "SIZE(prb_data_ring)",
    "OFFSET(prb_data_ring.size_bits)", "OFFSET(prb_data_ring.data)",
    "OFFSET(prb_data_ring.head_lpos)", "OFFSET(prb_data_ring.tail_lpos)",
    "SIZE(latched_seq)", "OFFSET(latched_seq.val)",
)  # fmt: skip


@dataclass(frozen=True)
class Record:
    ts_nsec: int
    text: bytes
    caller_id: int


@dataclass
class _Desc:
    state: int
    id: int
    begin: int = FAILED_LPOS
    next: int = FAILED_LPOS
    seq: int = 0
    ts_nsec: int = 0
    text_len: int = 0
    caller_id: int = 0
    text_at: int = 0  # index of the text in the data ring


class RingBuilder:
    """A printk_ringbuffer with 2**count_bits descriptors and 2**size_bits text bytes."""

    def __init__(self, count_bits: int = 4, size_bits: int = 9, *, exact_fit: bool = False) -> None:
        self.count_bits, self.size_bits = count_bits, size_bits
        self.count, self.size = 1 << count_bits, 1 << size_bits
        self.exact_fit = exact_fit
        # _DEFINE_PRINTKRB: DESC0_ID in the last slot, reusable; lpos BLK0_LPOS (-size)
        desc0 = (-(self.count + 1)) & ID_MASK
        self.descs = [_Desc(REUSABLE, 0) for _ in range(self.count)]
        self.descs[self.count - 1] = _Desc(REUSABLE, desc0)
        self.descs[0].seq = (-self.count) & U64
        self.head_id = self.tail_id = desc0
        self.head_lpos = self.tail_lpos = (-self.size) & U64
        self.data = bytearray(self.size)
        self.blocks: deque[tuple[int, int]] = deque()  # (id, next lpos) of live blocks
        self.next_seq = 0

    def _wraps(self, lpos: int) -> int:
        return (lpos & U64) >> self.size_bits

    def _desc(self, desc_id: int) -> _Desc:
        return self.descs[desc_id % self.count]

    def _drop_oldest_block(self) -> None:
        desc_id, nxt = self.blocks.popleft()
        desc = self._desc(desc_id)
        if desc.id == desc_id:
            desc.state = REUSABLE  # data_make_reusable
        self.tail_lpos = nxt

    def add(self, text: bytes, ts_nsec: int, caller_id: int, state: int = FINALIZED) -> int:
        """printk one record; returns its descriptor id."""
        new_id = (self.head_id + 1) & ID_MASK
        # desc_reserve: the slot of new_id still belongs to the tail descriptor
        if ((new_id - self.tail_id) & ID_MASK) >= self.count:
            old = self._desc(self.tail_id)
            if self.blocks and self.blocks[0][0] == self.tail_id:  # its block is the oldest
                self._drop_oldest_block()
            old.state = REUSABLE
            self.tail_id = (self.tail_id + 1) & ID_MASK
        desc = _Desc(state, new_id, seq=self.next_seq, ts_nsec=ts_nsec, text_len=len(text),
                     caller_id=caller_id)
        self.next_seq += 1
        if text:
            blk = (len(text) + 8 + 7) // 8 * 8  # to_blk_size
            begin = self.head_lpos
            last = begin + blk - (1 if self.exact_fit else 0)
            if self._wraps(begin) == self._wraps(last):
                nxt = (begin + blk) & U64
            else:  # stored whole at the start of the next wrap
                nxt = (((begin + blk) & ~(self.size - 1)) + blk) & U64
            # data_push_tail: free the oldest blocks until the new one fits
            while ((nxt - self.tail_lpos) & U64) > self.size:
                self._drop_oldest_block()
            ident = struct.pack("<Q", new_id)
            index = begin & (self.size - 1)
            self.data[index : index + 8] = ident
            if (nxt - begin) & U64 != blk:  # wrapped
                index = 0
                self.data[0:8] = ident
            self.data[index + 8 : index + 8 + len(text)] = text
            self.head_lpos = nxt
            desc.begin, desc.next, desc.text_at = begin, nxt, index + 8
            self.blocks.append((new_id, nxt))
        else:
            desc.begin = desc.next = NO_LPOS
        self.descs[new_id % self.count] = desc
        self.head_id = new_id
        return new_id

    def expected(self) -> list[Record]:
        """What a reader must print: committed/finalized records with text, tail to head."""
        out = []
        n = ((self.head_id - self.tail_id) & ID_MASK) + 1
        for k in range(n):
            desc_id = (self.tail_id + k) & ID_MASK
            d = self._desc(desc_id)
            if d.id == desc_id and d.state in (COMMITTED, FINALIZED) and d.text_len:
                text = bytes(self.data[d.text_at : d.text_at + d.text_len])
                out.append(Record(d.ts_nsec, text, d.caller_id))
        return out

    def oldest_seq(self) -> int:
        """printk_info.seq of the oldest committed or finalized record (text or not)."""
        n = ((self.head_id - self.tail_id) & ID_MASK) + 1
        for k in range(n):
            d = self._desc((self.tail_id + k) & ID_MASK)
            if d.id == (self.tail_id + k) & ID_MASK and d.state in (COMMITTED, FINALIZED):
                return d.seq
        return 0

    # -- bytes -------------------------------------------------------------------
    def descs_bytes(self) -> bytearray:
        out = bytearray()
        for d in self.descs:
            out += struct.pack("<QQQ", (d.state << 62) | d.id, d.begin, d.next)
        return out

    def infos_bytes(self) -> bytearray:
        out = bytearray()
        for d in self.descs:
            out += struct.pack("<QQHBBI", d.seq, d.ts_nsec, d.text_len, 0, 0, d.caller_id)
            out += bytes(INFO_SIZE - 24)  # struct dev_printk_info
        return out

    def prb_bytes(self, descs_vaddr: int, infos_vaddr: int, data_vaddr: int) -> bytes:
        desc_ring = struct.pack("<I4xQQQQ8x", self.count_bits, descs_vaddr, infos_vaddr,
                                self.head_id, self.tail_id)
        text_ring = struct.pack("<I4xQQQ", self.size_bits, data_vaddr, self.head_lpos,
                                self.tail_lpos)
        return (desc_ring + text_ring).ljust(PRB_SIZE, b"\0")

    def install(self, kernel: SyntheticKernel) -> None:
        """Place the ring in the kernel's memory; SYMBOL(prb) points to a pointer to it."""
        descs = kernel.place(bytes(self.descs_bytes()))
        infos = kernel.place(bytes(self.infos_bytes()))
        data = kernel.place(bytes(self.data))
        prb = kernel.place(self.prb_bytes(descs, infos, data))
        kernel.set_vmcoreinfo({"SYMBOL(prb)": kernel.place(struct.pack("<Q", prb))})


class PrintkLogBuilder:
    """log_buf of ``buf_len`` bytes with struct printk_log records (3.5 .. 5.9)."""

    def __init__(self, buf_len: int = 4096, *, caller_id: bool = False,
                 struct_name: str = "printk_log") -> None:
        self.buf = bytearray(buf_len)
        self.caller_id = caller_id
        self.struct_name = struct_name  # "log" before v3.11
        self.header = 24 if caller_id else 16  # u64 ts; u16 len, text_len, dict_len; u8 x2
        self.first_idx = self.next_idx = 0
        self.first_seq = self.next_seq = 0
        self.records: dict[int, Record] = {}  # seq -> record

    def _len(self, idx: int) -> int:
        return int(struct.unpack_from("<H", self.buf, idx + 8)[0])

    def _log_next(self, idx: int) -> int:
        length = self._len(idx)
        return self._len(0) if length == 0 else idx + length

    def _has_space(self, size: int, empty: bool) -> bool:
        if self.next_idx > self.first_idx or empty:
            free = max(len(self.buf) - self.next_idx, self.first_idx)
        else:
            free = self.first_idx - self.next_idx
        return free >= size + self.header

    def add(self, text: bytes, ts_nsec: int, caller_id: int = 0) -> None:
        size = self.header + len(text)
        size += -size % 8  # LOG_ALIGN
        # log_make_free_space
        while self.first_seq < self.next_seq and not self._has_space(size, False):
            self.first_idx = self._log_next(self.first_idx)
            del self.records[self.first_seq]
            self.first_seq += 1
        if not self._has_space(size, self.first_seq == self.next_seq):
            raise ValueError("record too long for this log_buf")
        if self.next_idx + size + self.header > len(self.buf):
            self.buf[self.next_idx : self.next_idx + self.header] = bytes(self.header)
            self.next_idx = 0
        head = struct.pack("<QHHHBB", ts_nsec, size, len(text), 0, 0, 0)
        if self.caller_id:
            head += struct.pack("<I4x", caller_id)
        at = self.next_idx
        self.buf[at : at + size] = (head + text).ljust(size, b"\0")
        self.next_idx += size
        self.records[self.next_seq] = Record(ts_nsec, text, caller_id if self.caller_id else 0)
        self.next_seq += 1

    def expected(self) -> list[Record]:
        return [self.records[s] for s in range(self.first_seq, self.next_seq)]

    def install(self, kernel: SyntheticKernel) -> None:
        """Place log_buf and its variables; VMCOREINFO as a 5.x kernel before 5.10 has it."""
        buf = kernel.place(bytes(self.buf))
        name = self.struct_name
        entries: dict[str, int | None] = dict.fromkeys(PRB_RING_KEYS)
        entries.update({
            "SYMBOL(log_buf)": kernel.place(struct.pack("<Q", buf)),
            "SYMBOL(log_buf_len)": kernel.place(struct.pack("<I", len(self.buf))),
            "SYMBOL(log_first_idx)": kernel.place(struct.pack("<I", self.first_idx)),
            "SYMBOL(clear_idx)": kernel.place(struct.pack("<I", self.first_idx)),
            "SYMBOL(log_next_idx)": kernel.place(struct.pack("<I", self.next_idx)),
            f"SIZE({name})": self.header,
            f"OFFSET({name}.ts_nsec)": 0,
            f"OFFSET({name}.len)": 8,
            f"OFFSET({name}.text_len)": 10,
            f"OFFSET({name}.dict_len)": 12,
        })
        if self.caller_id:
            entries[f"OFFSET({name}.caller_id)"] = 16
        kernel.set_vmcoreinfo(entries)

