"""Where the filtered dump goes: a kdump-compressed or ELF file, a flattened
stream on stdout (-F), or a --split set written concurrently.

Called by the pipeline once the bitmaps are final; it fills the write-side
facts of the DumpReport and never prints.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from cdbdump.bitmap import Bitmap
from cdbdump.codecs import Codec
from cdbdump.errors import CdbdumpError, IncompleteDumpError, OutputError
from cdbdump.interrupts import deferred
from cdbdump.memory.physical import PhysicalMemory
from cdbdump.report import DumpReport, ProgressCallback
from cdbdump.writers.kdump import (
    MAX_LISTED_LOST,
    KdumpMetadata,
    KdumpWriteResult,
    mark_incomplete,
    write_kdump,
)
from cdbdump.writers.sink import OutputFile, create_output

if TYPE_CHECKING:  # the -E, -F and --split writers are imported when a run uses them
    from cdbdump.vmcore.elfcore import ElfCore
    from cdbdump.writers.flattened import FlattenedSink

__all__ = ("STDOUT_NAME", "OutputRequest", "cyclic_pfns", "deliver")

STDOUT_NAME = "STDOUT"  # makedumpfile FILENAME_STDOUT: the name -F reports
_ELF_PASSES = 3  # -E: passes that may each meet new unreadable pages
_STDOUT_FD = 1


class OutputRequest(NamedTuple):
    """The output half of the options."""

    dumpfile: Path | None  # None: flattened stream on stdout (-F)
    codec: Codec
    force: bool = False
    elf: bool = False  # -E
    split_files: tuple[Path, ...] = ()  # --split
    splitblock_bytes: int | None = None  # --splitblock-size (bytes)
    size_limit: int | None = None  # makedumpfile -L: bytes per output file, then as ENOSPC
    threads: int | None = None  # --num-threads; None: every usable core
    cyclic_buffer_kib: int | None = None  # --cyclic-buffer
    # only this index of split_files is written (the others by other processes, from
    # the same bitmaps and so the same ranges: cdbdump batch --shards)
    split_only: int | None = None

    @property
    def flatten(self) -> bool:
        return self.dumpfile is None and not self.split_files

    @property
    def name(self) -> str:
        if self.split_files:
            return ", ".join(map(str, self.split_files))
        return STDOUT_NAME if self.dumpfile is None else str(self.dumpfile)


def deliver(
    request: OutputRequest,
    vmcore: Path,
    core: ElfCore | None,
    memory: PhysicalMemory,
    meta: KdumpMetadata,
    bitmap1: Bitmap,
    bitmap2: Bitmap,
    exclude_zero: bool,
    report: DumpReport,
    progress: ProgressCallback | None,
    *,
    out: OutputFile | FlattenedSink | None = None,
    input_lost: str | None = None,
) -> None:
    """Write the dump; raises IncompleteDumpError when it is incomplete: the output
    filled up, a signal, unreadable input pages, or ``input_lost`` (why pages the
    input claims were excluded before writing; a kdump header already says
    INCOMPLETE through meta.status_extra).

    ``out``: the output file already created (the bitmaps were built in it)."""
    if request.split_files:
        _deliver_split(request, vmcore, memory, meta, bitmap1, bitmap2, exclude_zero, report,
                       progress, input_lost)
        return
    if out is not None:
        pass
    elif request.dumpfile is None:
        from cdbdump.writers.flattened import FlattenedSink

        out = FlattenedSink(_STDOUT_FD, STDOUT_NAME)
    else:
        out = create_output(request.dumpfile, request.force, inputs=[vmcore],
                            limit=request.size_limit)
    try:
        if request.elf:
            if core is None:
                raise OutputError("-E needs an ELF vmcore as input")
            _write_elf(out, core, memory, bitmap2, exclude_zero, report, progress, input_lost,
                       _tuning(request, meta.max_mapnr).get("bitmap_window_pfns"))
        else:
            result = write_kdump(out, meta, bitmap1, bitmap2, memory, request.codec,
                                 exclude_zero=exclude_zero, progress=_step(progress),
                                 allow_incomplete=True, **_tuning(request, meta.max_mapnr))
            _account(report, result)
            if result.incomplete or input_lost is not None:
                # reference: makedumpfile check_and_modify_kdump_headers — keep what
                # was written, flag the header INCOMPLETE (it already is: it turns
                # complete only at the end), exit 1 (128 + signal when interrupted)
                with deferred():
                    mark_incomplete(out, result)
                    report.bytes_written = out.bytes_written
                    out.close()
                raise IncompleteDumpError(result.nr_pages_lost,
                                          _reasons(input_lost, incomplete_reason(result)),
                                          report, cause=result.no_space,
                                          signum=result.interrupted)
    except IncompleteDumpError:
        raise
    except BaseException:
        out.discard()  # a failed or interrupted run leaves no half dump behind
        raise
    out.close()
    report.bytes_written = out.bytes_written


def cyclic_pfns(kib: int, max_mapnr: int) -> int:
    """Pfns whose bits fill ``kib`` KiB of bitmap (makedumpfile --cyclic-buffer),
    no more than the machine has (a window is allocated whole)."""
    return min(max(1, kib) * 1024 * 8, max(8192, max_mapnr))


def _tuning(request: OutputRequest, max_mapnr: int) -> dict[str, Any]:
    """write_kdump's threads and bitmap window: they never change the file."""
    tuning: dict[str, Any] = {"threads": request.threads}
    if request.cyclic_buffer_kib is not None:
        tuning["bitmap_window_pfns"] = cyclic_pfns(request.cyclic_buffer_kib, max_mapnr)
    return tuning


