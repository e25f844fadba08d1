"""makedumpfile's flattened stream (-F) and its reassembly into a file (-R).

A writer's positioned writes become records {offset, size} + data on a
non-seekable output (stdout, a pipe, ssh), in program order; -R replays them
with pwrite. Layout in formats/flattened.py.

reference: makedumpfile write_start_flat_header, write_buffer (fd == STDOUT),
write_end_flat_header, read_start_flat_header, rearrange_dumpdata.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat

from cdbdump.errors import CorruptDumpError, InputError, OutputError, TruncatedDumpError
from cdbdump.formats.elf import ELFMAG
from cdbdump.formats.flattened import (
    END_FLAG_FLAT_HEADER,
    MAKEDUMPFILE_DATA_HEADER,
    MAKEDUMPFILE_HEADER,
    MAKEDUMPFILE_SIGNATURE,
    MAX_SIZE_MDF_HEADER,
    TYPE_FLAT_HEADER,
    VERSION_FLAT_HEADER,
)
from cdbdump.formats.kdump import (
    DISK_DUMP_HEADER,
    DISK_DUMP_HEADER_STATUS_OFFSET,
    DUMP_DH_COMPRESSED_INCOMPLETE,
    KDUMP_SIGNATURE,
)
from cdbdump.writers.elf import DUMP_ELF_INCOMPLETE, E_FLAGS_OFFSET
from cdbdump.writers.sink import BufferLike, OutputFile

__all__ = (
    "FlattenedSink",
    "RearrangeResult",
    "mark_rebuilt_incomplete",
    "rearrange",
    "start_header",
)

COALESCE_BYTES = 1 << 20  # small adjacent writes are merged into records of up to 1 MiB
_READ_CHUNK = 1 << 20  # -R copies records through a buffer of this size
_PIPE_BYTES = 1 << 20  # pipe buffer asked for on a stdout that is a pipe
_END_RECORD = MAKEDUMPFILE_DATA_HEADER.pack(END_FLAG_FLAT_HEADER, END_FLAG_FLAT_HEADER)


def start_header() -> bytes:
    """The 4096-byte start header: signature, type 1, version 1 (big endian), zeros."""
    head = MAKEDUMPFILE_HEADER.pack(MAKEDUMPFILE_SIGNATURE, TYPE_FLAT_HEADER,
                                    VERSION_FLAT_HEADER)
    return head.ljust(MAX_SIZE_MDF_HEADER, b"\0")


class FlattenedSink:
    """A :class:`~cdbdump.writers.sink.Sink` that emits flattened records on a stream fd.

    Writes that continue the previous one are merged into one record of at most
    COALESCE_BYTES (so memory stays bounded); larger writes go out as their own
    record without a copy. Zero-length writes emit nothing: -R stops at a record
    of size 0. :meth:`close` writes the end marker; :meth:`discard` does not, so
    a failed run never leaves a stream that reads as complete.
    """

    def __init__(self, fd: int, name: str = "STDOUT") -> None:
        self.path = name
        self._fd = fd
        self.size = 0  # one past the highest byte of the reassembled file
        self.bytes_written = 0  # bytes put on the stream, headers included
        self._pending = bytearray()
        self._pending_offset = 0
        self._closed = False
        _widen_pipe(fd)
        self._emit(start_header())

    def pwrite(self, data: BufferLike, file_offset: int) -> None:
        view = memoryview(data).cast("B")
        if file_offset < 0:
            raise OutputError(f"negative file offset {file_offset:#x}", path=self.path)
        n = len(view)
        if n == 0:
            return
        self.size = max(self.size, file_offset + n)
        pending = self._pending
        if (pending and file_offset == self._pending_offset + len(pending)
                and len(pending) + n <= COALESCE_BYTES):
            pending += view
            return
        self._flush_pending()
        if n < COALESCE_BYTES // 4:
            self._pending_offset = file_offset
            self._pending += view
            return
        self._emit(MAKEDUMPFILE_DATA_HEADER.pack(file_offset, n))
        self._emit(view)

    def _flush_pending(self) -> None:
        if self._pending:
            self._emit(MAKEDUMPFILE_DATA_HEADER.pack(self._pending_offset, len(self._pending)))
            self._emit(self._pending)
            self._pending = bytearray()

    def _emit(self, data: BufferLike) -> None:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            try:
                done += os.write(self._fd, view[done:])
            except OSError as exc:
                self.bytes_written += done
                if exc.errno == errno.EPIPE:
                    raise OutputError("the reader closed the pipe", path=self.path) from exc
                raise OutputError(f"write failed: {exc.strerror}", path=self.path) from exc
        self.bytes_written += done

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Flush the last record and write the end marker."""
        if not self._closed:
            self._flush_pending()
            self._emit(_END_RECORD)
            self._closed = True

    def discard(self) -> None:
        """Stop without an end marker (-R then reports a truncated stream)."""
        self._pending = bytearray()
        self._closed = True


def _widen_pipe(fd: int) -> None:
    """Give a pipe on ``fd`` a 1 MiB buffer (Linux F_SETPIPE_SZ): a window's record
    then goes to the reader in one wake-up instead of sixteen 64 KiB ones."""
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), _PIPE_BYTES)
    except OSError:
        pass  # over /proc/sys/fs/pipe-max-size, or not Linux: the default buffer works


class RearrangeResult:
    """What -R did."""

    def __init__(self) -> None:
        self.nr_records = 0
        self.bytes_copied = 0  # payload bytes written into the file
        self.stream_bytes = 0  # bytes consumed from the stream (up to the end marker)
        self.file_size = 0


