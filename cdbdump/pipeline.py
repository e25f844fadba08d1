"""One dump, start to end: input → 1st bitmap → 2nd bitmap (kernel bitmap or
mem_map scan) → output (deliver.py: kdump-compressed or ELF, file, -F stream or
--split set) → report.

Stages are small functions over runs and bitmaps; this module only composes
them and records what happened in a DumpReport. It never prints.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, NamedTuple

import numpy as np

from cdbdump.bitmap import Bitmap
from cdbdump.codecs import Codec
from cdbdump.deliver import OutputRequest, cyclic_pfns, deliver
from cdbdump.errors import (
    AddressError,
    CdbdumpError,
    CorruptDumpError,
    InputError,
    OutputError,
    OutputNoSpaceError,
    UnknownFormatError,
    UnsupportedError,
    VmcoreInfoError,
)
from cdbdump.fileio import FileView, MappedFile
from cdbdump.formats.elf import LoadSegment
from cdbdump.formats.kdump import DUMP_DH_COMPRESSED_INCOMPLETE, UTS_FIELD_LEN, UTS_FIELDS
from cdbdump.formats.x86_64 import PAGE_SIZE
from cdbdump.memory.kernel import KernelMemory, phys_base_from_loads
from cdbdump.memory.physical import ElfMemory, PhysicalMemory, data_pfn_ranges
from cdbdump.mm.levels import DumpLevel
from cdbdump.mm.memmodel import MemMap, locate_mem_map
from cdbdump.mm.scan import MemoryUsage, exclude_unnecessary_pages, memory_usage
from cdbdump.report import DumpReport, PathTaken, ProgressCallback
from cdbdump.vmcore.detect import DumpFormat, sniff
from cdbdump.vmcore.elfcore import ElfCore
from cdbdump.vmcore.vmcoreinfo import VmcoreInfo
from cdbdump.writers.kdump import MAX_LISTED_LOST, KdumpLayout, KdumpMetadata
from cdbdump.writers.sink import OutputFile, check_output, create_output

if TYPE_CHECKING:  # what -q, refiltering, dmesg, -R and --reassemble need: imported on use
    from cdbdump.memory.kdump import KdumpMemory
    from cdbdump.mm.crash_bitmap import KernelBitmap, KernelBitmapRefused
    from cdbdump.printk import KernelLog
    from cdbdump.writers.flattened import RearrangeResult
    from cdbdump.writers.split import ReassembleResult

__all__ = (
    "DmesgOptions",
    "DmesgResult",
    "DumpOptions",
    "InputImage",
    "dump",
    "dump_dmesg",
    "mem_usage",
    "open_input",
    "rearrange_stream",
    "reassemble_files",
)

# Errors after which the mem_map scan degrades instead of failing the run
_SCAN_ERRORS = (VmcoreInfoError, AddressError, UnsupportedError, CorruptDumpError)


@dataclass(frozen=True, slots=True)
class DumpOptions:
    """What the user asked for (the CLI builds one of these)."""

    vmcore: Path
    dumpfile: Path | None  # None: a flattened stream on stdout (-F)
    dump_level: DumpLevel = DumpLevel.ZERO  # -d; the CLI default is makedumpfile's 0
    codec: Codec = Codec.ZSTD
    use_kernel_bitmap: bool = False  # -q
    force: bool = False  # -f
    split_parts: tuple[Path, ...] = ()  # the other files of a split (--split) input
    elf: bool = False  # -E
    split_files: tuple[Path, ...] = ()  # --split: dumpfile is ignored
    splitblock_bytes: int | None = None  # --splitblock-size
    size_limit: int | None = None  # makedumpfile -L
    threads: int | None = None  # --num-threads; None: every usable core
    cyclic_buffer_kib: int | None = None  # --cyclic-buffer: KiB of bitmap per window
    one_cycle: bool = False  # makedumpfile --work-dir: its one-cycle 1st bitmap, whatever the size
    split_only: int | None = None  # write only this file of the --split set (batch --shards)

    @property
    def output(self) -> OutputRequest:
        return OutputRequest(self.dumpfile, self.codec, self.force, self.elf, self.split_files,
                             self.splitblock_bytes, self.size_limit, threads=self.threads,
                             cyclic_buffer_kib=self.cyclic_buffer_kib,
                             split_only=self.split_only)


class InputImage(NamedTuple):
    """An opened input (ELF vmcore or kdump-compressed dump) and its machine's geometry."""

    phys: PhysicalMemory
    vmcoreinfo: VmcoreInfo | None
    page_size: int
    phys_base: int | None
    kernel: KernelMemory | None  # None without VMCOREINFO or page tables
    kernel_error: str | None  # why kernel is None
    mem_map: MemMap | None  # None when struct page cannot be located
    mem_map_error: str | None  # why mem_map is None
    max_mapnr: int
    notes_raw: bytes  # the ELF notes, copied verbatim into the output
    vmcoreinfo_desc_offset: int | None  # VMCOREINFO text within notes_raw
    vmcoreinfo_size: int
    nr_cpus: int
    problems: tuple[str, ...] = ()
    loads: tuple[LoadSegment, ...] = ()  # an ELF input's PT_LOADs
    kdump: KdumpMemory | None = None  # a kdump-compressed input (refiltering)
    core: ElfCore | None = None  # an ELF input's headers and notes


