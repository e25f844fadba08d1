"""makedumpfile's ELF dump (-E): the input's notes and PT_LOADs with excluded
runs left out as holes (p_filesz < p_memsz).

File layout (reference: makedumpfile write_elf_header, get_loads_dumpfile_cyclic,
write_elf_pages_cyclic, write_elf_load_segment):

=================================  ==============================================
Elf64_Ehdr (64 bytes)              offset 0; the input's, e_phoff 64
Elf64_Phdr table                   offset 64: PT_NOTE first, then the PT_LOADs
(Elf64_Shdr, PN_XNUM only)         one SHT_NULL header whose sh_info is e_phnum
copy of the input PT_NOTE bytes    right after the tables
PT_LOAD data, packed               right after the notes, no alignment
=================================  ==============================================

Each input PT_LOAD is walked in program-header order. A run of 256 or more
excluded pages (PFN_EXCLUDED) followed by a dumpable page ends the output
segment (its p_memsz covers the run, its p_filesz does not) and starts a new
one at that page; shorter runs are kept with their real data. Excluded pages
at the end of an input segment are in p_memsz only. Zero pages (dump level
bit 1) are cleared from the 2nd bitmap before planning, so every dumpable
page is read twice, as in makedumpfile (exclude_zero_pages_cyclic).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from cdbdump.bitmap import Bitmap
from cdbdump.errors import InputReadError, OutputError, OutputNoSpaceError
from cdbdump.formats.elf import (
    ELF64_EHDR,
    ELF64_PHDR,
    ELF64_SHDR,
    PN_XNUM,
    PT_LOAD,
    PT_NOTE,
    LoadSegment,
)
from cdbdump.memory.physical import ExtentKind, PhysicalMemory, fill, view_run
from cdbdump.report import PageProgress
from cdbdump.writers.sink import Sink

__all__ = (
    "DUMP_ELF_INCOMPLETE",
    "PFN_EXCLUDED",
    "ElfPlan",
    "ElfSegment",
    "ElfWriteResult",
    "exclude_zero_pages",
    "mark_elf_incomplete",
    "plan_elf",
    "write_elf",
)

PFN_EXCLUDED = 256  # makedumpfile.h: shorter excluded runs are dumped with their data
DUMP_ELF_INCOMPLETE = 0x1  # e_flags bit of a dump cut short (check_and_modify_elf_headers)
E_FLAGS_OFFSET = 48  # Elf64_Ehdr.e_flags
_PLAN_PFNS = 1 << 20  # pfns of one input segment classified at a time
_COPY_BYTES = 2 << 20  # PT_LOAD data copied 2 MiB at a time
_ZERO_WINDOW = 512  # pages zero-tested at a time



@dataclass(frozen=True, slots=True)
class ElfSegment:
    """One output PT_LOAD."""

    paddr: int
    vaddr: int
    memsz: int
    filesz: int
    file_offset: int  # p_offset in the output (0 when filesz is 0, except a last piece)
    flags: int
    align: int


@dataclass(slots=True)
class ElfPlan:
    """Everything the ELF file holds except page data."""

    segments: list[ElfSegment]
    offset_note: int
    notes_size: int
    offset_load: int
    file_size: int
    nr_pages_elf_excluded: int  # makedumpfile pfn_elf_excluded: pages really left out
    nr_pages_to_write: int  # pages (or page fractions) of PT_LOAD data

    @property
    def e_phnum_real(self) -> int:
        return 1 + len(self.segments)


@dataclass(slots=True)
class ElfWriteResult:
    plan: ElfPlan
    bytes_written: int = 0  # file size reached
    no_space: OutputNoSpaceError | None = None
    nr_pages_lost: int = 0
    # input pages that could not be read (pfn, file offset, why): written as zeros here;
    # the caller excludes them and writes again (deliver)
    unreadable: list[tuple[int, int, str]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


# -- the zero-page pass -------------------------------------------------------------------


def exclude_zero_pages(
    memory: PhysicalMemory, bitmap2: Bitmap, progress: PageProgress | None = None,
    window_pfns: int = _PLAN_PFNS,
) -> int:
    """Clear all-zero dumpable pages from ``bitmap2``, ``window_pfns`` of it at a time
    (--cyclic-buffer; the result is the same whatever it is); return how many.

    reference: makedumpfile exclude_zero_pages_cyclic (every 8-byte word 0).
    Pages that lie in holes of a sparse input are zero without being read.
    """
    ps = memory.page_size
    buf = np.empty(_ZERO_WINDOW * ps, dtype=np.uint8)
    total = bitmap2.count()
    done = 0
    nr_zero = 0
    for window in bitmap2.iter_set_pfns(max(8, window_pfns)):
        zero_pfns: list[npt.NDArray[np.int64]] = []
        for lo in range(0, window.size, _ZERO_WINDOW):
            pfns = window[lo : lo + _ZERO_WINDOW]
            zero = _zero_pages(memory, pfns, buf)
            zero_pfns.append(pfns[zero])
            done += int(pfns.size)
        cleared = np.concatenate(zero_pfns)
        if cleared.size:
            first = int(window[0])
            span = int(window[-1]) - first + 1
            keep = bitmap2.get_bools(first, first + span).copy()
            keep[cleared - first] = False
            bitmap2.put_bools(first, keep)
            bitmap2.release()  # a mapped bitmap: the window leaves the process
            nr_zero += int(cleared.size)
        if progress is not None:
            progress(done, total)
    return nr_zero


def _zero_pages(
    memory: PhysicalMemory, pfns: npt.NDArray[np.int64], buf: npt.NDArray[np.uint8]
) -> npt.NDArray[np.bool_]:
    """True for the pages of ``pfns`` that are all zero."""
    ps = memory.page_size
    in_hole = memory.known_zero_frames(pfns)
    zero = np.ones(pfns.size, dtype=np.bool_) if in_hole is not None else np.zeros(
        pfns.size, dtype=np.bool_)
    read = pfns if in_hole is None else pfns[~in_hole]
    if read.size:
        unreadable: npt.NDArray[np.bool_] | None = None
        try:
            data = _read_pages(memory, read, buf)
        except InputReadError:  # error path: such a page is not zero; write_elf lists it
            unreadable = np.zeros(read.size, dtype=np.bool_)
            data = _read_pages(memory, read, buf, unreadable)
        words = np.frombuffer(data, dtype=np.uint64).reshape(read.size, ps // 8)
        read_zero = np.logical_not(words.any(axis=1))
        if unreadable is not None:
            read_zero &= ~unreadable
        if in_hole is None:
            zero = read_zero
        else:
            zero[~in_hole] = read_zero
        memory.release(int(read[0]) * ps, (int(read[-1]) + 1 - int(read[0])) * ps)
    return zero


def _read_pages(
    memory: PhysicalMemory,
    pfns: npt.NDArray[np.int64],
    buf: npt.NDArray[np.uint8],
    unreadable: npt.NDArray[np.bool_] | None = None,
) -> memoryview | npt.NDArray[np.uint8]:
    """The pages of ``pfns`` (ascending) as contiguous bytes; missing bytes read as 0.

    With ``unreadable`` (one flag per pfn) pages the input cannot deliver are
    zeroed and flagged instead of raising InputReadError.
    """
    ps = memory.page_size
    shift = ps.bit_length() - 1
    n = int(pfns.size)
    first = int(pfns[0])
    span = int(pfns[-1]) - first + 1
    # one read of the whole span only when it fits the buffer: sparse pfns would read
    # (and hold) every page between them
    view = (view_run(memory, first << shift, span * ps)
            if unreadable is None and span * ps <= buf.size else None)
    if view is not None:
        if span == n:
            return view
        rows = np.frombuffer(view, dtype=np.uint8).reshape(span, ps)
        out = buf[: n * ps].reshape(n, ps)
        np.take(rows, pfns - first, axis=0, out=out)
        return buf[: n * ps]
    breaks = np.flatnonzero(np.diff(pfns) != 1) + 1
    starts = np.concatenate(([0], breaks)).tolist()
    ends = np.concatenate((breaks, [n])).tolist()
    for lo, hi in zip(starts, ends, strict=True):
        base = int(pfns[lo])
        missing = fill(memory, base << shift, buf[lo * ps : hi * ps],
                       salvage=unreadable is not None)
        if unreadable is not None:
            for ext in missing:
                if ext.kind is ExtentKind.ABSENT:  # dumpable pages are stored: read errors
                    unreadable[lo + (ext.paddr >> shift) - base :
                               lo + ((ext.end - 1) >> shift) - base + 1] = True
    return buf[: n * ps]


# -- planning -----------------------------------------------------------------------------


def plan_elf(
    loads: Sequence[LoadSegment],
    memory: PhysicalMemory,
    bitmap2: Bitmap,
    notes_size: int,
    *,
    exclude_zero: bool,
    window_pfns: int = _PLAN_PFNS,
) -> ElfPlan:
    """The output PT_LOADs, from the input's and the (zero-excluded) 2nd bitmap.

    Pages at or beyond ``bitmap2.nr_bits`` (max_mapnr lowered to the last
    mem_map section, e.g. QEMU's BIOS ROM at 4 GiB) have no bit: as in
    makedumpfile, whose ELF cycles run over each PT_LOAD's own pfns, they are
    dumpable when file-backed, and not zero under dump level bit 1.
    """
    cut: list[tuple[ElfSegment, bool]] = []
    nr_excluded = 0
    nr_write = 0
    for seg in loads:
        pieces, excluded, pages = _split_load(seg, memory, bitmap2, exclude_zero,
                                              max(8, window_pfns))
        cut.extend(pieces)
        nr_excluded += excluded
        nr_write += pages
    nr_phdr = 1 + len(cut)
    offset_note = ELF64_EHDR.size + ELF64_PHDR.size * nr_phdr
    if nr_phdr >= PN_XNUM:
        offset_note += ELF64_SHDR.size
    offset_load = offset_note + notes_size
    placed: list[ElfSegment] = []
    cursor = offset_load
    for s, last_of_load in cut:
        # a piece without data gets p_offset 0, except the last of its input
        # PT_LOAD (write_elf_pages_cyclic writes that one unconditionally)
        off = cursor if s.filesz or last_of_load else 0
        placed.append(ElfSegment(s.paddr, s.vaddr, s.memsz, s.filesz, off, s.flags, s.align))
        cursor += s.filesz
    return ElfPlan(placed, offset_note, notes_size, offset_load, cursor, nr_excluded, nr_write)


def _split_load(
    seg: LoadSegment, memory: PhysicalMemory, bitmap2: Bitmap, exclude_zero: bool,
    window_pfns: int = _PLAN_PFNS,
) -> tuple[list[tuple[ElfSegment, bool]], int, int]:
    """Cut one input PT_LOAD: ((segment, is last of the load) ..., pages left out,
    pages written). p_offset is placed later by plan_elf."""
    ps = memory.page_size
    shift = ps.bit_length() - 1
    memsz = seg.memsz
    head = (-seg.paddr) % ps  # bytes of a partial first page, always kept
    pfn_first = (seg.paddr + ps - 1) >> shift
    pfn_end = (seg.paddr + memsz + ps - 1) >> shift
    n = max(0, pfn_end - pfn_first)

    def pos(index: int) -> int:
        return min(head + index * ps, memsz)

    cuts, tail_start = _excluded_runs(
        _dumpable_chunks(seg, memory, bitmap2, pfn_first, n, exclude_zero, window_pfns)
    )
    starts = [0, *(b for _, b in cuts)]
    out: list[tuple[ElfSegment, bool]] = []
    nr_write_bytes = 0
    for k, start_index in enumerate(starts):
        start_byte = 0 if k == 0 else pos(start_index)
        last = k == len(starts) - 1
        if last:
            end_byte = memsz
            data_end = pos(tail_start) if tail_start is not None else memsz
        else:
            end_byte = pos(cuts[k][1])
            data_end = pos(cuts[k][0])
        filesz = max(0, data_end - start_byte)
        nr_write_bytes += filesz
        out.append((ElfSegment(seg.paddr + start_byte, seg.vaddr + start_byte,
                               end_byte - start_byte, filesz, 0, seg.flags, seg.align), last))
    excluded = sum(b - a for a, b in cuts) + (n - tail_start if tail_start is not None else 0)
    return out, excluded, -(-nr_write_bytes // ps)


def _dumpable_chunks(
    seg: LoadSegment,
    memory: PhysicalMemory,
    bitmap2: Bitmap,
    pfn_first: int,
    n: int,
    exclude_zero: bool,
    window_pfns: int = _PLAN_PFNS,
) -> Iterator[npt.NDArray[np.bool_]]:
    """Dumpable flags of the pfns [pfn_first, pfn_first + n), a bounded chunk at a time."""
    ps = memory.page_size
    shift = ps.bit_length() - 1
    limit = bitmap2.nr_bits
    # beyond max_mapnr: inside the PT_LOAD's whole pages (create_bitmap_from_memhole)
    # and file-backed (exclude_nodata_pages)
    extra_lo = seg.paddr >> shift
    extra_hi = min((seg.paddr + seg.memsz) >> shift, (seg.paddr + seg.filesz + ps - 1) >> shift)
    own_hi = (seg.paddr + seg.filesz + ps - 1) >> shift  # pages with bytes of its own data
    buf = np.empty(_ZERO_WINDOW * ps, dtype=np.uint8)
    for c0 in range(0, n, window_pfns):
        lo = pfn_first + c0
        hi = pfn_first + min(n, c0 + window_pfns)
        parts: list[npt.NDArray[np.bool_]] = []
        if lo < limit:
            bools = bitmap2.get_bools(lo, min(hi, limit)).copy()  # a copy: then released
            bitmap2.release()
            if own_hi < min(hi, limit):
                # a page only this segment's p_memsz covers: another segment may store
                # it, and writes it (each segment writes its own file data at most)
                bools[max(0, own_hi - lo) :] = False
            parts.append(bools)
        if hi > limit:
            elo = max(lo, limit)
            pfns = np.arange(elo, hi, dtype=np.int64)
            extra = (pfns >= extra_lo) & (pfns < extra_hi)
            if exclude_zero and extra.any():
                cand = pfns[extra]
                for z0 in range(0, cand.size, _ZERO_WINDOW):
                    window = cand[z0 : z0 + _ZERO_WINDOW]
                    zero = _zero_pages(memory, window, buf)
                    extra[window[zero] - elo] = False
            parts.append(extra)
        yield np.concatenate(parts) if len(parts) > 1 else parts[0]


def _excluded_runs(
    chunks: Iterator[npt.NDArray[np.bool_]],
) -> tuple[list[tuple[int, int]], int | None]:
    """Runs of >= PFN_EXCLUDED excluded pages followed by a dumpable one, and the
    start of the trailing excluded run (None when the last page is dumpable)."""
    cuts: list[tuple[int, int]] = []
    run_start: int | None = None
    base = 0
    for bools in chunks:
        m = int(bools.size)
        idx = np.flatnonzero(bools)
        if idx.size == 0:
            if run_start is None and m:
                run_start = base
            base += m
            continue
        first = base + int(idx[0])
        if run_start is None and idx[0] > 0:
            run_start = base
        if run_start is not None and first - run_start >= PFN_EXCLUDED:
            cuts.append((run_start, first))
        gaps = np.flatnonzero(np.diff(idx) > PFN_EXCLUDED)
        cuts.extend((base + int(idx[k]) + 1, base + int(idx[k + 1])) for k in gaps.tolist())
        last = int(idx[-1])
        run_start = base + last + 1 if last < m - 1 else None
        base += m
    return cuts, run_start


# -- writing ------------------------------------------------------------------------------


def write_elf(
    sink: Sink,
    input_ehdr: bytes,
    notes_raw: bytes,
    plan: ElfPlan,
    memory: PhysicalMemory,
    progress: PageProgress | None = None,
    *,
    reserve: bool = True,
) -> ElfWriteResult:
    """Write the ELF dump of ``plan``; the output fills up → ``no_space`` is set.

    ``reserve`` writes the program-header area as zeros first, as makedumpfile
    does on a regular file (reserve_diskspace), so "Write bytes" counts alike.
    """
    t0 = time.perf_counter()
    result = ElfWriteResult(plan)
    ehdr, phdrs, shdr = _headers(input_ehdr, plan)
    written_pages = 0
    try:
        if reserve:
            sink.pwrite(bytes(plan.offset_note - ELF64_EHDR.size), ELF64_EHDR.size)
        if shdr:
            sink.pwrite(shdr, plan.offset_note - ELF64_SHDR.size)
        sink.pwrite(ehdr, 0)
        if notes_raw:
            sink.pwrite(notes_raw, plan.offset_note)
        sink.pwrite(phdrs, ELF64_EHDR.size)
        ps = memory.page_size
        for s in plan.segments:
            if not s.filesz:
                continue
            done = 0
            while done < s.filesz:
                size = min(_COPY_BYTES, s.filesz - done)
                paddr = s.paddr + done
                try:
                    data = view_run(memory, paddr, size)
                    if data is None:
                        data = memoryview(memory.read(paddr, size))
                except InputReadError:
                    data = memoryview(_salvage(memory, paddr, size, result.unreadable))
                try:
                    sink.pwrite(data, s.file_offset + done)
                except OutputNoSpaceError as exc:
                    written_pages += exc.written // ps  # whole pages that made it
                    raise
                memory.release(paddr, size)
                done += size
                written_pages += -(-size // ps)
                if progress is not None:
                    progress(min(written_pages, plan.nr_pages_to_write), plan.nr_pages_to_write)
    except OutputNoSpaceError as exc:
        result.no_space = exc
        result.nr_pages_lost = max(0, plan.nr_pages_to_write - written_pages)
    result.bytes_written = sink.size
    result.timings["write"] = time.perf_counter() - t0
    return result


def _salvage(
    memory: PhysicalMemory, paddr: int, size: int, unreadable: list[tuple[int, int, str]]
) -> bytes:
    """Error path of write_elf: [paddr, paddr+size) page by page, zeros where the
    input cannot be read (each such page appended to ``unreadable``)."""
    ps = memory.page_size
    out = bytearray(size)
    cur = paddr
    while cur < paddr + size:
        stop = min(paddr + size, (cur // ps + 1) * ps)
        try:
            out[cur - paddr : stop - paddr] = memory.read(cur, stop - cur)
        except InputReadError as exc:
            if not unreadable or unreadable[-1][0] != cur // ps:
                unreadable.append((cur // ps, exc.file_offset, exc.detail))
        cur = stop
    return bytes(out)


def mark_elf_incomplete(sink: Sink, input_ehdr: bytes) -> None:
    """Set DUMP_ELF_INCOMPLETE in e_flags (makedumpfile check_and_modify_elf_headers)."""
    e_flags = ELF64_EHDR.unpack(input_ehdr[: ELF64_EHDR.size])[7] | DUMP_ELF_INCOMPLETE
    sink.pwrite(e_flags.to_bytes(4, "little"), E_FLAGS_OFFSET)


def _headers(input_ehdr: bytes, plan: ElfPlan) -> tuple[bytes, bytes, bytes]:
    if len(input_ehdr) < ELF64_EHDR.size:
        raise OutputError(f"input ELF header is {len(input_ehdr)} bytes")
    (ident, e_type, e_machine, e_version, e_entry, _phoff, _shoff, e_flags, _ehsize,
     _phentsize, _phnum, _shentsize, _shnum, _shstrndx) = ELF64_EHDR.unpack(
        input_ehdr[: ELF64_EHDR.size])
    nr_phdr = plan.e_phnum_real
    shdr = b""
    if nr_phdr >= PN_XNUM:
        # extended numbering: e_phnum PN_XNUM, the count in section header 0's sh_info
        shoff = plan.offset_note - ELF64_SHDR.size
        shdr = ELF64_SHDR.pack(0, 0, 0, 0, 0, 1, 0, nr_phdr, 0, 0)
        ehdr = ELF64_EHDR.pack(ident, e_type, e_machine, e_version, e_entry, ELF64_EHDR.size,
                               shoff, e_flags, ELF64_EHDR.size, ELF64_PHDR.size, PN_XNUM,
                               ELF64_SHDR.size, 1, 0)
    else:
        # the input's section headers (QEMU's .shstrtab) are not carried over
        ehdr = ELF64_EHDR.pack(ident, e_type, e_machine, e_version, e_entry, ELF64_EHDR.size,
                               0, e_flags, ELF64_EHDR.size, ELF64_PHDR.size, nr_phdr, 0, 0, 0)
    table = bytearray(ELF64_PHDR.pack(PT_NOTE, 0, plan.offset_note, 0, 0, plan.notes_size,
                                      plan.notes_size, 0))
    for s in plan.segments:
        table += ELF64_PHDR.pack(PT_LOAD, s.flags, s.file_offset, s.vaddr, s.paddr, s.filesz,
                                 s.memsz, s.align)
    return ehdr, bytes(table), shdr