def _read_exact(fd: int, size: int, buf: bytearray | None = None) -> memoryview:
    """Read exactly ``size`` bytes (less only at end of stream)."""
    out = buf if buf is not None else bytearray(size)
    view = memoryview(out)[:size]
    got = 0
    while got < size:
        try:
            n = os.readv(fd, [view[got:]])
        except InterruptedError:
            continue
        except OSError as exc:
            raise InputError(f"stdin: read failed: {exc.strerror}") from exc
        if n == 0:  # end of stream (makedumpfile waits 600 s here; EOF is EOF)
            break
        got += n
    return view[:got]


def rearrange(fd: int, out: OutputFile) -> RearrangeResult:
    """Replay the flattened stream on ``fd`` into ``out`` (makedumpfile -R).

    Reads only up to the end marker: whatever follows it (a raw partition read
    whole by dd) is ignored. Raises CorruptDumpError (TruncatedDumpError for a
    short stream) with the stream offset; records replayed so far stay written.
    """
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        raise InputError(f"stdin: {exc.strerror}") from exc
    if stat.S_ISCHR(mode) and os.isatty(fd):
        raise InputError("stdin is a terminal: pipe a flattened dump into -R")
    result = RearrangeResult()
    head = _read_exact(fd, MAX_SIZE_MDF_HEADER)
    if len(head) == 0:
        raise InputError("stdin: empty stream, expected a flattened dump (makedumpfile -F)")
    result.stream_bytes = len(head)
    if len(head) < MAKEDUMPFILE_HEADER.size:
        raise TruncatedDumpError("stdin: flattened start header", file_offset=0,
                                 needed=MAX_SIZE_MDF_HEADER, available=len(head))
    signature, ftype, version = MAKEDUMPFILE_HEADER.unpack_from(head)
    # makedumpfile compares with strcmp: "makedumpfile" then a NUL
    if signature[:13] != MAKEDUMPFILE_SIGNATURE[:13]:
        raise CorruptDumpError(
            f"no flattened-format signature (first bytes {bytes(head[:16]).hex()})",
            file_offset=0, field="stdin")
    if ftype != TYPE_FLAT_HEADER:
        raise CorruptDumpError(f"flattened header type {ftype}, expected {TYPE_FLAT_HEADER}",
                               file_offset=16, field="stdin")
    if version != VERSION_FLAT_HEADER:
        raise CorruptDumpError(f"flattened header version {version}, expected "
                               f"{VERSION_FLAT_HEADER}", file_offset=24, field="stdin")
    if len(head) < MAX_SIZE_MDF_HEADER:
        raise TruncatedDumpError("stdin: flattened start header", file_offset=0,
                                 needed=MAX_SIZE_MDF_HEADER, available=len(head))
    buf = bytearray(_READ_CHUNK)
    hdr = bytearray(MAKEDUMPFILE_DATA_HEADER.size)
    while True:
        at = result.stream_bytes
        raw = _read_exact(fd, MAKEDUMPFILE_DATA_HEADER.size, hdr)
        result.stream_bytes += len(raw)
        if len(raw) < MAKEDUMPFILE_DATA_HEADER.size:
            raise TruncatedDumpError("stdin: flattened record header (no end marker)",
                                     file_offset=at, needed=at + MAKEDUMPFILE_DATA_HEADER.size,
                                     available=result.stream_bytes)
        offset, size = MAKEDUMPFILE_DATA_HEADER.unpack_from(raw)
        if offset == END_FLAG_FLAT_HEADER and size == END_FLAG_FLAT_HEADER:
            break
        if offset < 0 or size <= 0:
            raise CorruptDumpError(f"record {{offset {offset:#x}, size {size:#x}}} is neither "
                                   "data nor the end marker", file_offset=at,
                                   field="stdin: flattened record")
        done = 0
        while done < size:
            wanted = min(size - done, _READ_CHUNK)
            chunk = _read_exact(fd, wanted, buf)
            if len(chunk):
                out.pwrite(chunk, offset + done)
            done += len(chunk)
            result.stream_bytes += len(chunk)
            if len(chunk) < wanted:
                raise TruncatedDumpError(
                    f"stdin: flattened record data for file offset {offset:#x}", file_offset=at,
                    needed=at + MAKEDUMPFILE_DATA_HEADER.size + size,
                    available=result.stream_bytes)
        result.nr_records += 1
        result.bytes_copied += size
    result.file_size = out.size
    return result


def mark_rebuilt_incomplete(out: OutputFile) -> bool:
    """Flag a file rebuilt from a cut stream as incomplete; True if it could be.

    A kdump-compressed file gets DUMP_DH_COMPRESSED_INCOMPLETE in its header
    status, an ELF dump DUMP_ELF_INCOMPLETE in e_flags, as makedumpfile marks a
    dump cut short by ENOSPC; its descriptors past the cut are still zero, so
    readers see those pages as lost instead of trusting the file.
    """
    try:
        fd = os.open(out.path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        head = os.pread(fd, DISK_DUMP_HEADER.size, 0)
        if head[: len(KDUMP_SIGNATURE)] == KDUMP_SIGNATURE and len(head) == DISK_DUMP_HEADER.size:
            at, bit = DISK_DUMP_HEADER_STATUS_OFFSET, DUMP_DH_COMPRESSED_INCOMPLETE
        elif head[: len(ELFMAG)] == ELFMAG and len(head) >= E_FLAGS_OFFSET + 4:
            at, bit = E_FLAGS_OFFSET, DUMP_ELF_INCOMPLETE
        else:
            return False
        value = int.from_bytes(head[at : at + 4], "little") | bit
        os.pwrite(fd, value.to_bytes(4, "little"), at)
    except OSError:
        return False
    else:
        return True
    finally:
        os.close(fd)
