"""The kdump-compressed ("diskdump") writer, byte-compatible with makedumpfile.

File layout (reference: makedumpfile write_kdump_header,
write_kdump_pages_and_bitmap_cyclic, write_kdump_page; diskdump_mod.h):

====================================  ========================================
disk_dump_header (464 bytes)          offset 0; rest of block 0 never written
kdump_sub_header (104 bytes)          offset block_size
copy of the input PT_NOTE bytes       offset block_size + 104
1st bitmap (present), block padded    (1 + sub_hdr_size) * block_size
2nd bitmap (dumpable), block padded   right after the 1st
page_desc table, 24 bytes per set     (1 + sub_hdr_size + bitmap_blocks) *
bit of the 2nd bitmap, pfn order      block_size
page data, packed                     right after the page_desc table
====================================  ========================================

With dump level bit 1 (exclude zero pages) zero pages keep their bit in the
2nd bitmap; one raw zero page is written first in the data area and every
all-zero page's descriptor is a copy of that shared descriptor.

Pages are streamed in windows of set pfns: each window is gathered (read
straight into a reused buffer; one read when it is one run inside one PT_LOAD)
on the main thread, compressed on the pool into its own output buffer (zero pages
found as they are compressed) while the next window is read, and written on the
I/O thread as one data write followed by one descriptor write, window after
window; a few windows are in flight, so neither the descriptor table nor the data
is ever held whole, and every descriptor on disk points at data already written
(what makes an ENOSPC-cut dump readable, makedumpfile's "incomplete dumpfile").
Pages in holes of a sparse input are neither read nor compressed.
"""

from __future__ import annotations

import itertools
import struct
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from cdbdump.bitmap import Bitmap
from cdbdump.codecs import Codec
from cdbdump.errors import (
    InputReadError,
    Interrupted,
    NotInDumpError,
    OutputError,
    OutputNoSpaceError,
)
from cdbdump.formats.kdump import (
    DISK_DUMP_HEADER,
    DISK_DUMP_HEADER_STATUS_OFFSET,
    DUMP_DH_COMPRESSED_INCOMPLETE,
    HEADER_VERSION,
    KDUMP_SIGNATURE,
    KDUMP_SUB_HEADER,
    PAGE_DESC_DTYPE,
    UTS_FIELD_LEN,
    UTS_FIELDS,
    bitmap_bytes,
)
from cdbdump.interrupts import deferred
from cdbdump.memory.physical import Extent, ExtentKind, PhysicalMemory, fill, view_run
from cdbdump.report import PageProgress
from cdbdump.writers.compress import CompressedPages, PageCompressor, PendingPages
from cdbdump.writers.sink import Sink

__all__ = (
    "BITMAP_WINDOW_PFNS",
    "DEFAULT_WINDOW_PAGES",
    "KdumpLayout",
    "KdumpMetadata",
    "KdumpWriteResult",
    "mark_incomplete",
    "write_kdump",
)

UTSNAME_SIZE = UTS_FIELD_LEN * len(UTS_FIELDS)  # struct new_utsname: 390 bytes
MAX_MAPNR_32 = 0xFFFFFFFF  # disk_dump_header.max_mapnr is an unsigned int
_FEW_RUNS = 4  # gaps in a window with holes below which _gather reads run by run
DEFAULT_WINDOW_PAGES = 512  # 2 MiB of 4 KiB pages gathered and compressed at a time
# Windows in flight: one read on the main thread while the one before it is
# compressed on the pool and the one before that written on the I/O thread; each
# owns a gather and an output buffer until it is written. 4 was no faster on the
# real 4 GiB vmcore (2 cores) and costs 4 MiB more RSS.
WINDOWS_IN_FLIGHT = 3
# Pfns whose sparse-input holes are looked up at a time (known_zero_frames): a
# few numpy calls per this many pages, not per window; 256 KiB per temporary.
_HOLE_LOOKUP_PFNS = 1 << 15
BITMAP_WINDOW_PFNS = 1 << 20  # pfns of the 2nd bitmap unpacked at a time (1 MiB of bools)
MAX_LISTED_LOST = 1000  # unreadable pages listed one by one in the result (all are counted)

_SUB_HEADER_ERASEINFO_OFFSET = 64  # kdump_sub_header.offset_eraseinfo, then size_eraseinfo
_ERASEINFO_FIELDS = struct.Struct("<qQ")


def _in_groups(arrays: Iterator[npt.NDArray[np.int64]], size: int
               ) -> Iterator[npt.NDArray[np.int64]]:
    """The concatenation of ``arrays`` cut into pieces of ``size`` (the last one shorter)."""
    carry: npt.NDArray[np.int64] | None = None
    for a in arrays:
        if carry is not None:
            a, carry = np.concatenate([carry, a]), None
        whole = a.size - a.size % size
        for lo in range(0, whole, size):
            yield a[lo : lo + size]
        if whole < a.size:
            carry = a[whole:]
    if carry is not None:
        yield carry


