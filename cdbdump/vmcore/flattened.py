"""makedumpfile's flattened format (-F) read in place, as the file it stands for.

The stream is indexed once (reference: makedumpfile rearrange_dumpdata,
read_start_flat_header, read_flat_data_header): each record {offset, size}
says where its bytes belong in the rearranged file. :class:`FlattenedFile`
answers ``view(offset, size)`` from the index, so the kdump reader runs over
it unchanged; bytes no record wrote read as zero (a hole of ``makedumpfile
-R``'s output). A stream (``-`` for stdin) is spooled to an unlinked
temporary file first.
"""

from __future__ import annotations

import bisect
import os
import sys
from pathlib import Path

import numpy as np

from cdbdump.closing import Closing
from cdbdump.errors import CorruptDumpError, TruncatedDumpError
from cdbdump.fileio import MappedFile
from cdbdump.formats.flattened import (
    END_FLAG_FLAT_HEADER,
    MAKEDUMPFILE_DATA_HEADER,
    MAKEDUMPFILE_HEADER,
    MAKEDUMPFILE_SIGNATURE,
    MAX_SIZE_MDF_HEADER,
    TYPE_FLAT_HEADER,
)

__all__ = ("FlattenedFile", "spool_stdin")

_HDR = MAKEDUMPFILE_DATA_HEADER.size


class FlattenedFile(Closing):
    """The rearranged file a flattened stream describes, read through an index."""

    def __init__(self, stream: MappedFile) -> None:
        # the index holds three ints per record; makedumpfile writes records of
        # its write cache (a few pages), so this is a small fraction of the input
        self.stream = stream
        self.path = stream.path
        starts, sizes, positions = _index(stream)
        self._starts = starts
        self._ends = [s + n for s, n in zip(starts, sizes, strict=True)]
        self._positions = positions
        self.size = max(self._ends, default=0)
        self.nr_records = len(starts)

    def view(self, file_offset: int, size: int, what: str = "data") -> memoryview:
        """``size`` bytes of the rearranged file at ``file_offset``."""
        if file_offset < 0 or size < 0 or file_offset + size > self.size:
            raise TruncatedDumpError(what, file_offset=file_offset,
                                     needed=file_offset + size, available=self.size)
        i = bisect.bisect_right(self._starts, file_offset) - 1
        if i >= 0 and file_offset + size <= self._ends[i]:  # one record: no copy
            return self.stream.view(self._positions[i] + file_offset - self._starts[i], size, what)
        out = bytearray(size)
        i = max(i, 0)
        end = file_offset + size
        while i < len(self._starts) and self._starts[i] < end:
            lo = max(file_offset, self._starts[i])
            hi = min(end, self._ends[i])
            if lo < hi:
                src = self._positions[i] + lo - self._starts[i]
                out[lo - file_offset : hi - file_offset] = self.stream.view(src, hi - lo, what)
            i += 1
        return memoryview(bytes(out))

    def drop_all(self) -> None:
        self.stream.drop_all()

    def drop_range(self, file_offset: int, size: int) -> None:
        self.stream.drop_all()

    def close(self) -> None:
        self.stream.close()


def _index(stream: MappedFile) -> tuple[list[int], list[int], list[int]]:
    """(start offset, size, stream position) of disjoint runs, ascending; later records win."""
    if stream.size < MAX_SIZE_MDF_HEADER:
        raise TruncatedDumpError("flattened header", file_offset=0,
                                 needed=MAX_SIZE_MDF_HEADER, available=stream.size)
    signature, kind, _version = MAKEDUMPFILE_HEADER.unpack(
        stream.view(0, MAKEDUMPFILE_HEADER.size, "flattened header"))
    if signature != MAKEDUMPFILE_SIGNATURE or kind != TYPE_FLAT_HEADER:
        raise CorruptDumpError(f"{stream.path}: not a flattened makedumpfile stream (type {kind})",
                               file_offset=0, field="makedumpfile_header")
    records: list[tuple[int, int, int]] = []
    pos = MAX_SIZE_MDF_HEADER
    while True:
        if pos + _HDR > stream.size:
            raise TruncatedDumpError("flattened data header", file_offset=pos,
                                     needed=pos + _HDR, available=stream.size)
        offset, size = MAKEDUMPFILE_DATA_HEADER.unpack(stream.view(pos, _HDR, "data header"))
        if offset == END_FLAG_FLAT_HEADER and size == END_FLAG_FLAT_HEADER:
            break
        if offset < 0 or size < 0:
            raise CorruptDumpError(f"flattened record {offset:#x}+{size:#x} is impossible",
                                   file_offset=pos, field="makedumpfile_data_header")
        if pos + _HDR + size > stream.size:
            raise TruncatedDumpError("flattened record data", file_offset=pos + _HDR,
                                     needed=pos + _HDR + size, available=stream.size)
        if size:
            records.append((offset, size, pos + _HDR))
        pos += _HDR + size
    return _disjoint(records)


def _disjoint(records: list[tuple[int, int, int]]) -> tuple[list[int], list[int], list[int]]:
    table = np.array(records, dtype=np.int64).reshape(-1, 3)
    order = np.argsort(table[:, 0], kind="stable")
    table = table[order]
    ends = table[:, 0] + table[:, 1]
    if not (table[1:, 0] < ends[:-1]).any():  # makedumpfile never rewrites a range
        return table[:, 0].tolist(), table[:, 1].tolist(), table[:, 2].tolist()
    # overlapping records: replay them in stream order, later bytes win
    starts: list[int] = []
    runs: list[tuple[int, int, int]] = []  # (start, end, position)
    for offset, size, position in records:
        end = offset + size
        i = bisect.bisect_right(starts, offset) - 1
        i = max(i, 0)
        keep: list[tuple[int, int, int]] = []
        j = i
        while j < len(runs) and runs[j][0] < end:
            s, e, p = runs[j]
            if e <= offset:
                keep.append(runs[j])
            else:
                if s < offset:
                    keep.append((s, offset, p))
                if e > end:
                    keep.append((end, e, p + end - s))
            j += 1
        keep.append((offset, end, position))
        keep.sort()
        runs[i:j] = keep
        starts = [r[0] for r in runs]
    return starts, [e - s for s, e, _ in runs], [p for _, _, p in runs]


def spool_stdin(directory: str | None = None) -> MappedFile:
    """Copy standard input to an unlinked temporary file and map it."""
    import shutil  # imported by stdin runs only (start-up time: shutil pulls in lzma, bz2)
    import tempfile

    fd, path = tempfile.mkstemp(prefix="cdbdump-stdin-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(sys.stdin.buffer, out, 1 << 20)
        mapped = MappedFile(path)
        mapped.path = "<stdin>"
        return mapped
    finally:
        Path(path).unlink()
