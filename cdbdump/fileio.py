"""Reading input files by offset, with read errors as typed exceptions.

Page data is read with pread(2), never through an mmap: a page the device
cannot read (EIO) or a file truncated while we read it would raise SIGBUS on a
mapped access and kill the process; through pread it is an InputReadError
naming the file offset, which the callers turn into data (a lost page, an
unreadable struct page) instead.
"""

from __future__ import annotations

import errno
import os
import stat
from array import array
from typing import Protocol

import numpy as np
import numpy.typing as npt

from cdbdump.closing import Closing
from cdbdump.errors import InputError, InputReadError, TruncatedDumpError

__all__ = ("FileView", "MappedFile")


class FileView(Protocol):
    """Read-only bytes by offset: a mapped file, or the file a flattened stream stands for."""

    path: str
    size: int

    def view(self, file_offset: int, size: int, what: str = "data") -> memoryview: ...

    def drop_all(self) -> None: ...

    def drop_range(self, file_offset: int, size: int) -> None: ...

    def close(self) -> None: ...


_MAX_PREAD = 1 << 30  # Linux transfers at most 0x7ffff000 bytes per call
# data extents of a sparse input kept (at most 16 MiB of offsets). 1 << 16 made the
# dense 64 GiB bench machine (198k extents) read its holes: 14 s of CPU instead of 5.
MAX_EXTENTS = 1 << 20


def _merge_gaps(starts: array[int], ends: array[int],
                min_gap: int) -> tuple[array[int], array[int]]:
    """The extents with every hole of at most ``min_gap`` bytes counted as data."""
    out_starts, out_ends = array("q", starts[:1]), array("q", ends[:1])
    for start, end in zip(starts[1:], ends[1:], strict=True):
        if start - out_ends[-1] <= min_gap:
            out_ends[-1] = end
        else:
            out_starts.append(start)
            out_ends.append(end)
    return out_starts, out_ends


