"""Where dump bytes go: a positioned-write Sink, and the output file behind it.

Writers only ever call ``sink.pwrite(data, file_offset)``. A regular file
(:class:`OutputFile`) does that with pwrite(2); a flattened (-F) stream sink can
turn each call into one {offset, size} record instead, so every writer works
on stdout too.

reference: makedumpfile open_dump_file: the dump file is created with mode 0600
and O_EXCL unless -f; cdbdump also refuses to follow or truncate through a
symbolic link, and never overwrites its own input.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeAlias, runtime_checkable

from cdbdump.closing import Closing
from cdbdump.errors import OutputError, OutputNoSpaceError

__all__ = (
    "OutputFile", "Sink", "check_output", "create_output", "is_same_file", "write_small_output",
)

BufferLike: TypeAlias = Any  # bytes, memoryview, numpy array: anything with the buffer protocol

# errno values that mean "the output is full": makedumpfile treats these (and -L)
# alike and turns them into an incomplete dump.
_NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_IOV_MAX = 1024  # Linux UIO_MAXIOV: buffers per pwritev(2)


@runtime_checkable
class Sink(Protocol):
    """A destination for positioned writes (a seekable file, or a flattened stream)."""

    @property
    def size(self) -> int:
        """One past the highest byte written so far."""
        ...

    def pwrite(self, data: BufferLike, file_offset: int) -> None:
        """Write all of ``data`` at ``file_offset``.

        Raises OutputNoSpaceError (with ``written``) when the output is full, and
        OutputError for any other failure.
        """
        ...


class OutputFile(Closing):
    """A dump file opened for writing; implements :class:`Sink`.

    ``limit`` emulates makedumpfile -L: no byte at or past it is written and a
    write that would cross it raises OutputNoSpaceError, exactly like ENOSPC.
    """

    def __init__(self, path: str, fd: int, *, limit: int | None = None) -> None:
        self.path = path
        self._fd = fd
        self.limit = limit
        self.size = 0
        self.bytes_written = 0

    def pwrite(self, data: BufferLike, file_offset: int) -> None:
        view = memoryview(data).cast("B")
        if file_offset < 0:
            raise OutputError(f"negative file offset {file_offset:#x}", path=self.path)
        allowed = len(view)
        if self.limit is not None:
            allowed = max(0, min(allowed, self.limit - file_offset))
        done = 0
        while done < allowed:
            try:
                n = os.pwrite(self._fd, view[done:allowed], file_offset + done)
            except OSError as exc:
                self._account(file_offset, done)
                if exc.errno in _NO_SPACE_ERRNOS:
                    raise OutputNoSpaceError(
                        f"no space left ({exc.strerror})", path=self.path,
                        file_offset=file_offset, requested=len(view), written=done,
                    ) from exc
                raise OutputError(
                    f"write of {len(view):#x} bytes at file offset {file_offset:#x} failed: "
                    f"{exc.strerror}",
                    path=self.path,
                ) from exc
            if n == 0:  # cannot happen for regular files; do not spin if it does
                self._account(file_offset, done)
                raise OutputNoSpaceError(
                    "write returned 0", path=self.path,
                    file_offset=file_offset, requested=len(view), written=done,
                )
            done += n
        self._account(file_offset, done)
        if done < len(view):
            raise OutputNoSpaceError(
                f"size limit {self.limit:#x} reached", path=self.path,
                file_offset=file_offset, requested=len(view), written=done,
            )

    def pwritev(self, parts: Sequence[bytes | memoryview], file_offset: int) -> None:
        """Write ``parts`` back to back from ``file_offset``, as :meth:`pwrite` of their
        concatenation would, without building it: one pwritev(2) call.

        Short writes, errors and the -L limit fall back to :meth:`pwrite` of what is
        left, so they end exactly as there (``written`` counts from ``file_offset``).
        """
        total = sum(map(len, parts))
        done = 0
        if (file_offset >= 0 and 1 < len(parts) <= _IOV_MAX
                and (self.limit is None or file_offset + total <= self.limit)):
            try:
                done = os.pwritev(self._fd, parts, file_offset)
            except OSError:
                done = 0  # pwrite below meets the error again and reports it
            self._account(file_offset, done)
            if done == total:
                return
        rest = memoryview(b"".join(parts))[done:]
        try:
            self.pwrite(rest, file_offset + done)
        except OutputNoSpaceError as exc:
            exc.file_offset, exc.requested = file_offset, total
            exc.written += done
            raise

    def _account(self, file_offset: int, done: int) -> None:
        self.bytes_written += done
        if done:
            self.size = max(self.size, file_offset + done)

    def fileno(self) -> int:
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def start_writeback(self, file_offset: int, size: int) -> None:
        """Start writing [file_offset, file_offset+size) to the disk now, without
        waiting, so the final fsync has little left to wait for.

        reference: Linux mm/fadvise.c generic_fadvise: POSIX_FADV_DONTNEED starts
        writeback of the range's dirty pages (WB_SYNC_NONE) and drops only the
        clean ones. A hint: errors are the fsync's to report.
        """
        try:
            os.posix_fadvise(self._fd, file_offset, size, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass

    def sync(self) -> None:
        """fsync(2): make the dump durable before reporting success."""
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise OutputError(f"fsync failed: {exc.strerror}", path=self.path) from exc

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            try:
                os.close(fd)
            except OSError as exc:  # NFS and friends report write errors at close
                raise OutputError(f"close failed: {exc.strerror}", path=self.path) from exc

    def discard(self) -> None:
        """Close and delete the file (a failed run must not leave a half dump behind)."""
        try:
            self.close()
        finally:
            try:
                Path(self.path).unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise OutputError(f"cannot remove: {exc.strerror}", path=self.path) from exc


def is_same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """True when both paths name one existing file (symlinks followed, like samefile)."""
    try:
        sa = Path(a).stat()
        sb = Path(b).stat()
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def check_output(
    path: str | os.PathLike[str],
    force: bool = False,
    *,
    inputs: Iterable[str | os.PathLike[str]] = (),
) -> None:
    """Refuse now what create_output would refuse later, creating nothing.

    For outputs written at the end of a run (--report-json): the same file as
    an input, a symbolic link, a non-regular file, an existing file without
    ``force``, a missing or unwritable directory.
    """
    path = os.fspath(path)
    _existing_output(path, force, inputs, by_name=True)
    parent = Path(path).absolute().parent
    if not parent.is_dir():
        raise OutputError(f"directory {parent} does not exist", path=path)
    if not os.access(parent, os.W_OK):
        raise OutputError(f"directory {parent} is not writable", path=path)
    try:
        if os.statvfs(parent).f_flag & os.ST_RDONLY:
            raise OutputError(f"directory {parent} is on a read-only file system", path=path)
    except OSError:
        pass  # statvfs unsupported: the open will tell


def _existing_output(
    path: str, force: bool, inputs: Iterable[str | os.PathLike[str]], *, by_name: bool = False
) -> os.stat_result | None:
    """The output rules both checks share: never an input (also ``by_name``, for a
    file not created yet), never a symbolic link or a non-regular file, never an
    existing file without ``force``. Returns the existing file's lstat, or None."""
    for source in inputs:
        same_name = by_name and Path(path).absolute() == Path(source).absolute()
        if same_name or is_same_file(path, source):
            raise OutputError(f"is the same file as the input {os.fspath(source)}", path=path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise OutputError(f"cannot stat: {exc.strerror}", path=path) from exc
    if stat.S_ISLNK(st.st_mode):
        raise OutputError("is a symbolic link; refusing to write through it", path=path)
    if not stat.S_ISREG(st.st_mode):
        raise OutputError("exists and is not a regular file", path=path)
    if not force:
        raise OutputError("already exists (use -f to overwrite)", path=path)
    return st


def create_output(
    path: str | os.PathLike[str],
    force: bool = False,
    *,
    inputs: Iterable[str | os.PathLike[str]] = (),
    limit: int | None = None,
) -> OutputFile:
    """Create the dump file: mode 0600, O_EXCL, never through a symbolic link.

    Without ``force`` an existing path is an error (makedumpfile without -f).
    With ``force`` an existing *regular file* is unlinked and created afresh
    (so a file another process still has open is not truncated under it);
    symbolic links, directories and devices are refused. An output that is one
    of ``inputs`` is refused before anything is touched.
    """
    path = os.fspath(path)
    st = _existing_output(path, force, inputs)
    if st is not None:
        try:
            Path(path).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise OutputError(f"cannot remove the old file: {exc.strerror}", path=path) from exc
    # read too: the kdump bitmaps are built in place through a shared mapping
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError as exc:
        # someone created it between our check and open: do not touch it
        raise OutputError("appeared while it was being created", path=path) from exc
    except OSError as exc:
        raise OutputError(f"cannot create: {exc.strerror}", path=path) from exc
    return OutputFile(path, fd, limit=limit)


def write_small_output(
    path: str | os.PathLike[str],
    data: bytes,
    force: bool = False,
    *,
    inputs: Iterable[str | os.PathLike[str]] = (),
) -> None:
    """A small file (a JSON report) created under the dump's rules (create_output)."""
    out = create_output(path, force, inputs=inputs)
    try:
        out.pwrite(data, 0)
    finally:
        out.close()
