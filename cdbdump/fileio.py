"""Zero-copy access to input files: a read-only mmap, or pread where mmap is refused."""

from __future__ import annotations

import errno
import mmap
import os
import stat
from types import TracebackType
from typing import Protocol

import numpy as np
import numpy.typing as npt

from cdbdump.errors import InputError, TruncatedDumpError

__all__ = ("FileView", "MappedFile")


class FileView(Protocol):
    """Read-only bytes by offset: a mapped file, or the file a flattened stream stands for."""

    path: str
    size: int

    def view(self, file_offset: int, size: int, what: str = "data") -> memoryview: ...

    def drop_all(self) -> None: ...

    def drop_range(self, file_offset: int, size: int) -> None: ...

    def close(self) -> None: ...


class MappedFile:
    """A read-only view of a file by offset.

    ``/proc/vmcore`` and saved vmcores are mapped with mmap; files that refuse
    mmap (some /proc files, pipes) fall back to pread. Views of the mapping are
    memoryviews that share the page cache, so nothing is copied.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        try:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise InputError(f"{self.path}: cannot open: {exc.strerror}") from exc
        st = os.fstat(self._fd)
        if stat.S_ISDIR(st.st_mode):
            os.close(self._fd)
            raise InputError(f"{self.path}: is a directory")
        self.size = st.st_size
        self._map: mmap.mmap | None = None
        self._view: memoryview | None = None
        self._can_drop = True
        self._extents: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]] | None = None
        self._extents_known = False
        if self.size > 0:
            try:
                self._map = mmap.mmap(self._fd, 0, prot=mmap.PROT_READ)
            except (OSError, ValueError, OverflowError):
                self._map = None  # e.g. /proc/kcore; read with pread instead
            else:
                self._view = memoryview(self._map)

    @property
    def is_mapped(self) -> bool:
        return self._view is not None

    def view(self, file_offset: int, size: int, what: str = "data") -> memoryview:
        """Return ``size`` bytes at ``file_offset``; TruncatedDumpError past EOF."""
        if file_offset < 0 or size < 0 or file_offset + size > self.size:
            raise TruncatedDumpError(
                what, file_offset=file_offset, needed=file_offset + size, available=self.size
            )
        if self._view is not None:
            return self._view[file_offset : file_offset + size]
        data = os.pread(self._fd, size, file_offset)
        if len(data) != size:
            raise TruncatedDumpError(
                what, file_offset=file_offset, needed=file_offset + size,
                available=file_offset + len(data),
            )
        return memoryview(data)

    def data_extents(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]] | None:
        """(starts, ends) of the file's data extents, or None when it has no holes.

        Saved vmcores are often sparse (cp --sparse, QEMU, fabricated machines):
        bytes in a hole are zero and need not be read at all. Files that do not
        support SEEK_DATA (/proc/vmcore) report no holes.
        """
        if self._extents_known:
            return self._extents
        self._extents_known = True
        starts: list[int] = []
        ends: list[int] = []
        offset = 0
        try:
            while offset < self.size:
                try:
                    start = os.lseek(self._fd, offset, os.SEEK_DATA)
                except OSError as exc:
                    if exc.errno == errno.ENXIO:
                        break  # only a hole is left
                    raise
                end = min(os.lseek(self._fd, start, os.SEEK_HOLE), self.size)
                starts.append(start)
                ends.append(end)
                offset = end
        except OSError:
            return None  # SEEK_DATA unsupported here: treat the file as all data
        if len(starts) == 1 and starts[0] == 0 and ends[0] >= self.size:
            return None
        self._extents = (np.array(starts, dtype=np.int64), np.array(ends, dtype=np.int64))
        return self._extents

    def drop_all(self) -> None:
        """Unmap every page of the mapping (they stay in the page cache).

        For readers whose windows map pages all over the file (the mem_map scan
        follows the vmemmap); the writers drop just their window's range.
        Mappings that refuse MADV_DONTNEED (the VM_PFNMAP of /proc/vmcore, which
        does not count in RSS anyway) are left alone from then on.
        """
        if self._map is None or not self._can_drop:
            return
        try:
            self._map.madvise(mmap.MADV_DONTNEED)
        except OSError:
            self._can_drop = False

    def drop_range(self, file_offset: int, size: int) -> None:
        """Unmap the mapped pages of [file_offset, file_offset+size) (page cache kept).

        The writers call it for each window they read, so RSS stays a few windows
        however the reads are spread (fault-around maps neighbours too).
        """
        if self._map is None or not self._can_drop or size <= 0:
            return
        file_offset = max(0, file_offset)
        start = file_offset - file_offset % mmap.PAGESIZE
        end = min(self.size, file_offset + size)
        if start >= end:
            return
        try:
            self._map.madvise(mmap.MADV_DONTNEED, start, end - start)
        except OSError:
            self._can_drop = False

    def advise_streaming(self) -> None:
        """Tune read-ahead for one pass over the page data.

        A dense file is read front to back: MADV_SEQUENTIAL. In a mostly empty
        file (a fabricated machine with 1 % data) the reads skip the holes, and
        read-around on each fault would pull the holes around every data page
        into the page cache as zero pages (tens of GiB): MADV_RANDOM. A file at
        least 1/8 data (a real QEMU or saved vmcore) keeps the kernel's
        read-around: with MADV_RANDOM each fault there is one synchronous 4 KiB
        read, 2.6x the wall time of a cold -l -d 1 run of a real 1 GiB vmcore.
        """
        if self._map is not None:
            extents = self.data_extents()
            if extents is None:
                self._map.madvise(mmap.MADV_SEQUENTIAL)
            elif int((extents[1] - extents[0]).sum()) * 8 < self.size:
                self._map.madvise(mmap.MADV_RANDOM)
            else:
                self._map.madvise(mmap.MADV_NORMAL)

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        if self._view is not None:
            try:
                self._view.release()
            except BufferError:
                pass  # exported slices keep the buffer alive until they go
            self._view = None
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:
                pass  # a caller still holds a view; the mapping is freed with it
            self._map = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> MappedFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