@dataclass(frozen=True, slots=True)
class KdumpMetadata:
    """Everything the headers need that is not a bitmap or page data."""

    utsname: bytes  # struct new_utsname (390 bytes) of the crashed kernel
    timestamp_sec: int  # VMCOREINFO CRASHTIME, 0 if absent; tv_usec is always 0
    page_size: int  # = block_size
    max_mapnr: int  # number of pfns the bitmaps cover
    phys_base: int  # NUMBER(phys_base); may be negative (stored two's complement)
    dump_level: int  # the -d level actually used
    notes_raw: bytes  # the input PT_NOTE bytes, copied verbatim
    vmcoreinfo_desc_offset: int | None  # VMCOREINFO text offset within notes_raw
    vmcoreinfo_size: int  # n_descsz of the VMCOREINFO note
    nr_cpus: int  # "CORE"/NT_PRSTATUS notes
    timestamp_usec: int = 0  # a refiltered dump keeps its input's tv_usec
    status_extra: int = 0  # header status bits carried over (INCOMPLETE of a refiltered input)
    eraseinfo: bytes = b""  # a refiltered input's erase information, copied after the data

    def __post_init__(self) -> None:
        if len(self.utsname) != UTSNAME_SIZE:
            raise OutputError(f"utsname is {len(self.utsname)} bytes, must be {UTSNAME_SIZE}")
        ps = self.page_size
        if ps < 4096 // 8 or ps & (ps - 1):
            raise OutputError(f"page size {ps:#x} is not a power of two >= 0x200")
        if self.max_mapnr < 0:
            raise OutputError(f"max_mapnr {self.max_mapnr} is negative")
        if self.vmcoreinfo_desc_offset is not None and not (
            0 <= self.vmcoreinfo_desc_offset
            and self.vmcoreinfo_desc_offset + self.vmcoreinfo_size <= len(self.notes_raw)
        ):
            raise OutputError(
                f"VMCOREINFO at {self.vmcoreinfo_desc_offset:#x}+{self.vmcoreinfo_size:#x} lies "
                f"outside the {len(self.notes_raw):#x} note bytes"
            )


