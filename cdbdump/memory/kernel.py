"""Kernel virtual memory of the crashed machine: page-table walks over the dump.

Every virtual read is a page-table walk, as in makedumpfile (readmem VADDR →
vaddr_to_paddr_x86_64 → __vtop4_x86_64); there is no direct-map shortcut. The
top table is found physically, from VMCOREINFO, never by recursive
translation (reference: makedumpfile arch/x86_64.c; drgn resolves
swapper_pg_dir through phys_base "to avoid recursive address translation").
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

from cdbdump.errors import (
    BadVmcoreInfoValue,
    InputReadError,
    MissingVmcoreInfoKey,
    NotInDumpError,
)
from cdbdump.formats.elf import LoadSegment
from cdbdump.formats.x86_64 import (
    PAGE_OFFSET_L4_DEFAULT,
    PAGE_OFFSET_L5_DEFAULT,
    PTE_PFN_MASK,
    START_KERNEL_MAP,
)
from cdbdump.memory.physical import ElfMemory, PhysicalMemory, fill, view_run
from cdbdump.memory.x86_64 import PageTableWalker, Run
from cdbdump.vmcore.vmcoreinfo import VmcoreInfo

__all__ = ("KernelMemory",)

_MAX_PADDR = 1 << 52  # x86_64 physical address width limit (bits 0..51)


class KernelMemory:
    """Reads kernel virtual addresses of a dump through its own page tables."""

    def __init__(
        self,
        phys: PhysicalMemory,
        walker: PageTableWalker,
        *,
        phys_base: int,
        page_offset: int,
    ) -> None:
        self.phys = phys
        self.walker = walker
        self.phys_base = phys_base
        self.page_offset = page_offset

    @property
    def levels(self) -> int:
        return self.walker.levels

    @classmethod
    def from_vmcoreinfo(
        cls,
        phys: PhysicalMemory,
        info: VmcoreInfo,
        *,
        loads: Iterable[LoadSegment] = (),
        phys_base: int | None = None,
    ) -> KernelMemory:
        """Build the translation from VMCOREINFO (reference: makedumpfile
        arch/x86_64.c get_phys_base_x86_64, get_versiondep_info_x86_64).

        ``loads`` (the input PT_LOADs) is only used for the fallbacks makedumpfile
        has when VMCOREINFO lacks NUMBER(phys_base), and for PAGE_OFFSET;
        ``phys_base`` is the container's own (a kdump sub-header's) for that case.

        Raises:
            MissingVmcoreInfoKey: neither SYMBOL(init_top_pgt) nor SYMBOL(init_level4_pgt).
            BadVmcoreInfoValue: a key whose value cannot describe an x86_64 kernel.
        """
        loads = tuple(loads)
        key = "SYMBOL(init_top_pgt)"
        top = info.get_symbol("init_top_pgt")
        if top is None:
            # Before Linux kernel commit 65ade2f872b4 ("x86/boot/64: Rename
            # init_level4_pgt and early_level4_pgt") (in v4.13) the top table
            # was init_level4_pgt.
            key = "SYMBOL(init_level4_pgt)"
            top = info.get_symbol("init_level4_pgt")
        if top is None:
            raise MissingVmcoreInfoKey("SYMBOL(init_top_pgt)", "x86_64 address translation")

        if info.phys_base is not None:
            phys_base = info.phys_base
        elif phys_base is None:
            phys_base = phys_base_from_loads(loads) or 0  # makedumpfile's default
        l5 = info.get_number("pgtable_l5_enabled")
        if l5 not in (None, 0, 1):
            raise BadVmcoreInfoValue("NUMBER(pgtable_l5_enabled)", str(l5), "expected 0 or 1")
        levels = 5 if l5 else 4
        sme_mask = info.get_number("sme_mask") or 0
        if sme_mask < 0 or sme_mask & ~PTE_PFN_MASK:
            raise BadVmcoreInfoValue(
                "NUMBER(sme_mask)", str(sme_mask), "not a bit mask within physical address bits"
            )

        if top < START_KERNEL_MAP:
            raise BadVmcoreInfoValue(key, f"{top:x}", "top page table is not in the kernel image")
        root_paddr = top - START_KERNEL_MAP + phys_base
        if root_paddr < 0 or root_paddr >= _MAX_PADDR or root_paddr & 0xFFF:
            raise BadVmcoreInfoValue(
                "NUMBER(phys_base)",
                str(phys_base),
                f"top page table at physical {root_paddr:#x} is not a page-aligned address",
            )
        walker = PageTableWalker(phys, root_paddr, levels, sme_mask)
        return cls(phys, walker, phys_base=phys_base,
                   page_offset=_page_offset(loads, levels))

    # -- translation ---------------------------------------------------------------

    def translate(self, vaddr: int) -> int:
        return self.walker.translate(vaddr)

    def kernel_image_paddr(self, vaddr: int) -> int:
        """Physical address of a kernel-image (text/data/bss) address, without a walk."""
        return vaddr - START_KERNEL_MAP + self.phys_base

    def is_kvaddr(self, vaddr: int) -> bool:
        # reference: makedumpfile is_kvaddr (addr >= PAGE_OFFSET on x86_64)
        return vaddr >= self.page_offset

    # -- reads -------------------------------------------------------------------------

    def read(self, vaddr: int, size: int) -> bytes:
        """``size`` bytes at kernel address ``vaddr``.

        Raises:
            NotMappedError: part of the range is not mapped.
            NotInDumpError: a page table or the data is not in the dump.
        """
        out = bytearray()
        cursor = vaddr
        for run_vaddr, paddr, run_size in self.walker.iter_runs(vaddr, vaddr + size):
            if run_vaddr != cursor:
                self.walker.translate(cursor)  # raises NotMappedError with the details
                raise NotInDumpError(cursor, run_vaddr - cursor)  # pragma: no cover
            out += self.phys.read(paddr, run_size)
            cursor = run_vaddr + run_size
        if cursor != vaddr + size:
            self.walker.translate(cursor)  # raises NotMappedError with the details
            raise NotInDumpError(cursor, vaddr + size - cursor)  # pragma: no cover
        return bytes(out)

    def read_u64(self, vaddr: int) -> int:
        return int.from_bytes(self.read(vaddr, 8), "little")

    def gather(
        self, vaddr: int, scratch: npt.NDArray[np.uint8]
    ) -> tuple[npt.NDArray[np.uint8], list[tuple[int, int]]]:
        """The bytes at [vaddr, vaddr + scratch.size) and their unreadable ranges.

        Zero-copy (a read-only array over the container's bytes) when the range
        is one physical run inside one stored piece of a container that hands
        out its bytes (a kdump-compressed page cache); otherwise, and always for
        an ELF file (read straight into ``scratch``, no buffer allocated per
        call), the bytes are copied into ``scratch`` as read_into does.
        """
        size = scratch.size
        runs = list(self.walker.iter_runs(vaddr, vaddr + size, strict=False))
        if (len(runs) == 1 and runs[0][0] == vaddr and runs[0][2] == size
                and not isinstance(self.phys, ElfMemory)):
            try:
                view = view_run(self.phys, runs[0][1], size)
            except InputReadError:
                view = None  # _fill below finds which part is unreadable
            if view is not None:
                return np.frombuffer(view, dtype=np.uint8), []
        return scratch, self._fill(vaddr, scratch, runs)

    def read_into(self, vaddr: int, out: npt.NDArray[np.uint8]) -> list[tuple[int, int]]:
        """Fill ``out`` with the bytes at [vaddr, vaddr + out.size); never raises for holes.

        Returns the (offset, length) byte ranges of ``out`` that could not be
        read (not mapped, page table or data not in the dump, or beyond p_filesz);
        those bytes are zero. This is the bulk path for mem_map chunks.
        """
        runs = self.walker.iter_runs(vaddr, vaddr + out.size, strict=False)
        return self._fill(vaddr, out, runs)

    def _fill(
        self, vaddr: int, out: npt.NDArray[np.uint8], runs: Iterable[Run]
    ) -> list[tuple[int, int]]:
        size = out.size
        missing: list[tuple[int, int]] = []
        cursor = 0
        for run_vaddr, paddr, run_size in runs:
            offset = run_vaddr - vaddr
            if offset > cursor:
                missing.append((cursor, offset - cursor))
            missing.extend((offset + ext.paddr - paddr, ext.size)
                           for ext in fill(self.phys, paddr, out[offset : offset + run_size],
                                           salvage=True))
            cursor = offset + run_size
        if cursor < size:
            missing.append((cursor, size - cursor))
        for offset, length in missing:
            out[offset : offset + length] = 0
        return missing


def phys_base_from_loads(loads: Iterable[LoadSegment]) -> int | None:
    """phys_base from the kernel-text PT_LOAD, when VMCOREINFO lacks NUMBER(phys_base).

    reference: makedumpfile get_phys_base_x86_64: that segment gives
    phys_base = p_paddr - (p_vaddr - __START_KERNEL_map).
    """
    for seg in loads:
        if seg.vaddr >= START_KERNEL_MAP:
            return seg.paddr - (seg.vaddr - START_KERNEL_MAP)
    return None


def _page_offset(loads: tuple[LoadSegment, ...], levels: int) -> int:
    # reference: makedumpfile get_page_offset_x86_64: p_vaddr - p_paddr of a
    # direct-map PT_LOAD (p_vaddr 0 means "no virtual address", as in QEMU
    # dumps), else the non-KASLR default base.
    for seg in loads:
        if 0 < seg.vaddr < START_KERNEL_MAP and seg.vaddr >= seg.paddr:
            return seg.vaddr - seg.paddr
    return PAGE_OFFSET_L5_DEFAULT if levels == 5 else PAGE_OFFSET_L4_DEFAULT