def _step(progress: ProgressCallback | None) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress("Copying data", done, total)


def _account(report: DumpReport, result: KdumpWriteResult) -> None:
    report.counts.zero += result.nr_zero_pages
    report.pages_written += result.nr_pages_written
    report.bytes_out = max(report.bytes_out, result.bytes_written)
    report.pages_unreadable += result.nr_pages_unreadable
    report.unreadable_pages.extend(
        {"pfn": pfn, "file_offset": off, "error": why} for pfn, off, why in result.unreadable)
    report.pages_lost += result.nr_pages_lost
    if result.nr_pages_unreadable:
        report.dumpable_pages -= result.nr_pages_unreadable


def _reasons(*reasons: str | None) -> str:
    return "; ".join(r for r in reasons if r)


def incomplete_reason(result: KdumpWriteResult) -> str:
    """One line: why the dump is incomplete (full disk, signal, unreadable input)."""
    parts: list[str] = []
    if result.no_space is not None:
        parts.append(str(result.no_space))
    if result.interrupted is not None:
        parts.append(f"interrupted by {signal.Signals(result.interrupted).name}")
    if result.nr_pages_unreadable:
        pfn, file_offset, why = result.unreadable[0]
        parts.append(
            f"{result.nr_pages_unreadable} input pages could not be read and are excluded "
            f"(first: pfn {pfn:#x} at file offset {file_offset:#x}: {why})"
        )
    return "; ".join(parts)


def _write_elf(
    out: OutputFile | FlattenedSink,
    core: ElfCore,
    memory: PhysicalMemory,
    bitmap2: Bitmap,
    exclude_zero: bool,
    report: DumpReport,
    progress: ProgressCallback | None,
    input_lost: str | None = None,
    window_pfns: int | None = None,
) -> None:
    """-E: an unreadable input page is excluded like the kdump writer excludes it.

    Its place in the file is planned before it is read, so a pass that meets
    one is written again without it (a file; a -F stream keeps the pass, the
    page zero in it); the dump ends flagged DUMP_ELF_INCOMPLETE, exit 1.
    """
    from cdbdump.formats.elf import ELF64_EHDR
    from cdbdump.writers.elf import (
        exclude_zero_pages,
        mark_elf_incomplete,
        plan_elf,
        write_elf,
    )

    window = {} if window_pfns is None else {"window_pfns": window_pfns}  # --cyclic-buffer
    if exclude_zero:
        zero_progress = (None if progress is None
                         else lambda done, total: progress("Excluding zero pages", done, total))
        report.counts.zero += exclude_zero_pages(memory, bitmap2, zero_progress, **window)
    input_ehdr = bytes(core.file.view(0, ELF64_EHDR.size, "ELF header"))
    unreadable: dict[int, tuple[int, str]] = {}  # pfn -> (file offset, why)
    for _ in range(_ELF_PASSES):
        for pfn in unreadable:
            if pfn < bitmap2.nr_bits:
                bitmap2.clear_range(pfn, pfn + 1)
        plan = plan_elf(core.loads, memory, bitmap2, len(core.notes_raw),
                        exclude_zero=exclude_zero, **window)
        if isinstance(out, OutputFile):
            os.ftruncate(out.fileno(), 0)  # a pass again: nothing of the last one stays
        result = write_elf(out, input_ehdr, core.notes_raw, plan, memory, _step(progress),
                           reserve=isinstance(out, OutputFile))
        new = {pfn: (off, why) for pfn, off, why in result.unreadable if pfn not in unreadable}
        unreadable.update(new)
        if not new or result.no_space is not None or not isinstance(out, OutputFile):
            break
    report.elf_excluded_pages = plan.nr_pages_elf_excluded
    report.pages_written = plan.nr_pages_to_write
    report.bytes_out = result.bytes_written
    report.pages_unreadable += len(unreadable)
    listed = list(unreadable.items())[:MAX_LISTED_LOST]
    report.unreadable_pages.extend({"pfn": pfn, "file_offset": off, "error": why}
                                   for pfn, (off, why) in listed)
    if result.no_space is not None or unreadable or input_lost is not None:
        mark_elf_incomplete(out, input_ehdr)
        report.bytes_written = out.bytes_written
        out.close()
        parts = [None if result.no_space is None else str(result.no_space), input_lost]
        if unreadable:
            pfn, (off, why) = next(iter(unreadable.items()))
            parts.append(f"{len(unreadable)} input pages could not be read and are excluded "
                         f"(first: pfn {pfn:#x} at file offset {off:#x}: {why})")
        raise IncompleteDumpError(result.nr_pages_lost, _reasons(*parts), report,
                                  cause=result.no_space)


