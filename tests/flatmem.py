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
        self.mem: dict[int, int] = {}  # vaddr -> byte, small buffers only
        self.cursor = BASE

    def place(self, data: bytes) -> int:
        at = self.cursor
        for i, b in enumerate(data):
            self.mem[at + i] = b
        self.cursor = (at + len(data) + 0x1000) & ~0xFFF
        return at

    def drop(self, vaddr: int, size: int) -> None:
        for a in range(vaddr, vaddr + size):
            self.mem.pop(a, None)

    def poke(self, vaddr: int, data: bytes) -> None:
        for i, b in enumerate(data):
            self.mem[vaddr + i] = b

    def read(self, vaddr: int, size: int) -> bytes:
        missing = [a for a in range(vaddr, vaddr + size) if a not in self.mem]
        if missing:
            raise NotInDumpError(missing[0], len(missing))
        return bytes(self.mem[a] for a in range(vaddr, vaddr + size))

    def read_into(self, vaddr: int, out: npt.NDArray[np.uint8]) -> list[tuple[int, int]]:
        holes: list[tuple[int, int]] = []
        for i in range(out.size):
            b = self.mem.get(vaddr + i)
            if b is None:
                out[i] = 0
                if holes and holes[-1][0] + holes[-1][1] == i:
                    holes[-1] = (holes[-1][0], holes[-1][1] + 1)
                else:
                    holes.append((i, 1))
            else:
                out[i] = b
        return holes


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
