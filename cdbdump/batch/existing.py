"""Does an output already on disk verify? Then a re-run skips its input.

For now "verifies" means: a regular file (not a link), a kdump-compressed header
that the reader accepts, not flagged incomplete, not one piece of a split set, the
codec and dump level asked for, and sizes consistent: the page_desc table lies
inside the file and every descriptor points at data inside it, after the table
(crash diskdump.c read_dump_header and cache_page read these same fields).
Decompressing every page is ``cdbdump verify``'s job (batch --verify).
When no record of the run that made the output survived, output_counts reads
its page counts back from the output and the input's headers.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import NamedTuple

import numpy as np

from cdbdump.codecs import Codec
from cdbdump.errors import CdbdumpError
from cdbdump.fileio import MappedFile
from cdbdump.formats.kdump import PAGE_DESC_DTYPE
from cdbdump.pipeline import (
    keeps_partial_last_pages,
    memory_hole_pages,
    open_files,
    open_input,
)
from cdbdump.vmcore.kdumpfile import KdumpFile

__all__ = ("OutputCounts", "output_counts", "output_problem")

_DESCS_PER_STEP = 1 << 20  # 24 MiB of page_desc entries at a time


class OutputCounts(NamedTuple):
    """A dump's page counts, as the run that wrote it reported them (DumpReport)."""

    original_pages: int
    remaining_pages: int
    dump_level: int | None  # the level applied (the sub-header's)


def output_counts(path: Path, vmcore: Path, parts: tuple[Path, ...] = ()) -> OutputCounts:
    """The page counts of the run that made ``path`` from ``vmcore`` (and ``parts``), when
    its report was lost: the original pages from the input's headers, counted as the run
    counts them (overlapping PT_LOADs twice, as makedumpfile does), the excluded ones from
    the output. Excluded are the pages of its 1st bitmap that are not dumpable, and the
    zero pages, which keep their 2nd-bitmap bit and share one page's data (makedumpfile
    write_kdump_pages_cyclic). A -q run's report leaves out the pages the kernel bitmap
    clears with no counter (offline pages): here they count as excluded."""
    files = open_files(vmcore, parts)
    try:
        image = open_input(files)
        original = image.max_mapnr - memory_hole_pages(
            image, keeps_partial_last_pages(image.max_mapnr))
    finally:
        for file in files:
            file.close()
    with MappedFile(path) as dump:
        kd = KdumpFile.open(dump)
        excluded = kd.bitmap1.count() - (kd.nr_dumpable - kd.nr_zero_descs())
        return OutputCounts(original, original - excluded, kd.dump_level)


def output_problem(path: Path, codec: Codec, dump_level: int) -> str | None:
    """None when ``path`` is a complete dump made with ``codec`` at ``dump_level``;
    otherwise why it is not."""
    try:
        st = path.lstat()
    except OSError as exc:
        return f"cannot stat: {exc.strerror}"
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    try:
        with MappedFile(path) as file:
            return _dump_problem(KdumpFile.open(file), file.size, codec, dump_level)
    except CdbdumpError as exc:
        return str(exc)


def _dump_problem(kd: KdumpFile, file_size: int, codec: Codec, dump_level: int) -> str | None:
    if kd.is_incomplete:
        return "its header is flagged incomplete"
    if kd.sub_header is not None and kd.sub_header.split:
        return "is one piece of a split dump"
    if kd.codec is not codec:
        return f"is compressed with {kd.codec.label}, not {codec.label}"
    if kd.dump_level != dump_level:
        return f"was made at dump level {kd.dump_level}, not {dump_level}"
    table_end = kd.offset_page_desc + kd.nr_descs * PAGE_DESC_DTYPE.itemsize
    if table_end > file_size:
        return (f"its page_desc table ends at {table_end:#x}, past the end of the file "
                f"({file_size:#x})")
    for first in range(0, kd.nr_descs, _DESCS_PER_STEP):
        count = min(_DESCS_PER_STEP, kd.nr_descs - first)
        view = kd.file.view(kd.offset_page_desc + first * PAGE_DESC_DTYPE.itemsize,
                            count * PAGE_DESC_DTYPE.itemsize, "page_desc table")
        descs = np.frombuffer(view, dtype=PAGE_DESC_DTYPE)
        offsets = descs["offset"]
        if (offsets == 0).any():
            return "has lost pages (page_desc offset 0): it is incomplete"
        if int(offsets.min()) < kd.offset_data:
            return "a page_desc points before the page data area"
        end = int((offsets + descs["size"].astype(np.int64)).max())
        if end > file_size:
            return f"page data runs to {end:#x}, past the end of the file ({file_size:#x})"
        del descs, offsets, view
    return None