def _deliver_split(
    request: OutputRequest,
    vmcore: Path,
    memory: PhysicalMemory,
    meta: KdumpMetadata,
    bitmap1: Bitmap,
    bitmap2: Bitmap,
    exclude_zero: bool,
    report: DumpReport,
    progress: ProgressCallback | None,
    input_lost: str | None = None,
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from cdbdump.writers.split import balanced_splitblock_pages, split_ranges, splitblock_pages

    paths = request.split_files
    if request.split_only is None or request.splitblock_bytes is not None:
        block = splitblock_pages(meta.page_size, request.splitblock_bytes)
    else:  # batch --shards: pieces of one dump, spread evenly even on small machines
        block = balanced_splitblock_pages(meta.max_mapnr, meta.page_size, len(paths))
    ranges = split_ranges(bitmap2, len(paths), block)
    report.split_ranges = ranges
    _check_distinct(paths)
    if request.split_only is not None:
        paths = (paths[request.split_only],)
        ranges = [ranges[request.split_only]]
    outs: list[OutputFile] = []
    try:
        # extend keeps the files created before a failure, for the clean-up below
        outs.extend(create_output(path, request.force, inputs=[vmcore], limit=request.size_limit)
                    for path in paths)
        with ThreadPoolExecutor(max_workers=len(paths),
                                thread_name_prefix="cdbdump-split") as pool:
            futures = [
                pool.submit(write_kdump, out, meta, bitmap1, bitmap2, memory, request.codec,
                            exclude_zero=exclude_zero, allow_incomplete=True,
                            split_range=r, **_tuning(request, meta.max_mapnr))
                for out, r in zip(outs, ranges, strict=True)
            ]
            results = [f.result() for f in futures]
    except BaseException:
        for out in outs:
            try:
                out.discard()
            except CdbdumpError:
                pass  # report the first failure, not the clean-up
        raise
    lost = 0
    first_full = None
    reasons: list[str] = [input_lost] if input_lost is not None else []
    for out, result in zip(outs, results, strict=True):
        _account(report, result)
        if result.incomplete:
            mark_incomplete(out, result)
            lost += result.nr_pages_lost
            first_full = first_full or result.no_space
            reasons.append(f"{out.path}: {incomplete_reason(result)}")
    report.bytes_written = sum(out.bytes_written for out in outs)
    report.bytes_out = sum(out.size for out in outs)
    for out in outs:
        out.close()
    if reasons:
        raise IncompleteDumpError(lost, "; ".join(reasons), report, cause=first_full,
                                  signum=next((r.interrupted for r in results
                                               if r.interrupted is not None), None))
    if progress is not None:
        progress("Copying data", report.dumpable_pages, report.dumpable_pages)


def _check_distinct(paths: Sequence[Path]) -> None:
    seen: set[str] = set()
    for p in paths:
        key = os.path.realpath(p)
        if key in seen:
            raise OutputError("named twice among the --split files", path=str(p))
        seen.add(key)
