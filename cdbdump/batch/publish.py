"""Outputs appear whole or not at all: a temporary name, fsync, a no-clobber rename.

A worker writes ``DIR/sub/.NAME.<host>-<pid>-<random>.part`` beside the final
``DIR/sub/NAME`` (same directory, so the rename is atomic), and publishes it with
link(2) + unlink(2), which fails instead of replacing an output that appeared
meanwhile; with ``replace`` (``-f``) rename(2) replaces it. A worker that dies
leaves only a ``.part`` file, which no reader mistakes for a dump and which the
batch removes (:func:`sweep_partials`). The pid in the name says which process
wrote it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import secrets
import socket
from pathlib import Path
from types import TracebackType

from cdbdump.errors import OutputError

__all__ = ("BatchLock", "fsync_file", "partial_name", "publish", "sweep_partials")

_PARTIAL_RE = re.compile(r"^\..+\.[A-Za-z0-9_.-]+-(?P<pid>\d+)-[0-9a-f]{8}\.part$")
_LOCK_NAME = ".batch.lock"


def partial_name(output: Path) -> Path:
    """A fresh temporary name for ``output``, unique per process and attempt."""
    host = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:32] or "host"
    return output.with_name(f".{output.name}.{host}-{os.getpid()}-{secrets.token_hex(4)}.part")


def is_partial(path: Path) -> bool:
    return _PARTIAL_RE.match(path.name) is not None


def partial_pid(path: Path) -> int | None:
    """The pid of the process that wrote the temporary file ``path``."""
    m = _PARTIAL_RE.match(path.name)
    return int(m.group("pid")) if m else None


def fsync_file(path: Path) -> None:
    """Make ``path``'s data durable (before its name is published)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        raise OutputError(f"cannot open to fsync: {exc.strerror}", path=str(path)) from exc
    try:
        os.fsync(fd)
    except OSError as exc:
        raise OutputError(f"fsync failed: {exc.strerror}", path=str(path)) from exc
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return  # some file systems refuse directory fds; the rename itself happened
    try:
        os.fsync(fd)
    except OSError:
        pass  # EINVAL on file systems without directory fsync
    finally:
        os.close(fd)


def publish(partial: Path, output: Path, *, replace: bool) -> None:
    """Give the complete file ``partial`` its final name ``output``.

    Without ``replace`` an existing ``output`` (of any kind) is never touched:
    OutputError. With it, a regular file or symbolic link named ``output`` is
    replaced (the link itself, never its target); a directory is refused.
    """
    fsync_file(partial)
    if replace:
        if output.is_dir() and not output.is_symlink():
            raise OutputError("is a directory", path=str(output))
        try:
            partial.rename(output)
        except OSError as exc:
            raise OutputError(f"cannot rename {partial.name} to it: {exc.strerror}",
                              path=str(output)) from exc
    else:
        try:
            os.link(partial, output, follow_symlinks=False)
        except FileExistsError as exc:
            raise OutputError("appeared while it was being written; left alone",
                              path=str(output)) from exc
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP):
                raise OutputError(f"cannot link {partial.name} to it: {exc.strerror}",
                                  path=str(output)) from exc
            # no hard links here (vfat, some FUSE): check, then rename
            if output.exists() or output.is_symlink():
                raise OutputError("appeared while it was being written; left alone",
                                  path=str(output)) from exc
            partial.rename(output)
        else:
            partial.unlink()
    _fsync_dir(output.parent)


def sweep_partials(out_dir: Path) -> list[Path]:
    """Remove the temporary files of dead workers under ``out_dir``; return them.

    Only called while the batch holds :class:`BatchLock`, when no worker of this
    batch is writing.
    """
    removed: list[Path] = []
    for dirpath, _dirnames, filenames in os.walk(out_dir):
        for name in filenames:
            path = Path(dirpath) / name
            if is_partial(path):
                try:
                    path.unlink()
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    raise OutputError(f"cannot remove a stale temporary file: {exc.strerror}",
                                      path=str(path)) from exc
                removed.append(path)
    return removed


class BatchLock:
    """One batch at a time per output directory (flock on DIR/.batch.lock)."""

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / _LOCK_NAME
        self._fd = -1

    def __enter__(self) -> BatchLock:
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            self._fd = os.open(self.path, flags, 0o600)
        except OSError as exc:
            raise OutputError(f"cannot open the batch lock: {exc.strerror}",
                              path=str(self.path)) from exc
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 32, 0).decode(errors="replace").strip()
            os.close(self._fd)
            self._fd = -1
            raise OutputError(
                f"another batch is writing to this directory (pid {holder or '?'})",
                path=str(self.path.parent),
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # releases the flock
            self._fd = -1
