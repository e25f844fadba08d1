"""Serve one file through FUSE with injected faults (run as a process, foreground).

    python -m tests.faults.fusefile BACKING MOUNTPOINT [--eio OFF:LEN ...]
        [--gate OFF --gate-dir DIR] [--shrink-at OFF --shrink-to SIZE]

The mount shows BACKING as MOUNTPOINT/vmcore (read-only, direct_io so that every
read(2) reaches us and nothing is served from the page cache):

* ``--eio OFF:LEN`` — reads touching [OFF, OFF+LEN) fail with EIO, as a disk
  with a bad sector or device-mapper's error target does.
* ``--gate OFF`` — the first read at or past OFF (of at least --gate-min-size
  bytes: the writer reads big runs, page-table and struct reads are small)
  creates DIR/hit and blocks until DIR/release exists (so a test can send a
  signal at a known point).
* ``--shrink-at OFF --shrink-to SIZE`` — once a read reaches OFF the file
  behaves as truncated to SIZE (reads past it return nothing, stat says SIZE).
* ``--patches JSON`` — a file of ``[[offset, "hex bytes"], ...]`` laid over the
  backing file, re-read whenever it changes (the fuzz harness mutates a real
  1 GiB vmcore this way without copying or touching it).

Ready when MOUNTPOINT/vmcore exists; stop with ``fusermount3 -u MOUNTPOINT``.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

import mfusepy

NAME = "/vmcore"


class FaultyFile(mfusepy.Operations):  # type: ignore[misc]
    use_ns = True

    def __init__(self, backing: Path, eio: list[tuple[int, int]], gate: int | None,
                 gate_dir: Path | None, shrink_at: int | None, shrink_to: int | None,
                 gate_min_size: int = 0) -> None:
        self.fd = os.open(backing, os.O_RDONLY)
        self.size = os.fstat(self.fd).st_size
        self.eio = eio
        self.gate = gate
        self.gate_dir = gate_dir
        self.gate_done = False
        self.gate_min_size = gate_min_size
        self.shrink_at = shrink_at
        self.shrink_to = shrink_to
        self.mutex = threading.Lock()
        self.patches_path: Path | None = None
        self.patches: list[tuple[int, bytes]] = []
        self.patches_mtime = -1

    def getattr(self, path: str, fh: Any = None) -> dict[str, int]:
        now = time.time_ns()
        if path == "/":
            return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2, "st_size": 0,
                    "st_atime": now, "st_mtime": now, "st_ctime": now}
        if path != NAME:
            raise mfusepy.FuseOSError(errno.ENOENT)
        return {"st_mode": stat.S_IFREG | 0o444, "st_nlink": 1, "st_size": self.size,
                "st_atime": now, "st_mtime": now, "st_ctime": now}

    def readdir(self, path: str, fh: Any) -> list[str]:
        return [".", "..", NAME[1:]]

    def open(self, path: str, flags: int) -> int:
        if path != NAME:
            raise mfusepy.FuseOSError(errno.ENOENT)
        return 0

    def read(self, path: str, size: int, offset: int, fh: Any) -> bytes:
        end = offset + size
        if (self.gate is not None and end > self.gate and size >= self.gate_min_size
                and not self.gate_done):
            with self.mutex:
                if not self.gate_done and self.gate_dir is not None:
                    (self.gate_dir / "hit").touch()
                    deadline = time.monotonic() + 60
                    while not (self.gate_dir / "release").exists() and time.monotonic() < deadline:
                        time.sleep(0.01)
                    self.gate_done = True
        if self.shrink_at is not None and self.shrink_to is not None and end > self.shrink_at:
            self.size = min(self.size, self.shrink_to)
        for lo, length in self.eio:
            if offset < lo + length and lo < end:
                raise mfusepy.FuseOSError(errno.EIO)
        if offset >= self.size:
            return b""
        data = os.pread(self.fd, min(size, self.size - offset), offset)
        patches = self._current_patches()
        if patches:
            buf = bytearray(data)
            for at, raw in patches:
                lo, hi = max(at, offset), min(at + len(raw), offset + len(buf))
                if lo < hi:
                    buf[lo - offset : hi - offset] = raw[lo - at : hi - at]
            data = bytes(buf)
        return data

    def _current_patches(self) -> list[tuple[int, bytes]]:
        if self.patches_path is None:
            return []
        try:
            mtime = self.patches_path.stat().st_mtime_ns
        except FileNotFoundError:
            return []
        if mtime != self.patches_mtime:
            with self.mutex:
                raw = json.loads(self.patches_path.read_text() or "[]")
                self.patches = [(int(o), bytes.fromhex(h)) for o, h in raw]
                self.patches_mtime = mtime
        return self.patches


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("backing", type=Path)
    ap.add_argument("mountpoint", type=Path)
    ap.add_argument("--eio", action="append", default=[])
    ap.add_argument("--gate", type=lambda v: int(v, 0))
    ap.add_argument("--gate-dir", type=Path)
    ap.add_argument("--gate-min-size", type=lambda v: int(v, 0), default=0)
    ap.add_argument("--patches", type=Path)
    ap.add_argument("--shrink-at", type=lambda v: int(v, 0))
    ap.add_argument("--shrink-to", type=lambda v: int(v, 0))
    args = ap.parse_args()
    eio = []
    for item in args.eio:
        off, length = item.split(":")
        eio.append((int(off, 0), int(length, 0)))
    ops = FaultyFile(args.backing, eio, args.gate, args.gate_dir, args.shrink_at, args.shrink_to,
                     args.gate_min_size)
    ops.patches_path = args.patches
    mfusepy.FUSE(ops, str(args.mountpoint), foreground=True, ro=True, direct_io=True,
                 nothreads=False)


if __name__ == "__main__":
    main()