class MappedFile(Closing):
    """A read-only file read by offset (the name is historical: nothing is mapped).

    Regular files and character devices with a size (/proc/vmcore is a regular
    file, /proc/kcore too) are accepted; pipes, FIFOs and sockets are refused in
    one line because the dump needs random access.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        try:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise InputError(f"{self.path}: cannot open: {exc.strerror}") from exc
        st = os.fstat(self._fd)
        kind = None
        if stat.S_ISDIR(st.st_mode):
            kind = "is a directory"
        elif stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode):
            kind = ("is a pipe or FIFO; cdbdump needs random access, save the vmcore to a "
                    "file first")
        if kind is not None:
            os.close(self._fd)
            self._fd = -1
            raise InputError(f"{self.path}: {kind}")
        self.size = st.st_size
        self._extents: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]] | None = None
        self._extents_known = False

    @property
    def is_mapped(self) -> bool:
        return False

    def view(self, file_offset: int, size: int, what: str = "data") -> memoryview:
        """Return ``size`` bytes at ``file_offset``.

        Raises:
            TruncatedDumpError: the range lies past the end the file had when opened.
            InputReadError: the read failed (EIO), or the file shrank under us.
        """
        if file_offset < 0 or size < 0 or file_offset + size > self.size:
            raise TruncatedDumpError(
                what, file_offset=file_offset, needed=file_offset + size, available=self.size
            )
        if size <= _MAX_PREAD:
            try:
                data = os.pread(self._fd, size, file_offset)
            except OSError:
                data = b""  # retried below, where the failing offset is found
            if len(data) == size:
                return memoryview(data)
        buf = bytearray(size)
        self._pread_into(memoryview(buf), file_offset)
        return memoryview(buf)

    def read_into(self, file_offset: int, out: npt.NDArray[np.uint8], what: str = "data") -> None:
        """Fill the contiguous byte array ``out`` from ``file_offset`` (same errors as view)."""
        size = int(out.size)
        if file_offset < 0 or file_offset + size > self.size:
            raise TruncatedDumpError(
                what, file_offset=file_offset, needed=file_offset + size, available=self.size
            )
        self._pread_into(out.data.cast("B"), file_offset)

    def _pread_into(self, buf: memoryview, file_offset: int) -> None:
        done = 0
        size = len(buf)
        while done < size:
            want = min(size - done, _MAX_PREAD)
            try:
                n = os.preadv(self._fd, [buf[done : done + want]], file_offset + done)
            except OSError as exc:
                raise InputReadError(self.path, file_offset + done, size - done,
                                     exc.strerror or f"errno {exc.errno}") from exc
            if n == 0:
                raise InputReadError(
                    self.path, file_offset + done, size - done,
                    f"end of file at {file_offset + done:#x}: the file was truncated while "
                    f"being read (it had {self.size:#x} bytes when opened)",
                )
            done += n

    def data_extents(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]] | None:
        """(starts, ends) of the file's data extents, or None when it has no holes.

        Saved vmcores are often sparse (cp --sparse, QEMU, fabricated machines):
        bytes in a hole are zero and need not be read at all. Files that do not
        support SEEK_DATA (/proc/vmcore) report no holes.
        """
        if self._extents_known:
            return self._extents
        self._extents_known = True
        # array, not list: a fabricated sparse machine has ~140k extents per 256 GiB.
        # At most MAX_EXTENTS are kept: past it, holes shorter than a doubling gap are
        # counted as data (read, and zero), so the list stays bounded at any size.
        starts = array("q")
        ends = array("q")
        offset = 0
        min_gap = 0
        try:
            while offset < self.size:
                try:
                    start = os.lseek(self._fd, offset, os.SEEK_DATA)
                except OSError as exc:
                    if exc.errno == errno.ENXIO:
                        break  # only a hole is left
                    raise
                end = min(os.lseek(self._fd, start, os.SEEK_HOLE), self.size)
                if ends and start - ends[-1] <= min_gap:
                    ends[-1] = end
                else:
                    starts.append(start)
                    ends.append(end)
                    if len(starts) > MAX_EXTENTS:
                        min_gap = max(2 * min_gap, 1 << 16)
                        starts, ends = _merge_gaps(starts, ends, min_gap)
                offset = end
        except OSError:
            return None  # SEEK_DATA unsupported here: treat the file as all data
        if os.fstat(self._fd).st_size < self.size:
            # shrunk since it was opened: the "hole" at its end is missing data, to be
            # read (and reported lost), not zeros
            self._extents_known = False
            return None
        if len(starts) == 1 and starts[0] == 0 and ends[0] >= self.size:
            return None
        self._extents = (np.frombuffer(starts, dtype=np.int64).copy(),
                         np.frombuffer(ends, dtype=np.int64).copy())
        return self._extents

    def drop_all(self) -> None:
        """Nothing to unmap: pread leaves no input page in our RSS (kept for callers)."""

    def drop_range(self, file_offset: int, size: int) -> None:
        """Nothing to unmap: pread leaves no input page in our RSS (kept for callers)."""

    def advise_streaming(self) -> None:
        """Tune read-ahead for one pass over the page data.

        A dense file is read front to back: POSIX_FADV_SEQUENTIAL. In a mostly
        empty file (a fabricated machine with 1 % data) the reads skip the holes,
        and read-ahead would pull the holes around every data page into the page
        cache as zero pages (tens of GiB): POSIX_FADV_RANDOM. A file at least 1/8
        data (a real QEMU or saved vmcore) keeps the kernel's read-ahead
        (POSIX_FADV_NORMAL): with RANDOM every short read is synchronous, 2.6x the
        wall time of a cold -l -d 1 run of a real 1 GiB vmcore.
        """
        if self._fd < 0:
            return
        extents = self.data_extents()
        if extents is None:
            advice = os.POSIX_FADV_SEQUENTIAL
        elif int((extents[1] - extents[0]).sum()) * 8 < self.size:
            advice = os.POSIX_FADV_RANDOM
        else:
            advice = os.POSIX_FADV_NORMAL
        try:
            os.posix_fadvise(self._fd, 0, 0, advice)
        except OSError:
            pass  # advice only (/proc files refuse it)

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

