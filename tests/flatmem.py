"""FlatMemory: kernel memory made of a few placed buffers, with holes, for log tests.

It implements cdbdump.printk's KernelReader protocol (read / read_into) the way
KernelMemory does: bytes that were never placed (or were dropped) are not in the
dump. FlatKernel lets RingBuilder/PrintkLogBuilder.install() fill it as they fill
a SyntheticKernel.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from cdbdump.errors import NotInDumpError
from cdbdump.printk import KernelLog, read_kernel_log
from cdbdump.vmcore.vmcoreinfo import VmcoreInfo
from tests.builders import make_vmcoreinfo

__all__ = ("BASE", "FlatKernel", "FlatMemory")

BASE = 0xFFFFFFFF82000000  # where buffers are placed


class FlatMemory:
    """Kernel memory made of placed byte strings; everything else is not in the dump."""

    def __init__(self) -> None:
        self.data = np.zeros(0, dtype=np.uint8)  # bytes from BASE on
        self.present = np.zeros(0, dtype=bool)
        self.cursor = 0

    def _grow(self, end: int) -> None:
        if end > self.data.size:
            size = max(end, 2 * self.data.size)
            self.data = np.concatenate([self.data, np.zeros(size - self.data.size, np.uint8)])
            self.present = np.concatenate([self.present, np.zeros(size - self.present.size,
                                                                  bool)])

    def place(self, data: bytes) -> int:
        """Put ``data`` at the next free page; return its vaddr."""
        at = self.cursor
        self.poke(BASE + at, data)
        self.cursor = (at + len(data) + 0x1FFF) & ~0xFFF  # a page of hole after each
        return BASE + at

    def drop(self, vaddr: int, size: int) -> None:
        self.present[vaddr - BASE : vaddr - BASE + size] = False

    def poke(self, vaddr: int, data: bytes) -> None:
        at = vaddr - BASE
        self._grow(at + len(data))
        self.data[at : at + len(data)] = np.frombuffer(data, dtype=np.uint8)
        self.present[at : at + len(data)] = True

    def _window(self, vaddr: int, size: int) -> tuple[int, int, int]:
        """(offset in the caller's buffer, offset in data, length) of what lies in data."""
        lo = max(vaddr - BASE, 0)
        hi = min(vaddr - BASE + size, self.data.size)
        return (lo - (vaddr - BASE), lo, max(hi - lo, 0))

    def read(self, vaddr: int, size: int) -> bytes:
        _, src, n = self._window(vaddr, size)
        if n != size or not self.present[src : src + n].all():
            raise NotInDumpError(vaddr, size)
        return self.data[src : src + n].tobytes()

    def read_into(self, vaddr: int, out: npt.NDArray[np.uint8]) -> list[tuple[int, int]]:
        out[:] = 0
        have = np.zeros(out.size, dtype=bool)
        dst, src, n = self._window(vaddr, out.size)
        if n:
            have[dst : dst + n] = self.present[src : src + n]
            out[dst : dst + n] = np.where(have[dst : dst + n], self.data[src : src + n], 0)
        if have.all():
            return []
        edges = np.flatnonzero(np.diff(np.concatenate([[1], have.astype(np.int8), [1]])))
        return [(int(a), int(b - a)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


class FlatKernel:
    """Buffers installed into FlatMemory instead of a SyntheticKernel (same two methods)."""

    def __init__(self) -> None:
        self.memory = FlatMemory()
        self.entries: dict[str, int | str | None] = {}
        self.placed: list[int] = []  # in the order install() placed them

    # the two methods RingBuilder.install / PrintkLogBuilder.install use
    def place(self, data: bytes) -> int:
        self.placed.append(self.memory.place(data))
        return self.placed[-1]

    def set_vmcoreinfo(self, entries: dict[str, int | None]) -> None:
        self.entries.update(entries)

    def info(self, dialect: str = "6.1") -> VmcoreInfo:
        return VmcoreInfo.parse(make_vmcoreinfo(dialect, **self.entries))

    def read(self) -> KernelLog:
        return read_kernel_log(self.memory, self.info())