@contextmanager
def _timed(report: DumpReport, step: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        report.timings[step] = report.timings.get(step, 0.0) + time.perf_counter() - start


def open_files(path: Path, split_parts: tuple[Path, ...] = ()) -> list[FileView]:
    """The input's files: a mapped file, the file a flattened stream stands for
    (``-`` reads the stream from standard input), or every file of a split set."""
    from cdbdump.vmcore.flattened import FlattenedFile, spool_stdin

    files: list[FileView] = []
    try:
        for one in (path, *split_parts):
            mapped = spool_stdin() if str(one) == "-" else MappedFile(one)
            files.append(mapped)
            if sniff(mapped) is DumpFormat.FLATTENED:
                files[-1] = FlattenedFile(mapped)
    except BaseException:
        for f in files:
            f.close()
        raise
    return files


def open_input(files: FileView | list[FileView]) -> InputImage:
    """Parse the input's headers (one file, or a split set) and derive the machine's geometry."""
    if not isinstance(files, list):
        files = [files]
    file = files[0]
    fmt = sniff(file)
    if fmt is DumpFormat.KDUMP:
        return _open_kdump(files)
    if fmt is DumpFormat.UNKNOWN or not isinstance(file, MappedFile):
        raise UnknownFormatError(file.path, bytes(file.view(0, min(16, file.size))))
    if len(files) > 1:
        raise UnsupportedError(f"{files[1].path}: only kdump-compressed files form a split set")
    core = ElfCore.parse(file)
    if not core.loads:
        # reference: makedumpfile get_elf_info ("Can't get the number of PT_LOAD")
        raise CorruptDumpError(
            f"{file.path}: no PT_LOAD program header, so no memory to dump",
            file_offset=core.e_phoff,
            field="program header table",
        )
    info = core.vmcoreinfo
    page_size = (info.page_size if info is not None else None) or PAGE_SIZE
    if page_size != PAGE_SIZE:
        # x86_64 has 4 KiB base pages only; a kdump block size that is not the
        # page size gives dumps crash and libkdumpfile misread
        raise UnsupportedError(f"{file.path}: VMCOREINFO PAGESIZE={page_size} on x86_64 "
                               f"(only {PAGE_SIZE})")
    phys = ElfMemory(file, core.loads, page_size)
    phys_base = info.phys_base if info is not None else None
    if phys_base is None:
        phys_base = phys_base_from_loads(core.loads)
    note = core.vmcoreinfo_note
    problems = list(core.problems)
    max_mapnr = _justified_max_mapnr(file, phys, core.loads, page_size, problems)
    return _geometry(
        phys, info, phys_base, max_mapnr,
        lower_max_mapnr=True, loads=core.loads, notes_raw=core.notes_raw,
        vmcoreinfo_desc_offset=core.vmcoreinfo_desc_offset,
        vmcoreinfo_size=note.desc_size if note is not None else 0, nr_cpus=core.nr_cpus,
        problems=tuple(problems), core=core,
    )


def _open_kdump(files: list[FileView]) -> InputImage:
    """A kdump-compressed input (or split set): refiltering, as makedumpfile does it."""
    from cdbdump.memory.kdump import KdumpMemory
    from cdbdump.vmcore.kdumpfile import KdumpFile

    parts = [KdumpFile.open(f) for f in files]
    memory = KdumpMemory(parts)
    head = memory.header_file
    sub = head.sub_header
    if sub is None or head.header.header_version < 1:
        # reference: makedumpfile get_kdump_compressed_header_info
        raise UnsupportedError(f"{head.file.path}: header does not have dump_level member")
    vmcoreinfo_offset = None
    if head.vmcoreinfo_raw is not None and sub.size_note:
        vmcoreinfo_offset = sub.offset_vmcoreinfo - sub.offset_note
    # reference: makedumpfile get_max_mapnr: a refiltered dump keeps its input's max_mapnr
    return _geometry(
        memory, head.vmcoreinfo, sub.phys_base, memory.max_mapnr, lower_max_mapnr=False,
        notes_raw=head.notes_raw, vmcoreinfo_desc_offset=vmcoreinfo_offset,
        vmcoreinfo_size=sub.size_vmcoreinfo if vmcoreinfo_offset is not None else 0,
        nr_cpus=head.header.nr_cpus, kdump=memory,
    )


def _geometry(
    phys: PhysicalMemory,
    info: VmcoreInfo | None,
    phys_base: int | None,
    max_mapnr: int,
    *,
    lower_max_mapnr: bool,
    **fields: Any,
) -> InputImage:
    page_size = phys.page_size
    kernel: KernelMemory | None = None
    kernel_error: str | None = None
    if info is None:
        kernel_error = "the vmcore has no VMCOREINFO note"
    else:
        try:
            kernel = KernelMemory.from_vmcoreinfo(phys, info, loads=fields.get("loads", ()),
                                                  phys_base=phys_base)
        except (VmcoreInfoError, AddressError) as exc:
            kernel_error = str(exc)
    mem_map: MemMap | None = None
    mem_map_error: str | None = kernel_error
    if kernel is not None and info is not None:
        # reference: makedumpfile get_max_mapnr — lowered to the end of the
        # highest section with a mem_map ("mem=" kernels, QEMU's ROM above RAM)
        try:
            mem_map = locate_mem_map(kernel, info, max_mapnr)
        except _SCAN_ERRORS as exc:
            mem_map_error = str(exc)
        else:
            if lower_max_mapnr:
                max_mapnr = mem_map.max_mapnr
    return InputImage(phys, info, page_size, phys_base, kernel, kernel_error, mem_map,
                      mem_map_error, max_mapnr, **fields)


# Bytes one bitmap may take whatever the file: a few bitmaps live at once, and a
# capture kernel has about 256 MiB. Beyond it the file must justify the size.
_BITMAP_BUDGET = 8 << 20


def _justified_max_mapnr(
    file: MappedFile,
    phys: PhysicalMemory,
    loads: tuple[LoadSegment, ...],
    page_size: int,
    problems: list[str],
) -> int:
    """max_mapnr from the PT_LOADs, sized by what the file can justify.

    reference: makedumpfile get_max_mapnr (end of the highest PT_LOAD). A header
    may claim memory up to 2^52 bytes; every bitmap is max_mapnr / 8 bytes. A
    tail of p_memsz beyond every p_filesz holds no data (exclude_nodata_pages
    would drop it): it is cut off when it alone would blow the budget. Frames
    that are file-backed must be backed by a file big enough for them: a bitmap
    larger than the budget and than 1/64 of the file is refused.
    """
    max_mapnr = (phys.end_paddr + page_size - 1) // page_size
    budget = max(_BITMAP_BUDGET, file.size // 64)
    if max_mapnr // 8 <= budget:
        return max_mapnr
    file_end = max((seg.paddr + seg.filesz for seg in loads if seg.filesz > 0), default=0)
    backed = (file_end + page_size - 1) // page_size
    if backed // 8 <= budget:
        problems.append(
            f"PT_LOADs claim memory up to paddr {phys.end_paddr:#x}, but no file data lies "
            f"beyond {file_end:#x}: max_mapnr cut from {max_mapnr} to {backed} (the rest "
            "would be excluded as no-data pages anyway)"
        )
        return backed
    raise UnsupportedError(
        f"{file.path}: PT_LOADs span {backed} page frames (bitmaps of {backed // 8 >> 20} "
        f"MiB each) but the file holds {file.size >> 20} MiB; refusing to size memory by "
        "a header the file does not justify"
    )


# reference: makedumpfile calculate_cyclic_buffer_size (at most 4 MiB of buffer)
MDF_MAX_CYCLIC_BUFFER = 4 << 20


def keeps_partial_last_pages(max_mapnr: int, nr_dumpfiles: int = 1,
                             cyclic_buffer_given: bool = False, one_cycle: bool = False) -> bool:
    """Whether makedumpfile counts a PT_LOAD's partial last page as present.

    makedumpfile works in one cycle, through a bitmap file whose 1st bitmap rounds
    each segment's end up (create_1st_bitmap_file), only when its cyclic buffer,
    min(4 MiB, max_mapnr * 2 / 8), holds both bitmaps whole (initial); otherwise
    create_bitmap_from_memhole truncates the end and drops that page, e.g. the x86
    e820 range ending at 0x9fc00 of every /proc/vmcore whose max_mapnr is not a
    multiple of 4 or exceeds 16 Mi frames. With --split the buffer is shared by the
    ``nr_dumpfiles`` files, so makedumpfile is always cyclic: the split files drop the
    page and their reassembly can differ from a one-cycle direct dump by it, as
    makedumpfile's own do. Any --cyclic-buffer (``cyclic_buffer_given``; 0 means not
    given) keeps it cyclic whatever the size (initial() never tries one cycle then),
    so the page is dropped. --work-dir (``one_cycle``) comes first: bitmaps in a file,
    one cycle, the page kept, with --split and --cyclic-buffer too. Not followed: the
    buffer is also capped at 60 % of the host's MemFree, which only matters below
    ~7 MiB free (the bitmaps of 16 Mi frames are 4 MiB).
    """
    if one_cycle:
        return True
    if cyclic_buffer_given:
        return False
    bitmaps_bytes = max_mapnr * 2 // 8
    if nr_dumpfiles > 1:
        bitmaps_bytes //= nr_dumpfiles
    buffer_bytes = min(MDF_MAX_CYCLIC_BUFFER, bitmaps_bytes)
    return buffer_bytes * 8 >= max_mapnr * 2


def first_bitmap(image: InputImage, partial_last_pages: bool = True,
                 into: Bitmap | None = None) -> Bitmap:
    """Frames present in the dump (reference: makedumpfile create_1st_bitmap_file, or
    create_bitmap_from_memhole without ``partial_last_pages``; copy_1st_bitmap_from_memory
    when refiltering), in ``into`` (empty) when given."""
    bitmap = Bitmap(image.max_mapnr) if into is None else into
    if image.kdump is not None:
        bitmap.assign(image.kdump.header_file.bitmap1)
        return bitmap
    if not partial_last_pages and image.loads:
        shift = image.page_size.bit_length() - 1
        for seg in image.loads:
            start = min(seg.paddr >> shift, image.max_mapnr)
            end = min((seg.paddr + seg.memsz) >> shift, image.max_mapnr)
            if start < end:
                bitmap.set_range(start, end)
        return bitmap
    for start, end in image.phys.present_pfn_ranges():
        bitmap.set_range(start, end)
    return bitmap


def without_nodata(image: InputImage, bitmap1: Bitmap, into: Bitmap | None = None) -> Bitmap:
    """bitmap1 minus frames wholly beyond p_filesz (makedumpfile exclude_nodata_pages);
    when refiltering, the frames the input stores (makedumpfile copy_bitmap_from_memory:
    pages the input excluded stay excluded; lost pages of an incomplete input too).
    Written into ``into`` (any content) when given; no bitmap-sized temporary."""
    bitmap2 = Bitmap(image.max_mapnr) if into is None else into
    bitmap2.assign(bitmap1)
    if image.kdump is not None:
        step = 1 << 18
        for lo in range(0, image.max_mapnr, step):
            hi = min(image.max_mapnr, lo + step)
            bitmap2.put_bools(lo, bitmap2.get_bools(lo, hi) & image.kdump.stored_pfns(lo, hi))
            image.kdump.release_all()  # RSS: the page_desc table is read through the mapping
            bitmap2.release()
        return bitmap2
    # clear what lies between the (sorted, merged) file-backed ranges
    covered = 0
    for start, end in sorted(data_pfn_ranges(image.phys, first_byte=False)):
        bitmap2.clear_range(covered, start)
        covered = max(covered, end)
    bitmap2.clear_range(covered, image.max_mapnr)
    return bitmap2


def bitmaps_in_output(options: DumpOptions, image: InputImage) -> OutputFile | None:
    """The output file, created now, with its two bitmap areas allocated, when the
    bitmaps can be built in their place there (a kdump-compressed file, not a
    stream, an ELF file or a --split set): then memory holds a window of them,
    not 2 x max_mapnr bits. None: they are built in memory.

    reference: makedumpfile's cyclic mode writes each window of the bitmaps out
    and computes them twice; here the file keeps them and the writer reads the
    2nd bitmap back (no second pass).
    """
    if options.dumpfile is None or options.elf or options.split_files:
        return None
    offset, size = KdumpLayout.bitmap_area(image.page_size, len(image.notes_raw),
                                           image.max_mapnr)
    if options.size_limit is not None and options.size_limit < offset + 2 * size:
        return None  # the writer reports the limit where makedumpfile does
    out = create_output(options.dumpfile, options.force, inputs=[options.vmcore],
                        limit=options.size_limit)
    try:
        # allocated up front: a store through the mapping into a hole the file
        # system cannot fill would be SIGBUS, not ENOSPC
        os.posix_fallocate(out.fileno(), offset, 2 * size)
    except OSError as exc:
        out.discard()
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise OutputNoSpaceError(f"no space for the bitmaps ({exc.strerror})",
                                     path=out.path, file_offset=offset,
                                     requested=2 * size, written=0) from exc
        raise OutputError(f"cannot allocate the bitmaps: {exc.strerror}", path=out.path) from exc
    return out


# Bitmaps up to this size stay in memory when the output has no place for them
SCRATCH_BITMAP_BYTES = 4 << 20  # makedumpfile's largest cyclic buffer


def _scratch_bitmaps(options: DumpOptions, max_mapnr: int) -> list[Bitmap] | None:
    """The two bitmaps in a scratch file when they are large and the output has no
    place for them (-F, -E, --split): next to the output, or in $TMPDIR for a
    stream. None: in memory (small, or no scratch file could be made)."""
    if max_mapnr // 8 <= SCRATCH_BITMAP_BYTES:
        return None
    target = options.split_files[0] if options.split_files else options.dumpfile
    try:
        return Bitmap.scratch(max_mapnr, 2, None if target is None else target.parent)
    except OSError:
        return None  # no room or no write access there: memory, as before


def _bitmaps(options: DumpOptions, image: InputImage, out: OutputFile | None,
             partial_pages: bool) -> tuple[Bitmap, Bitmap]:
    """The 1st bitmap and the 2nd before exclusion (in the output file when ``out``)."""
    if out is None:
        scratch = _scratch_bitmaps(options, image.max_mapnr)
        bitmap1 = first_bitmap(image, partial_pages, scratch[0] if scratch else None)
        return bitmap1, without_nodata(image, bitmap1, scratch[1] if scratch else None)
    offset, size = KdumpLayout.bitmap_area(image.page_size, len(image.notes_raw),
                                           image.max_mapnr)
    bitmap1 = first_bitmap(image, partial_pages,
                           Bitmap.in_file(out.fileno(), offset, image.max_mapnr))
    bitmap2 = Bitmap.in_file(out.fileno(), offset + size, image.max_mapnr)
    return bitmap1, without_nodata(image, bitmap1, bitmap2)


def lost_frames(image: InputImage, bitmap1: Bitmap) -> Bitmap | None:
    """Present frames with bytes a PT_LOAD says are stored that the file cannot
    supply (ElfMemory.lost: past its end, or an earlier PT_LOAD's file bytes)."""
    phys = image.phys
    if not isinstance(phys, ElfMemory) or not phys.lost:
        return None
    ps = image.page_size
    lost = Bitmap(image.max_mapnr)
    for r in phys.lost:
        lost.set_range(min(r.paddr // ps, lost.nr_bits), min(-(-r.end // ps), lost.nr_bits))
    lost.intersect(bitmap1)
    return lost


def _drop_lost(image: InputImage, lost: Bitmap, bitmap2: Bitmap, report: DumpReport) -> str | None:
    """Exclude the lost frames the dump level keeps; count and list them like unreadable
    pages (the writers' read errors). Returns the one-line reason, None if none was kept."""
    kept = lost & bitmap2
    nr_kept = kept.count()
    if not nr_kept:
        return None
    bitmap2.subtract(lost)
    assert isinstance(image.phys, ElfMemory)  # lost frames come from ElfMemory.lost
    ps = image.page_size
    listed = report.unreadable_pages
    seen: set[int] = set()
    for r in image.phys.lost:  # the first MAX_LISTED_LOST, in pfn order
        lo, hi = r.paddr // ps, min(-(-r.end // ps), kept.nr_bits)
        while lo < hi and len(listed) < MAX_LISTED_LOST:
            step = min(hi, lo + (1 << 20))
            for pfn in (np.flatnonzero(kept.get_bools(lo, step)) + lo).tolist():
                if pfn in seen or len(listed) >= MAX_LISTED_LOST:
                    continue
                seen.add(pfn)
                why = (f"past the end of the file ({image.phys.file_size:#x} bytes)"
                       if r.past_eof else "its file bytes are an earlier PT_LOAD's")
                offset = r.file_offset + max(0, pfn * ps - r.paddr)
                listed.append({"pfn": pfn, "file_offset": offset, "error": why})
            lo = step
    report.pages_unreadable += nr_kept
    first = listed[0] if listed else {"pfn": 0, "file_offset": 0, "error": "?"}
    return (f"{nr_kept} pages the PT_LOADs say are stored cannot be read from the input "
            f"and are excluded (first: pfn {first['pfn']:#x} at file offset "
            f"{first['file_offset']:#x}: {first['error']})")


def memory_hole_pages(image: InputImage, partial_last_pages: bool = True) -> int:
    # makedumpfile counts PT_LOAD pages, overlapping segments twice
    # (reference: makedumpfile create_bitmap_from_memhole, pfn_memhole per PT_LOAD)
    shift = image.page_size.bit_length() - 1
    round_up = image.page_size - 1 if partial_last_pages else 0
    present = 0
    if image.kdump is not None:
        return image.max_mapnr - image.kdump.header_file.bitmap1.count()
    for seg in image.loads:
        start = min(seg.paddr >> shift, image.max_mapnr)
        end = min((seg.paddr + seg.memsz + round_up) >> shift, image.max_mapnr)
        present += max(0, end - start)
    return max(0, image.max_mapnr - present)


def read_utsname(image: InputImage) -> tuple[bytes, str | None]:
    """struct new_utsname from init_uts_ns, or a stand-in and the reason."""
    info = image.vmcoreinfo
    reason: str
    if info is None:
        reason = "no VMCOREINFO"
    else:
        sym: int | None = None
        off: int | None = None
        try:
            sym = info.get_symbol("init_uts_ns")
            # reference: makedumpfile check_release — kernels before 5.11 do not
            # export OFFSET(uts_namespace.name); there name follows struct kref (an int)
            off = info.get_offset("uts_namespace.name")
        except VmcoreInfoError as exc:  # cosmetic: degrade to the stand-in
            info_error: str | None = str(exc)
        else:
            info_error = None
        if off is None or not 0 <= off < 1 << 16:
            off = 4
        if info_error is not None:
            reason = info_error
        elif sym is None:
            reason = "VMCOREINFO has no SYMBOL(init_uts_ns)"
        elif image.kernel is None:
            reason = image.kernel_error or "no page tables"
        else:
            try:
                return image.kernel.read(sym + off, UTS_FIELD_LEN * len(UTS_FIELDS)), None
            except AddressError as exc:
                reason = str(exc)
    # stand-in like QEMU's: machine (and the release when VMCOREINFO has it)
    fields = dict.fromkeys(UTS_FIELDS, b"")
    fields["machine"] = b"x86_64"
    if info is not None and info.osrelease:
        fields["release"] = info.osrelease.encode()[: UTS_FIELD_LEN - 1]
    raw = b"".join(fields[name].ljust(UTS_FIELD_LEN, b"\0") for name in UTS_FIELDS)
    return raw, f"utsname not read from init_uts_ns ({reason}); header holds a stand-in"


def dump(options: DumpOptions, progress: ProgressCallback | None = None) -> DumpReport:
    """Make one kdump-compressed dump; return what happened.

    Raises:
        CdbdumpError: the input cannot be used or the output cannot be written.
    """
    level = options.dump_level
    report = DumpReport(
        vmcore=str(options.vmcore),
        dumpfile=options.output.name,
        dump_level_requested=int(level),
        codec=options.codec.label,
    )
    options.codec.check_available()
    _check_outputs(options)  # refusals come before any memory is read
    files = open_files(options.vmcore, options.split_parts)
    try:
        return _dump(options, files, report, progress)
    finally:
        for f in files:
            f.close()


def _dump(
    options: DumpOptions,
    files: list[FileView],
    report: DumpReport,
    progress: ProgressCallback | None,
) -> DumpReport:
    with _timed(report, "read headers"):
        image = open_input(files)
    report.warnings.extend(image.problems)
    report.max_mapnr = image.max_mapnr
    # batch --shards (split_only) writes pieces of the direct dump: its rule
    nr_dumpfiles = len(options.split_files) if options.split_only is None else 1
    partial_pages = keeps_partial_last_pages(image.max_mapnr, nr_dumpfiles,
                                             options.cyclic_buffer_kib is not None,
                                             options.one_cycle)
    # -E recounts holes per PT_LOAD with the partial page (write_elf_pages_cyclic)
    report.memory_hole_pages = memory_hole_pages(image, partial_pages or options.elf)
    report.bytes_in = sum(f.size for f in files)
    if image.loads:
        report.bytes_in = sum(seg.filesz for seg in image.loads)
    meta_extra: dict[str, Any] = {}
    if image.kdump is not None:
        options, meta_extra = _refiltering(options, image.kdump, report)
    with _timed(report, "check memory holes"):
        out = bitmaps_in_output(options, image)
    try:
        with _timed(report, "check memory holes"):
            try:
                bitmap1, bitmap2 = _bitmaps(options, image, out, partial_pages)
                lost = lost_frames(image, bitmap1)
            except MemoryError:
                raise UnsupportedError(
                    f"bitmaps for max_mapnr {image.max_mapnr} ({image.max_mapnr // 4} "
                    "bytes for the two of them) do not fit in memory"
                ) from None
        if lost is not None:
            bitmap2.union(lost)  # the level decides on them as on the intact input
        with _timed(report, "exclude pages"):
            applied = _exclude(image, options, bitmap1, bitmap2, report, progress)
        lost_reason = _drop_lost(image, lost, bitmap2, report) if lost is not None else None
        if lost_reason is not None:  # the output says so from its first byte (complete never)
            meta_extra["status_extra"] = (meta_extra.get("status_extra", 0)
                                          | DUMP_DH_COMPRESSED_INCOMPLETE)
        meta = _metadata(image, options, applied, meta_extra, report)
        report.dumpable_pages = bitmap2.count()
    except BaseException:
        if out is not None:
            out.discard()  # nothing written yet that a reader could open
        raise
    with _timed(report, "write pages"):
        if isinstance(files[0], MappedFile) and image.kdump is None:
            files[0].advise_streaming()
        deliver(options.output, options.vmcore, image.core, image.phys, meta, bitmap1,
                bitmap2, bool(applied & DumpLevel.ZERO), report, progress, out=out,
                input_lost=lost_reason)
    return report


def _metadata(image: InputImage, options: DumpOptions, applied: DumpLevel,
              meta_extra: dict[str, Any], report: DumpReport) -> KdumpMetadata:
    report.dump_level_applied = int(applied)
    utsname, uts_problem = read_utsname(image)
    if uts_problem:
        report.warnings.append(uts_problem)
    meta = KdumpMetadata(
        utsname=utsname,
        timestamp_sec=(meta_extra.pop("timestamp_sec") if "timestamp_sec" in meta_extra
                       else _crashtime(image, report)),
        **meta_extra,
        page_size=image.page_size,
        max_mapnr=image.max_mapnr,
        phys_base=_header_phys_base(image, report),
        dump_level=int(applied),
        notes_raw=image.notes_raw,
        vmcoreinfo_desc_offset=image.vmcoreinfo_desc_offset,
        vmcoreinfo_size=image.vmcoreinfo_size,
        nr_cpus=image.nr_cpus,
    )
    if options.elf and image.core is None:
        # reference: makedumpfile initial()
        raise UnsupportedError(f"'-E' option is disabled, because {options.vmcore} is kdump "
                               "compressed format.")
    return meta


def _refiltering(
    options: DumpOptions, kdump: KdumpMemory, report: DumpReport
) -> tuple[DumpOptions, dict[str, Any]]:
    """makedumpfile's rules for a kdump-compressed input: the level only rises
    (update_dump_level), the timestamp and erase information carry over
    (get_kdump_compressed_header_info, write_kdump_eraseinfo), and so does an
    incomplete input's flag."""
    head = kdump.header_file
    input_level = head.dump_level or 0
    level = options.dump_level | input_level
    if level != options.dump_level:
        report.warnings.append(
            f"dump_level is changed to {int(level)}, because {head.file.path} was created "
            f"by dump_level({input_level})."
        )
    extra: dict[str, Any] = {"timestamp_sec": head.header.timestamp_sec,
                             "timestamp_usec": head.header.timestamp_usec,
                             "eraseinfo": head.eraseinfo_raw}
    if any(part.is_incomplete for part in kdump.parts):
        extra["status_extra"] = DUMP_DH_COMPRESSED_INCOMPLETE
        report.warnings.append(
            f"{head.file.path} is an incomplete dump: pages it lost stay out of the output, "
            "which is flagged incomplete too"
        )
        report.input_incomplete = True
    return replace(options, dump_level=DumpLevel(level)), extra


def _check_outputs(options: DumpOptions) -> None:
    """Output refusals (existing file, symlink, read-only fs, missing directory, the
    input itself), before any memory is read."""
    paths: tuple[Path, ...] = options.split_files
    if options.split_files and options.split_only is not None:
        paths = (options.split_files[options.split_only],)
    elif not options.split_files:
        paths = (options.dumpfile,) if options.dumpfile is not None else ()
    inputs = [p for p in (options.vmcore, *options.split_parts) if str(p) != "-"]
    for path in paths:
        check_output(path, options.force, inputs=inputs)


def _crashtime(image: InputImage, report: DumpReport) -> int:
    """CRASHTIME for the header's timestamp (a u64 there); 0 with a warning if absurd."""
    info = image.vmcoreinfo
    if info is None:
        return 0
    try:
        value = info.crashtime
    except VmcoreInfoError as exc:
        report.warnings.append(f"header timestamp left 0: {exc}")
        return 0
    if value is None:
        return 0
    if not 0 <= value < 1 << 63:
        report.warnings.append(f"header timestamp left 0: CRASHTIME={value} is out of range")
        return 0
    return value


def _header_phys_base(image: InputImage, report: DumpReport) -> int:
    """phys_base for the sub-header (a signed 64-bit field); 0 with a warning if absurd."""
    value = image.phys_base or 0
    if not -(1 << 63) <= value < 1 << 63:
        report.warnings.append(f"sub-header phys_base left 0: {value:#x} does not fit 64 bits")
        return 0
    return value


def _vmcoreinfo_note(image: InputImage) -> tuple[int, int] | None:
    """Where the VMCOREINFO note lies in memory, when the input says so and memory
    there holds the same note (then the kernel bitmap must keep its pages)."""
    core = image.core
    where = core.vmcoreinfo_note_paddr if core is not None else None
    if core is None or where is None or core.vmcoreinfo_note is None:
        return None
    paddr, size = where
    note = core.vmcoreinfo_note
    try:
        in_memory = image.phys.read(paddr, size)
    except AddressError:
        return None  # not provable from the dump
    same = in_memory == core.notes_raw[note.note_offset : note.note_offset + size]
    return where if same else None


def _verify_kernel_bitmap(image: InputImage, probe: KernelBitmap) -> KernelBitmapRefused | None:
    """The bitmap's content against what the dump proves (crash_bitmap.verify_kernel_bitmap)."""
    from cdbdump.mm.crash_bitmap import (
        KernelBitmapRefused,
        mem_map_page_ranges,
        protected_pfn_ranges,
        verify_kernel_bitmap,
    )

    mem_map_pages: list[tuple[int, int]] = []
    if image.kernel is not None and image.mem_map is not None:
        kernel = image.kernel
        mem_map_pages = mem_map_page_ranges(
            lambda vstart, vend: kernel.walker.run_arrays(vstart, vend, strict=False),
            ((r.start_pfn, r.end_pfn, r.mem_map_vaddr) for r in image.mem_map.runs),
            image.mem_map.struct_page_size, image.page_size,
        )
    assert image.vmcoreinfo is not None and image.phys_base is not None  # probe passed
    protected = protected_pfn_ranges(image.phys, image.vmcoreinfo, image.phys_base, probe,
                                     image.max_mapnr, mem_map_pages, _vmcoreinfo_note(image))
    try:
        return verify_kernel_bitmap(image.phys, probe, image.max_mapnr, protected)
    except AddressError as exc:
        return KernelBitmapRefused(f"the kernel bitmap cannot be read: {exc}")


def _exclude(
    image: InputImage,
    options: DumpOptions,
    bitmap1: Bitmap,
    bitmap2: Bitmap,
    report: DumpReport,
    progress: ProgressCallback | None,
) -> DumpLevel:
    """Clear excluded frames from bitmap2; return the dump level really applied."""
    level = options.dump_level
    if options.use_kernel_bitmap:
        from cdbdump.mm.crash_bitmap import (
            KernelBitmap,
            KernelBitmapRefused,
            apply_kernel_bitmap,
            probe_kernel_bitmap,
        )

        probe: KernelBitmap | KernelBitmapRefused
        try:
            probe = probe_kernel_bitmap(
                image.phys, image.vmcoreinfo, image.phys_base, image.max_mapnr, level
            )
        except AddressError as exc:  # an unreadable struct (EIO): not provable
            probe = KernelBitmapRefused(f"crash_dump_bitmap_info cannot be read: {exc}")
        if isinstance(probe, KernelBitmap):
            refused = _verify_kernel_bitmap(image, probe)
            if refused is not None:
                probe = refused
        if isinstance(probe, KernelBitmap):
            apply_kernel_bitmap(image.phys, probe, bitmap2)

            report.path_taken = PathTaken.BITMAP
            report.counts.add(probe.counts)
            report.kernel_bitmap = probe.info._asdict()
            return level
        report.fallback_reason = probe.reason
        report.path_taken = PathTaken.FALLBACK
    info = image.vmcoreinfo
    mem_map_levels = level & ~DumpLevel.ZERO
    if image.kernel is None or image.mem_map is None or info is None:
        why = image.mem_map_error or "no VMCOREINFO"
        if mem_map_levels:
            return _degrade(level, report, why)
        if info is not None and "NUMBER(PG_hwpoison)" in info:
            report.warnings.append(f"hwpoison/offline pages not excluded: {why}")
        return level
    window = {} if options.cyclic_buffer_kib is None else {  # struct pages per scan window
        "window": cyclic_pfns(options.cyclic_buffer_kib, image.max_mapnr)}
    try:
        result = exclude_unnecessary_pages(
            image.kernel, info, level, bitmap2, progress, mem_map=image.mem_map, **window
        )
    except _SCAN_ERRORS as exc:
        without_nodata(image, bitmap1, bitmap2)  # nothing half-excluded: the report must match
        if not mem_map_levels:
            report.warnings.append(f"hwpoison/offline pages not excluded: {exc}")
            return level
        return _degrade(level, report, str(exc))
    if result.ran and report.path_taken is not PathTaken.FALLBACK:
        report.path_taken = PathTaken.LEGACY
    report.counts.add(result.counts)
    report.warnings.extend(result.problems)
    return level


def _degrade(level: DumpLevel, report: DumpReport, why: str) -> DumpLevel:
    """Apply only what needs no mem_map (zero pages) and say what was dropped."""
    dropped = level & ~DumpLevel.ZERO
    if dropped:
        report.levels_not_applied = (
            f"cannot classify pages ({why}); dump level bits {int(dropped)} "
            f"({_level_names(DumpLevel(dropped))}) not applied"
        )
    return level & DumpLevel.ZERO


def _level_names(level: DumpLevel) -> str:
    return ", ".join(flag.name.lower() for flag in DumpLevel if flag & level and flag.name)


def mem_usage(
    vmcore: Path, progress: ProgressCallback | None = None
) -> tuple[MemoryUsage, int]:
    """makedumpfile --mem-usage: page counts per class of a vmcore or /proc/kcore.

    Raises:
        CdbdumpError: the input cannot be used, or struct page cannot be found.
    """
    files = open_files(vmcore)
    try:
        image = open_input(files)
        if image.kernel is None or image.mem_map is None or image.vmcoreinfo is None:
            raise VmcoreInfoError(
                f"{vmcore}: cannot classify pages: {image.mem_map_error or 'no VMCOREINFO'}"
            )
        bitmap1 = first_bitmap(image)
        usage = memory_usage(image.kernel, image.vmcoreinfo, bitmap1, progress,
                             mem_map=image.mem_map)
        return usage, image.page_size
    finally:
        for f in files:
            f.close()


@dataclass(frozen=True, slots=True)
class DmesgOptions:
    """--dump-dmesg: the kernel log of ``vmcore`` into ``logfile`` (None: a stream)."""

    vmcore: Path
    logfile: Path | None
    force: bool = False  # -f
    caller_id: bool = True  # "[      T1] " after the time, as makedumpfile >= 1.7.5 prints


class DmesgResult(NamedTuple):
    log: KernelLog  # the records and the warnings (one line each)
    vmcoreinfo: VmcoreInfo
    bytes_written: int


def dump_dmesg(options: DmesgOptions, stream: BinaryIO | None = None) -> DmesgResult:
    """makedumpfile --dump-dmesg: read the log, then write it to the file or ``stream``.

    The log file is created (0600, never over an existing file without ``force``)
    only once the log has been read; a write that fails leaves what was written.

    Raises:
        CdbdumpError: no log can be read from the input, or the output fails.
    """
    from cdbdump.printk import format_records, read_kernel_log

    files = open_files(options.vmcore)
    try:
        image = open_input(files)
        if image.vmcoreinfo is None or image.kernel is None:
            raise VmcoreInfoError(
                f"{options.vmcore}: cannot read the kernel log: {image.kernel_error}")
        try:
            log = read_kernel_log(image.kernel, image.vmcoreinfo)
        except CdbdumpError as exc:
            raise InputError(f"{options.vmcore}: cannot read the kernel log: {exc}") from exc
    finally:
        for f in files:
            f.close()
    log.warnings[:0] = image.problems
    data = b"".join(format_records(log.records, caller_id=options.caller_id))
    if options.logfile is None:
        if stream is None:
            raise OutputError("no log file and no stream to write the kernel log to")
        try:
            stream.write(data)
            stream.flush()
        except OSError as exc:
            raise OutputError(f"cannot write the kernel log: {exc.strerror}",
                              path="standard output") from exc
    else:
        out = create_output(options.logfile, options.force, inputs=[options.vmcore])
        try:
            out.pwrite(data, 0)
        finally:
            out.close()
    return DmesgResult(log, image.vmcoreinfo, len(data))


def rearrange_stream(dumpfile: Path, force: bool, fd: int = 0) -> RearrangeResult:
    """makedumpfile -R: the flattened stream on ``fd`` (stdin) becomes ``dumpfile``.

    A stream that stops early leaves the partial file flagged incomplete; one
    that brought nothing leaves no file.

    Raises:
        CdbdumpError: the stream is empty, malformed or cut, or the output fails.
    """
    from cdbdump.writers.flattened import mark_rebuilt_incomplete, rearrange

    out = create_output(dumpfile, force)
    try:
        result = rearrange(fd, out)
    except CdbdumpError:
        if out.size == 0:
            out.discard()
        else:
            mark_rebuilt_incomplete(out)
            out.close()
        raise
    except BaseException:
        out.close()
        raise
    out.close()
    return result


def reassemble_files(pieces: list[Path], dumpfile: Path, force: bool) -> ReassembleResult:
    """makedumpfile --reassemble: the --split files become one kdump-compressed file.

    Raises:
        CdbdumpError: a piece is unusable, or the output fails (no file is left).
    """
    from cdbdump.writers.split import reassemble

    out = create_output(dumpfile, force, inputs=pieces)
    try:
        result = reassemble(pieces, out)
    except BaseException:
        out.discard()
        raise
    out.close()
    return result