class KdumpLayout(NamedTuple):
    """File offsets of every region (all derived from the metadata and nr_dumpable)."""

    block_size: int
    sub_hdr_size: int  # blocks
    bitmap_size: int  # bytes of ONE bitmap, block padded
    bitmap_blocks: int  # both bitmaps
    offset_note: int
    offset_vmcoreinfo: int  # 0 without a VMCOREINFO note
    offset_bitmap1: int
    offset_bitmap2: int
    offset_page_desc: int
    nr_dumpable: int
    offset_data: int  # first byte after the page_desc table

    @staticmethod
    def bitmap_area(page_size: int, notes_size: int, max_mapnr: int) -> tuple[int, int]:
        """(offset of the 1st bitmap, bytes of one block-padded bitmap): known before
        any page is classified, so the bitmaps can be built in their place."""
        # reference: makedumpfile write_kdump_header
        sub_hdr_size = -(-(KDUMP_SUB_HEADER.size + notes_size) // page_size)
        return (1 + sub_hdr_size) * page_size, bitmap_bytes(max_mapnr, page_size)

    @classmethod
    def compute(cls, meta: KdumpMetadata, nr_dumpable: int) -> KdumpLayout:
        bs = meta.page_size
        # reference: makedumpfile write_kdump_header
        offset_note = bs + KDUMP_SUB_HEADER.size
        offset_bitmap1, bitmap_size = cls.bitmap_area(bs, len(meta.notes_raw), meta.max_mapnr)
        sub_hdr_size = offset_bitmap1 // bs - 1
        bitmap_blocks = 2 * bitmap_size // bs
        offset_page_desc = offset_bitmap1 + 2 * bitmap_size
        offset_vmcoreinfo = (
            0 if meta.vmcoreinfo_desc_offset is None else offset_note + meta.vmcoreinfo_desc_offset
        )
        return cls(
            block_size=bs,
            sub_hdr_size=sub_hdr_size,
            bitmap_size=bitmap_size,
            bitmap_blocks=bitmap_blocks,
            offset_note=offset_note,
            offset_vmcoreinfo=offset_vmcoreinfo,
            offset_bitmap1=offset_bitmap1,
            offset_bitmap2=offset_bitmap1 + bitmap_size,
            offset_page_desc=offset_page_desc,
            nr_dumpable=nr_dumpable,
            offset_data=offset_page_desc + nr_dumpable * PAGE_DESC_DTYPE.itemsize,
        )


@dataclass(slots=True)
class KdumpWriteResult:
    """What was written. Zero pages are reported as excluded (makedumpfile's report
    counts them so) although they keep their bit in the 2nd bitmap."""

    layout: KdumpLayout
    status: int  # the header status written
    nr_pages_written: int = 0  # page descriptors written (zero pages included)
    nr_zero_pages: int = 0  # pages that got the shared zero descriptor
    nr_pages_by_flags: dict[int, int] = field(default_factory=dict)  # page_desc flags -> pages
    bytes_written: int = 0  # the file size: end of the page data
    nr_pages_lost: int = 0  # dumpable pages whose descriptor stayed 0 (ENOSPC, signal)
    no_space: OutputNoSpaceError | None = None  # set when the output filled up
    interrupted: int | None = None  # the signal that stopped the writer
    nr_pages_unreadable: int = 0  # input pages that could not be read: excluded
    unreadable: list[tuple[int, int, str]] = field(default_factory=list)  # (pfn, offset, why)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step

    @property
    def incomplete(self) -> bool:
        return (self.no_space is not None or self.interrupted is not None
                or self.nr_pages_unreadable > 0)


def write_kdump(
    sink: Sink,
    meta: KdumpMetadata,
    bitmap1: Bitmap,
    bitmap2: Bitmap,
    memory: PhysicalMemory,
    codec: Codec,
    exclude_zero: bool,
    progress: PageProgress | None = None,
    *,
    window_pages: int = DEFAULT_WINDOW_PAGES,
    threads: int | None = None,
    allow_incomplete: bool = False,
    split_range: tuple[int, int] | None = None,
    bitmap_window_pfns: int = BITMAP_WINDOW_PFNS,
) -> KdumpWriteResult:
    """Write a complete kdump-compressed dump of ``memory`` to ``sink``.

    ``bitmap1`` is the present-pages bitmap, ``bitmap2`` (a subset) the
    dumpable one; both must cover ``meta.max_mapnr`` pfns. ``exclude_zero`` is
    dump level bit 1. ``progress(done, total)`` is called after every window.

    The header says DUMP_DH_COMPRESSED_INCOMPLETE from its first write; the
    codec's plain status replaces it only at the very end, after the page data
    is on disk (fsync), so a run killed anywhere (SIGKILL, power cut) leaves a
    file that says it is incomplete. Every descriptor on disk points at data
    written before it.

    When the output fills up (ENOSPC or the sink's size limit) the descriptors
    of pages whose data made it are kept and the rest stay zero ("lost"), like
    makedumpfile; then OutputNoSpaceError is raised, or, with
    ``allow_incomplete``, the result is returned with ``no_space`` set so the
    caller can :func:`mark_incomplete` the header or retry at another level. A
    termination signal (:class:`~cdbdump.errors.Interrupted`) ends the
    writing the same way (``interrupted``). An input page that cannot be read
    is excluded (its 2nd-bitmap bit cleared, in ``bitmap2`` and on disk) and
    listed in ``unreadable``; the rest is dumped and the header stays INCOMPLETE.
    ``window_pages`` (pages compressed at a time), ``threads`` and
    ``bitmap_window_pfns`` (pfns of the 2nd bitmap unpacked at a time) bound
    memory and time only: the file is the same whatever they are.

    ``split_range`` = (start_pfn, end_pfn) writes one file of a --split set:
    the full headers and bitmaps, the sub header's split fields set, and the
    descriptors (from the start of the table) and data of that range only; the
    data area still starts after room for every dumpable page's descriptor.
    reference: makedumpfile write_kdump_header, write_kdump_pages_cyclic (flag_split).
    """
    t_start = time.perf_counter()
    _check_inputs(meta, bitmap1, bitmap2, memory)
    nr_dumpable = bitmap2.count()
    layout = KdumpLayout.compute(meta, nr_dumpable)
    status = codec.flag | meta.status_extra  # an incomplete input stays incomplete
    # a file says INCOMPLETE until its data is durable; a stream (-F) cannot be
    # rewritten in place, and a cut one is flagged when it is rebuilt (-R)
    durable = callable(getattr(sink, "sync", None))
    result = KdumpWriteResult(
        layout=layout, status=status | DUMP_DH_COMPRESSED_INCOMPLETE if durable else status)
    with PageCompressor(codec, meta.page_size, threads=threads) as compressor:
        try:
            with deferred():  # headers and bitmaps whole, or nothing that a reader opens
                _write_headers(sink, meta, layout, result.status, split_range)
                _write_bitmap(sink, bitmap1, layout.offset_bitmap1, layout.bitmap_size)
                _write_bitmap(sink, bitmap2, layout.offset_bitmap2, layout.bitmap_size)
        except Interrupted as exc:
            result.interrupted = exc.signum
            result.nr_pages_lost = (nr_dumpable if split_range is None
                                    else bitmap2.count(*split_range))
            result.bytes_written = sink.size
        else:
            result.timings["headers"] = time.perf_counter() - t_start
            writer = _PageWriter(sink, meta, layout, memory, compressor, exclude_zero, result,
                                 window_pages, split_range, bitmap_window_pfns)
            writer.write_all(bitmap2, progress)
            if meta.eraseinfo and result.no_space is None and result.interrupted is None:
                with deferred():
                    _write_eraseinfo(sink, meta, writer.cursor, result)
    if durable and not result.incomplete:
        with deferred():
            # reference: makedumpfile writes the status once; here it turns complete
            # only once the data it vouches for is durable
            _sync(sink)
            sink.pwrite(status.to_bytes(4, "little"), DISK_DUMP_HEADER_STATUS_OFFSET)
            _sync(sink)
            result.status = status
    result.timings["total"] = time.perf_counter() - t_start
    if not allow_incomplete:
        if result.no_space is not None:
            raise result.no_space
        if result.interrupted is not None:
            raise Interrupted(result.interrupted)
    return result


def _sync(sink: Sink) -> None:
    sync = getattr(sink, "sync", None)  # a stream sink (-F) has nothing to fsync
    if callable(sync):
        sync()


def mark_incomplete(sink: Sink, result: KdumpWriteResult) -> int:
    """Set DUMP_DH_COMPRESSED_INCOMPLETE in the header; returns the new status.

    reference: makedumpfile check_and_modify_kdump_headers (status |= 0x08).
    The 4-byte rewrite lands in block 0, which is already allocated, so it
    succeeds on a full file system.
    """
    status = result.status | DUMP_DH_COMPRESSED_INCOMPLETE
    sink.pwrite(status.to_bytes(4, "little"), DISK_DUMP_HEADER_STATUS_OFFSET)
    result.status = status
    return status


# -- headers and bitmaps ------------------------------------------------------------------


def _check_inputs(
    meta: KdumpMetadata, bitmap1: Bitmap, bitmap2: Bitmap, memory: PhysicalMemory
) -> None:
    for name, bm in (("1st", bitmap1), ("2nd", bitmap2)):
        if bm.nr_bits != meta.max_mapnr:
            raise OutputError(
                f"{name} bitmap covers {bm.nr_bits} pfns, max_mapnr is {meta.max_mapnr}"
            )
    if memory.page_size != meta.page_size:
        raise OutputError(
            f"memory page size {memory.page_size:#x} differs from {meta.page_size:#x}"
        )
    for lo, hi in bitmap2.windows():  # no bitmap-sized temporaries
        stray = bitmap2.bits[lo:hi] & ~bitmap1.bits[lo:hi]
        bitmap1.release()
        if stray.any():
            byte = lo + int(np.flatnonzero(stray)[0])
            low_bit = int(bitmap2.bits[byte] & ~bitmap1.bits[byte])
            low_bit &= -low_bit
            pfn = byte * 8 + low_bit.bit_length() - 1
            raise OutputError(
                f"pfn {pfn:#x} is dumpable (2nd bitmap) but not present (1st bitmap)")


def _write_headers(
    sink: Sink,
    meta: KdumpMetadata,
    layout: KdumpLayout,
    status: int,
    split_range: tuple[int, int] | None = None,
) -> None:
    split, start_pfn, end_pfn = (0, 0, 0) if split_range is None else (1, *split_range)
    header = DISK_DUMP_HEADER.pack(
        KDUMP_SIGNATURE,
        HEADER_VERSION,
        meta.utsname,
        meta.timestamp_sec,
        meta.timestamp_usec,
        status,
        meta.page_size,  # block_size
        layout.sub_hdr_size,
        layout.bitmap_blocks,
        min(meta.max_mapnr, MAX_MAPNR_32),
        0,  # total_ram_blocks
        0,  # device_blocks
        0,  # written_blocks
        0,  # current_cpu
        meta.nr_cpus,
    )
    sub_header = KDUMP_SUB_HEADER.pack(
        meta.phys_base,
        meta.dump_level,
        split,
        min(start_pfn, MAX_MAPNR_32),  # start_pfn: truncated, compatibility only
        min(end_pfn, MAX_MAPNR_32),  # end_pfn
        layout.offset_vmcoreinfo,
        meta.vmcoreinfo_size if meta.vmcoreinfo_desc_offset is not None else 0,
        layout.offset_note,
        len(meta.notes_raw),  # size_note
        0,  # offset_eraseinfo
        0,  # size_eraseinfo
        start_pfn,  # start_pfn_64
        end_pfn,  # end_pfn_64
        meta.max_mapnr,  # max_mapnr_64
    )
    # makedumpfile's order: header, note copy, sub header
    sink.pwrite(header, 0)
    if meta.notes_raw:
        sink.pwrite(meta.notes_raw, layout.offset_note)
    sink.pwrite(sub_header, meta.page_size)


def _write_eraseinfo(sink: Sink, meta: KdumpMetadata, offset: int,
                     result: KdumpWriteResult) -> None:
    """reference: makedumpfile write_kdump_eraseinfo (copy_eraseinfo after the page
    data) and update_eraseinfo_of_sub_header."""
    try:
        sink.pwrite(meta.eraseinfo, offset)
        sink.pwrite(_ERASEINFO_FIELDS.pack(offset, len(meta.eraseinfo)),
                    meta.page_size + _SUB_HEADER_ERASEINFO_OFFSET)
    except OutputNoSpaceError as exc:
        result.no_space = exc
    result.bytes_written = sink.size


def _write_bitmap(sink: Sink, bitmap: Bitmap, file_offset: int, padded_size: int) -> None:
    # The block padding is written too: crash checks that the whole bitmap area
    # lies inside the file (diskdump.c read_dump_header).
    fileno = getattr(sink, "fileno", None)
    if bitmap.home is not None and callable(fileno) and bitmap.home == (fileno(), file_offset):
        return  # built in place, on allocated (zeroed) blocks padding included
    for lo, hi in bitmap.windows():  # a window at a time: a mapped bitmap stays unread
        sink.pwrite(bitmap.bits[lo:hi], file_offset + lo)
    pad = padded_size - bitmap.bits.size
    if pad:
        sink.pwrite(bytes(pad), file_offset + bitmap.bits.size)


# -- pages --------------------------------------------------------------------------------


class _PageWriter:
    """Streams the page_desc table and page data, one window of set pfns at a time."""

    def __init__(
        self,
        sink: Sink,
        meta: KdumpMetadata,
        layout: KdumpLayout,
        memory: PhysicalMemory,
        compressor: PageCompressor,
        exclude_zero: bool,
        result: KdumpWriteResult,
        window_pages: int,
        split_range: tuple[int, int] | None = None,
        bitmap_window_pfns: int = BITMAP_WINDOW_PFNS,
    ) -> None:
        self.sink = sink
        self.split_range = split_range
        self.page_size = meta.page_size
        self.shift = meta.page_size.bit_length() - 1
        self.layout = layout
        self.memory = memory
        self.compressor = compressor
        self.exclude_zero = exclude_zero
        self.result = result
        self.window_pages = max(1, window_pages)
        self.bitmap_window_pfns = max(8, bitmap_window_pfns - bitmap_window_pfns % 8)
        # a gather buffer per window in flight: it is free again once that window is
        # written (an uncompressed payload is a view of it)
        self.gathers = [np.empty(self.window_pages * self.page_size, dtype=np.uint8)
                        for _ in range(WINDOWS_IN_FLIGHT)]
        self.gather = self.gathers[0]
        # and an output buffer the native compressor stores the window's pages in
        out_size = compressor.out_size(self.window_pages)
        self.outs = [np.empty(out_size, dtype=np.uint8) if out_size else None
                     for _ in range(WINDOWS_IN_FLIGHT)]
        self.out = self.outs[0]
        # inputs that copy into a given buffer (ElfMemory.data_into) are read straight
        # into the gather buffer: no bytes object, and no fresh pages to fault, per read
        self.data_into: Callable[[Extent, npt.NDArray[np.uint8]], None] | None = getattr(
            memory, "data_into", None)
        self.scratch = np.empty(0, dtype=np.uint8)  # a window's sparse span, read whole
        # a kdump-compressed input (KdumpMemory) decodes a window's pages in one call
        self.pages_into: Callable[[npt.NDArray[np.int64], npt.NDArray[np.uint8]], None] | None = (
            getattr(memory, "pages_into", None))
        self.start_writeback: Callable[[int, int], None] | None = getattr(
            sink, "start_writeback", None)  # a file (not a -F stream)
        self.pwritev: Callable[[tuple[bytes | memoryview, ...], int], None] | None = getattr(
            sink, "pwritev", None)  # a file (not a -F stream)
        self.nr_windows = 0
        # the I/O thread's descriptors of a window (written before the next is made;
        # with zero pages excluded a window has up to window_pages pages to read and
        # any number in holes of a sparse input, up to _HOLE_LOOKUP_PFNS)
        max_window = max(self.window_pages, self._hole_lookup_pfns())
        self.descs = np.zeros(max_window, dtype=PAGE_DESC_DTYPE)
        self.desc_offsets = self.descs["offset"]
        self.desc_sizes = self.descs["size"]
        self.desc_flags = self.descs["flags"]
        self.no_zeros = np.zeros(max_window, dtype=np.bool_)
        # zero pages kept (-d without bit 1): the stored form of a zero page, for
        # windows wholly in holes of a sparse input, repeated for up to hole_window pages
        self.zero_form = (b"", 0)
        self.zeros_stored = b""
        self.hole_window = self.window_pages
        self.io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cdbdump-write")
        self.in_flight: deque[Future[None]] = deque()  # _store of each window, in order
        self.stop = False  # set once a window failed or the run ends early: skip the rest
        self.cursor = layout.offset_data  # where the next page data goes
        self.nr_done = 0  # descriptors written so far
        self.zero_offset = 0  # file offset of the shared zero page (exclude_zero only)
        self.flag_counts: dict[int, int] = {}
        self.timings = dict.fromkeys(("read", "zero_test", "compress", "compress_wait",
                                      "write"), 0.0)
        self.nr_to_write = layout.nr_dumpable

    def write_all(self, bitmap2: Bitmap, progress: PageProgress | None) -> None:
        result = self.result
        self.bitmap2 = bitmap2
        if self.split_range is not None:
            self.nr_to_write = bitmap2.count(*self.split_range)
        try:
            if self.exclude_zero:
                # reference: makedumpfile write_kdump_pages_and_bitmap_cyclic: the
                # shared zero page is written before any page data, even if unused
                self.zero_offset = self.cursor
                self._write_data(bytes(self.page_size))
            nr_queued = 0
            for pfns, in_hole in self._windows(bitmap2):
                if self.stop:  # a window failed: _wait_for_io raises its error
                    break
                self._write_window(pfns, in_hole)
                nr_queued += int(pfns.size)
                if progress is not None:
                    progress(nr_queued, self.nr_to_write)
            while self.in_flight:
                self._wait_for_io()
        except OutputNoSpaceError as exc:
            result.no_space = exc
        except Interrupted as exc:
            result.interrupted = exc.signum
        finally:
            # the window being written finishes (data, then its descriptors), the
            # later ones are skipped: nr_done is exact
            self.stop = True
            self.io.shutdown(wait=True)
        if result.no_space is not None or result.interrupted is not None:
            result.nr_pages_lost = (self.nr_to_write - self.nr_done
                                    - result.nr_pages_unreadable)
        result.nr_pages_written = self.nr_done
        result.nr_pages_by_flags = dict(sorted(self.flag_counts.items()))
        result.bytes_written = self.sink.size
        result.timings.update(self.timings)

    def _windows(self, bitmap2: Bitmap
                 ) -> Iterator[tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_] | None]]:
        """The windows of set pfns, each with its frames known to be zero (None: none)."""
        w = self.window_pages
        # groups of set pfns, not bitmap windows: the windows (and so the records of
        # a -F stream) are the same whatever --cyclic-buffer is
        for some in _in_groups(self._set_pfns(bitmap2), self._hole_lookup_pfns()):
            # zero pages need no reading where a sparse input file has a hole
            in_hole = self.memory.known_zero_frames(some)
            if in_hole is not None and not in_hole.any():
                in_hole = None
            if in_hole is None:
                for lo in range(0, some.size, w):
                    yield some[lo : lo + w], None
                continue
            if self.exclude_zero:
                # a page in a hole needs no reading nor compressing, only the
                # shared zero descriptor: windows of w pages to read, however
                # many in holes between them
                nr_read = np.cumsum(~in_hole)
                cuts = np.searchsorted(nr_read, np.arange(w, int(nr_read[-1]), w) + 1)
                bounds = [0, *cuts.tolist(), some.size]
            else:
                bounds = self._hole_runs_merged(in_hole)
            for lo, hi in itertools.pairwise(bounds):
                hole = in_hole[lo:hi]
                yield some[lo:hi], hole if hole.any() else None

    def _set_pfns(self, bitmap2: Bitmap) -> Iterator[npt.NDArray[np.int64]]:
        """The pfns set in the 2nd bitmap (within the --split range), in order."""
        for pfns in bitmap2.iter_set_pfns(self.bitmap_window_pfns):
            if self.split_range is not None:
                start, end = self.split_range
                pfns = pfns[(pfns >= start) & (pfns < end)]
            if pfns.size:
                yield pfns

    def _hole_runs_merged(self, in_hole: npt.NDArray[np.bool_]) -> list[int]:
        """Bounds of windows of window_pages pfns, where consecutive windows wholly in
        holes are one (up to hole_window pages): their pages are all the zero page's
        stored form, made without reading or compressing anything."""
        w = self.window_pages
        if not self.zeros_stored:  # the first hole: the zero page's stored form
            zero = self.compressor.compress_pages(bytes(self.page_size))
            self.zero_form = bytes(zero.payload), int(zero.flags[0])
            size = len(self.zero_form[0])
            # at most a gather buffer of stored zero pages (2 MiB: lzo 80 Ki pages)
            self.hole_window = min(self._hole_lookup_pfns(),
                                   max(w, self.gathers[0].size // size))
            self.zeros_stored = self.zero_form[0] * self.hole_window
        starts = list(range(0, in_hole.size, w))
        whole = np.logical_and.reduceat(in_hole, starts).tolist()
        bounds = [0]
        for i in range(1, len(starts)):
            lo = starts[i]
            if not (whole[i] and whole[i - 1] and lo + w - bounds[-1] <= self.hole_window):
                bounds.append(lo)
        bounds.append(int(in_hole.size))
        return bounds

    def _hole_lookup_pfns(self) -> int:
        w = self.window_pages
        return max(w, _HOLE_LOOKUP_PFNS - _HOLE_LOOKUP_PFNS % w)

    def _wait_for_io(self) -> None:
        """Wait for the oldest window in flight to be written; re-raises its error
        (OutputNoSpaceError, or what its compression raised)."""
        self.in_flight.popleft().result()

    def _write_window(self, pfns: npt.NDArray[np.int64],
                      in_hole: npt.NDArray[np.bool_] | None) -> None:
        """Read the window (main thread), start its compression on the pool and queue
        its write on the I/O thread."""
        ps = self.page_size
        n = int(pfns.size)
        t0 = time.perf_counter()
        if len(self.in_flight) >= WINDOWS_IN_FLIGHT:
            self._wait_for_io()  # that window's buffer is the one to reuse
        slot = self.nr_windows % WINDOWS_IN_FLIGHT
        self.gather, self.out = self.gathers[slot], self.outs[slot]
        self.nr_windows += 1
        read_pfns = pfns if in_hole is None else pfns[~in_hole]
        nr_read = int(read_pfns.size)
        if not nr_read and not self.exclude_zero:  # wholly in holes: zero pages, stored
            stored, flag = self.zero_form
            pending = PendingPages(CompressedPages(
                np.full(n, len(stored), dtype=np.uint32), np.full(n, flag, dtype=np.uint32),
                (memoryview(self.zeros_stored)[: n * len(stored)],)))
            self.in_flight.append(self.io.submit(self._store, pending, n, None, False, []))
            return
        bitmap_fixes: list[tuple[int, bytes]] = []
        try:
            data = self._gather(read_pfns, in_hole is not None) if nr_read else self.gather[:0]
        except InputReadError:
            pfns, in_hole, read_pfns, data, bitmap_fixes = self._salvage(pfns, in_hole,
                                                                         read_pfns)
            n = int(pfns.size)
            nr_read = int(read_pfns.size)
        t1 = time.perf_counter()
        zero_by_size = self.exclude_zero and self.out is not None
        is_zero: npt.NDArray[np.bool_] | None = None
        if zero_by_size:  # the native compressor leaves zero pages out (size 0)
            t2 = t1
            pending = self.compressor.submit_pages(data, out=self.out, skip_zero=True)
        elif self.exclude_zero:
            words = np.frombuffer(data, dtype=np.uint64).reshape(nr_read, ps // 8)
            # makedumpfile is_zero_page: every 8-byte word is 0
            read_zero: npt.NDArray[np.bool_] = np.logical_not(words.any(axis=1))
            keep = np.logical_not(read_zero)
            if in_hole is None:
                is_zero = read_zero
            else:
                is_zero = np.ones(n, dtype=np.bool_)
                is_zero[~in_hole] = read_zero
            t2 = time.perf_counter()
            pending = self.compressor.submit_pages(data, keep, out=self.out)
        else:
            t2 = time.perf_counter()
            pending = self._compress_with_holes(data, in_hole)
        t3 = time.perf_counter()
        self.in_flight.append(self.io.submit(
            self._store, pending, n, in_hole if zero_by_size else is_zero, zero_by_size,
            bitmap_fixes))
        if nr_read:  # RSS: a few windows, not the whole input
            first = int(read_pfns[0])
            self.memory.release(first << self.shift, (int(read_pfns[-1]) + 1 - first) << self.shift)
        tm = self.timings
        tm["read"] += t1 - t0
        tm["zero_test"] += t2 - t1
        tm["compress"] += t3 - t2

    def _compress_with_holes(
        self, data: memoryview | npt.NDArray[np.uint8], in_hole: npt.NDArray[np.bool_] | None
    ) -> PendingPages:
        """Every page of the window stored (zero pages too: -d without bit 1); pages in
        holes of a sparse input were not read and are compressed from one zero page."""
        if in_hole is None:
            return self.compressor.submit_pages(data, out=self.out)
        ps = self.page_size
        nr_read = len(data) // ps
        buf = self.gather
        pages = np.frombuffer(data, dtype=np.uint8)
        if pages.ctypes.data != buf.ctypes.data:  # not gathered into the buffer itself
            buf[: nr_read * ps] = pages
        # the zero page right after the pages read (nr_read < window pages: a hole)
        buf[nr_read * ps : (nr_read + 1) * ps] = 0
        index = np.full(in_hole.size, nr_read, dtype=np.int64)
        index[~in_hole] = np.arange(nr_read, dtype=np.int64)
        return self.compressor.submit_pages(buf[: (nr_read + 1) * ps], index=index, out=self.out)

    def _store(
        self,
        pending: PendingPages,
        n: int,
        zeros: npt.NDArray[np.bool_] | None,
        zero_by_size: bool,
        bitmap_fixes: list[tuple[int, bytes]],
    ) -> None:
        """On the I/O thread, window after window: wait for the window's compression,
        then write the cleared 2nd-bitmap bytes of its lost pages, its page data, then
        its descriptors (so every descriptor's rank matches the bitmap). Once a window
        failed (or the run ended early) the later ones are skipped."""
        if self.stop:
            pending.abandon()
            return
        done = False
        try:
            self._store_window(pending, n, zeros, zero_by_size, bitmap_fixes)
            done = True
        finally:
            if not done:
                self.stop = True
                pending.abandon()

    def _store_window(
        self,
        pending: PendingPages,
        n: int,
        zeros: npt.NDArray[np.bool_] | None,
        zero_by_size: bool,
        bitmap_fixes: list[tuple[int, bytes]],
    ) -> None:
        """``zeros``: the window's zero pages (None: none), whose data is not in the
        batch; with ``zero_by_size`` the pages in holes instead (None: none), and
        the batch holds every other page, zero pages with size 0."""
        t0 = time.perf_counter()
        packed = pending.result()
        t1 = time.perf_counter()
        descs = self.descs[:n]  # reused: written before the next window's are made
        offsets, sizes, flags = self.desc_offsets[:n], self.desc_sizes[:n], self.desc_flags[:n]
        is_zero = zeros
        if zero_by_size:
            read_zero = packed.sizes == 0
            read: npt.NDArray[np.intp] | slice = slice(None)
            if zeros is None:
                is_zero = read_zero
            else:
                read = np.flatnonzero(~zeros)
                is_zero = np.ones(n, dtype=np.bool_)
                is_zero[read] = read_zero
            offsets[read] = np.cumsum(packed.sizes, dtype=np.int64) - packed.sizes + self.cursor
            sizes[read] = packed.sizes
            flags[read] = packed.flags
            # all-zero pages share the zero page's descriptor
            offsets[is_zero] = self.zero_offset
            sizes[is_zero] = self.page_size
            flags[is_zero] = 0
        elif is_zero is None:
            is_zero = self.no_zeros[:n]
            np.cumsum(packed.sizes, out=offsets)
            offsets -= packed.sizes
            offsets += self.cursor
            sizes[:] = packed.sizes
            flags[:] = packed.flags
        else:
            stored = np.flatnonzero(~is_zero)
            ends = np.cumsum(packed.sizes, dtype=np.int64)
            offsets[stored] = self.cursor + ends - packed.sizes
            sizes[stored] = packed.sizes
            flags[:] = 0
            flags[stored] = packed.flags
            # all-zero pages share the zero page's descriptor
            offsets[is_zero] = self.zero_offset
            sizes[is_zero] = self.page_size
        data_offset = self.cursor
        self.cursor += packed.nbytes
        parts = packed.parts
        for file_offset, byte in bitmap_fixes:  # inside the allocated bitmap area
            self.sink.pwrite(byte, file_offset)
        size = sum(map(len, parts))
        try:
            if size:
                self._write_parts(parts, data_offset)
        except OutputNoSpaceError as exc:
            self._keep_complete_descs(descs, is_zero, data_offset + exc.written)
            raise
        self._write_descs(descs, is_zero)
        if self.start_writeback is not None and size:
            self.start_writeback(data_offset, size)  # the final fsync waits less
        self.timings["write"] += time.perf_counter() - t1
        self.timings["compress_wait"] += t1 - t0

    # -- output ---------------------------------------------------------------------------

    def _write_parts(self, parts: tuple[bytes | memoryview, ...], file_offset: int) -> None:
        """The parts back to back from file_offset: one pwritev(2) where the sink has it
        (a file), else joined into one write (a -F stream: one record per window)."""
        if len(parts) > 1 and self.pwritev is not None:
            self.pwritev(parts, file_offset)
        else:
            self.sink.pwrite(parts[0] if len(parts) == 1 else b"".join(parts), file_offset)

    def _write_data(self, payload: bytes | memoryview) -> None:
        size = len(payload)
        if size:
            self.sink.pwrite(payload, self.cursor)
        self.cursor += size

    def _write_descs(self, descs: npt.NDArray[np.void], is_zero: npt.NDArray[np.bool_]) -> None:
        offset = self.layout.offset_page_desc + self.nr_done * PAGE_DESC_DTYPE.itemsize
        try:
            self.sink.pwrite(descs, offset)
        except OutputNoSpaceError as exc:
            kept, torn = divmod(exc.written, PAGE_DESC_DTYPE.itemsize)
            if torn:  # a half-written descriptor must read as "lost" (offset 0)
                try:
                    self.sink.pwrite(bytes(torn), offset + kept * PAGE_DESC_DTYPE.itemsize)
                except OutputError:
                    pass  # the reader still bounds-checks every descriptor
            self._count(descs[:kept], is_zero[:kept])
            raise
        self._count(descs, is_zero)

    def _count(self, descs: npt.NDArray[np.void], is_zero: npt.NDArray[np.bool_]) -> None:
        self.nr_done += int(descs.size)
        nr_zero = int(np.count_nonzero(is_zero))
        self.result.nr_zero_pages += nr_zero
        by_flags = np.bincount(descs["flags"][~is_zero] if nr_zero else descs["flags"])
        for flag in np.flatnonzero(by_flags).tolist():
            self.flag_counts[flag] = self.flag_counts.get(flag, 0) + int(by_flags[flag])

    def _keep_complete_descs(
        self, descs: npt.NDArray[np.void], is_zero: npt.NDArray[np.bool_], data_end: int
    ) -> None:
        """After a short data write keep the leading descriptors whose data is on disk.

        reference: makedumpfile write_kdump_page (flag_nospace): descriptors
        of pages not completely written stay zero, so readers see them as lost.
        """
        complete = (descs["offset"] + descs["size"].astype(np.int64)) <= data_end
        bad = np.flatnonzero(~complete)
        kept = int(bad[0]) if bad.size else int(descs.size)
        if kept:
            try:
                self._write_descs(descs[:kept], is_zero[:kept])
            except OutputNoSpaceError:
                pass  # the prefix that fit is counted by _write_descs

    # -- input ----------------------------------------------------------------------------

    def _salvage(
        self,
        pfns: npt.NDArray[np.int64],
        in_hole: npt.NDArray[np.bool_] | None,
        read_pfns: npt.NDArray[np.int64],
    ) -> tuple[
        npt.NDArray[np.int64], npt.NDArray[np.bool_] | None, npt.NDArray[np.int64],
        npt.NDArray[np.uint8], list[tuple[int, bytes]],
    ]:
        """A window with an unreadable input range: read it page by page (error path only).

        Pages that cannot be read are dropped from the window and cleared in the
        2nd bitmap (in memory, and the returned (file offset, byte) rewrites for
        the file); the rest are returned as the window to write.
        """
        ps = self.page_size
        result = self.result
        good = np.ones(read_pfns.size, dtype=np.bool_)
        out = self.gather[: read_pfns.size * ps].reshape(int(read_pfns.size), ps)
        for i, pfn in enumerate(read_pfns.tolist()):
            try:
                self._gather_slow(pfn << self.shift, out[i])
            except InputReadError as exc:
                good[i] = False
                result.nr_pages_unreadable += 1
                if len(result.unreadable) < MAX_LISTED_LOST:
                    result.unreadable.append((pfn, exc.file_offset, exc.detail))
        lost = read_pfns[~good]
        fixes: list[tuple[int, bytes]] = []
        for byte_index in np.unique(lost >> 3).tolist():
            for pfn in lost[(lost >> 3) == byte_index].tolist():
                self.bitmap2.clear_range(pfn, pfn + 1)
            fixes.append((self.layout.offset_bitmap2 + byte_index,
                          bytes(self.bitmap2.bits[byte_index : byte_index + 1])))
        keep = np.ones(pfns.size, dtype=np.bool_)
        keep[np.isin(pfns, lost)] = False
        kept_read = read_pfns[good]
        data = np.ascontiguousarray(out[good]).reshape(-1)
        self.gather[: data.size] = data
        return (pfns[keep], None if in_hole is None else in_hole[keep], kept_read,
                self.gather[: data.size], fixes)

    def _gather(self, pfns: npt.NDArray[np.int64], holes_left_out: bool = False
                ) -> memoryview | npt.NDArray[np.uint8]:
        """The window's pages as N*page_size contiguous bytes, in pfn order."""
        ps = self.page_size
        shift = self.shift
        n = int(pfns.size)
        if self.pages_into is not None:
            self.pages_into(pfns, self.gather[: n * ps])
            return self.gather[: n * ps]
        first = int(pfns[0])
        span = int(pfns[-1]) - first + 1
        # the whole window one stored extent: no per-run Python work (only where that
        # costs no decoding of the pages between the window's pfns, and, as the span is
        # read whole with pread, only when dense)
        ext = next(self.memory.extents(first << shift, span * ps))
        whole = ext.kind is ExtentKind.DATA and ext.size == span * ps
        data_into = self.data_into
        breaks = np.flatnonzero(np.diff(pfns) != 1) + 1
        # a few runs around pages left out for holes of a sparse input are read run by
        # run: reading the span whole would read (and copy) the holes after all
        by_runs = holes_left_out and breaks.size < _FEW_RUNS
        if whole and (span == n or (ext.file_offset >= 0 and span <= 2 * n and not by_runs)):
            if span == n:  # one run
                if data_into is None:
                    return self.memory.data(ext)
                data_into(ext, self.gather[: n * ps])
                return self.gather[: n * ps]
            if data_into is None:
                rows = np.frombuffer(self.memory.data(ext), dtype=np.uint8).reshape(span, ps)
            else:
                if self.scratch.size < span * ps:
                    self.scratch = np.empty(2 * self.window_pages * ps, dtype=np.uint8)
                data_into(ext, self.scratch[: span * ps])
                rows = self.scratch[: span * ps].reshape(span, ps)
            out = self.gather[: n * ps].reshape(n, ps)
            np.take(rows, pfns - first, axis=0, out=out)
            return self.gather[: n * ps]
        run_starts = np.concatenate(([0], breaks)).tolist()
        run_ends = np.concatenate((breaks, [n])).tolist()
        first_pfns = pfns[run_starts].tolist()
        buf = self.gather
        for lo, hi, pfn in zip(run_starts, run_ends, first_pfns, strict=True):
            dest = buf[lo * ps : hi * ps]
            if data_into is not None:
                run_ext = next(self.memory.extents(pfn << shift, (hi - lo) * ps))
                if run_ext.kind is ExtentKind.DATA and run_ext.size == (hi - lo) * ps:
                    data_into(run_ext, dest)
                    continue
            else:
                run = view_run(self.memory, pfn << shift, (hi - lo) * ps)
                if run is not None:
                    dest[:] = np.frombuffer(run, dtype=np.uint8)
                    continue
            self._gather_slow(pfn << shift, dest)
        return buf[: n * ps]

    def _gather_slow(self, paddr: int, out: npt.NDArray[np.uint8]) -> None:
        """Copy [paddr, paddr+len(out)), zero-filling what the dump does not store.

        Bytes beyond p_filesz, and the tail of a page whose PT_LOAD ends
        mid-page, read as zero (makedumpfile >= 1.7.6 dumps such a page with the
        missing tail zero-filled). A page wholly absent is an error: the 2nd
        bitmap must not mark it dumpable.
        """
        ps = self.page_size
        for ext in fill(self.memory, paddr, out):
            first = -(-(ext.paddr - paddr) // ps)  # pages wholly inside the extent
            if ext.kind is ExtentKind.ABSENT and (first + 1) * ps <= ext.end - paddr:
                raise NotInDumpError(paddr + first * ps, ps, "marked dumpable but not in the dump")
