"""Output file creation (0600, O_EXCL, -f, no symlinks, not the input) and pwrite semantics."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from cdbdump.errors import OutputError, OutputNoSpaceError
from cdbdump.writers import sink as sink_module
from cdbdump.writers.sink import OutputFile, Sink, create_output, is_same_file


def test_created_0600_exclusive(tmp_path: Path) -> None:
    path = tmp_path / "dump"
    old = os.umask(0)
    try:
        out = create_output(path)
    finally:
        os.umask(old)
    out.close()
    st = path.lstat()
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert stat.S_ISREG(st.st_mode)


def test_existing_file_needs_force(tmp_path: Path) -> None:
    path = tmp_path / "dump"
    path.write_bytes(b"old dump")
    with pytest.raises(OutputError, match="already exists"):
        create_output(path)
    assert path.read_bytes() == b"old dump"


def test_force_replaces_the_file_instead_of_truncating_it(tmp_path: Path) -> None:
    path = tmp_path / "dump"
    path.write_bytes(b"old dump contents")
    old_inode = path.stat().st_ino
    keeper = os.open(path, os.O_RDONLY)  # e.g. a reader still holding the old dump
    try:
        with create_output(path, force=True) as out:
            out.pwrite(b"new", 0)
        assert path.read_bytes() == b"new"
        assert os.pread(keeper, 100, 0) == b"old dump contents"  # unlinked, not truncated
        assert path.stat().st_ino != old_inode or os.fstat(keeper).st_nlink == 0
    finally:
        os.close(keeper)


@pytest.mark.parametrize("force", [False, True])
def test_symlink_is_never_followed(tmp_path: Path, force: bool) -> None:
    target = tmp_path / "precious"
    target.write_bytes(b"do not touch")
    link = tmp_path / "dump"
    link.symlink_to(target)
    with pytest.raises(OutputError, match="symbolic link"):
        create_output(link, force=force)
    assert target.read_bytes() == b"do not touch"
    assert link.is_symlink()


def test_dangling_symlink_is_refused(tmp_path: Path) -> None:
    link = tmp_path / "dump"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutputError, match="symbolic link"):
        create_output(link, force=True)
    assert not (tmp_path / "nowhere").exists()


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="not a regular file"):
        create_output(tmp_path, force=True)


def test_output_that_is_the_input_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "vmcore"
    source.write_bytes(b"ELF data")
    hardlink = tmp_path / "hard"
    os.link(source, hardlink)
    symlink = tmp_path / "soft"
    symlink.symlink_to(source)
    for out in (source, hardlink):
        with pytest.raises(OutputError, match="same file as the input"):
            create_output(out, force=True, inputs=[source])
    with pytest.raises(OutputError, match="same file as the input"):
        create_output(source, force=True, inputs=[symlink])
    assert source.read_bytes() == b"ELF data"
    assert is_same_file(symlink, source)
    assert not is_same_file(tmp_path / "missing", source)


def test_missing_directory_is_output_error(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="cannot create"):
        create_output(tmp_path / "no" / "dump")


def test_pwrite_tracks_size_and_leaves_holes_zero(tmp_path: Path) -> None:
    path = tmp_path / "dump"
    with create_output(path) as out:
        assert isinstance(out, Sink)
        out.pwrite(b"tail", 10_000)
        out.pwrite(memoryview(b"head"), 0)
        assert out.size == 10_004
        assert out.bytes_written == 8
    data = path.read_bytes()
    assert data[:4] == b"head" and data[10_000:] == b"tail"
    assert data[4:10_000] == bytes(9_996)


def test_short_writes_are_continued(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_pwrite = os.pwrite
    calls = []

    def dribble(fd: int, data: Any, offset: int) -> int:
        calls.append(offset)
        return real_pwrite(fd, bytes(data)[:3], offset)

    path = tmp_path / "dump"
    with create_output(path) as out:
        monkeypatch.setattr(sink_module.os, "pwrite", dribble)
        out.pwrite(b"0123456789", 100)
        monkeypatch.undo()
    assert path.read_bytes()[100:] == b"0123456789"
    assert calls == [100, 103, 106, 109]


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG])
def test_full_disk_reports_bytes_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int
) -> None:
    real_pwrite = os.pwrite
    room = [5]

    def full_after_room(fd: int, data: Any, offset: int) -> int:
        if room[0] == 0:
            raise OSError(err, os.strerror(err))
        n = min(room[0], len(data))
        room[0] -= n
        return real_pwrite(fd, bytes(data)[:n], offset)

    with create_output(tmp_path / "dump") as out:
        monkeypatch.setattr(sink_module.os, "pwrite", full_after_room)
        with pytest.raises(OutputNoSpaceError) as info:
            out.pwrite(b"abcdefghij", 4096)
        monkeypatch.undo()
        assert (info.value.file_offset, info.value.requested, info.value.written) == (4096, 10, 5)
        assert out.size == 4101
    assert isinstance(info.value.__cause__, OSError)


def test_other_write_errors_are_output_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def eio(fd: int, data: Any, offset: int) -> int:
        raise OSError(errno.EIO, "I/O error")

    with create_output(tmp_path / "dump") as out:
        monkeypatch.setattr(sink_module.os, "pwrite", eio)
        with pytest.raises(OutputError, match="I/O error") as info:
            out.pwrite(b"x", 0)
        monkeypatch.undo()
    assert not isinstance(info.value, OutputNoSpaceError)


def test_size_limit_behaves_like_enospc(tmp_path: Path) -> None:
    path = tmp_path / "dump"
    with create_output(path, limit=100) as out:
        out.pwrite(b"a" * 60, 0)
        with pytest.raises(OutputNoSpaceError, match="size limit") as info:
            out.pwrite(b"b" * 60, 60)
        assert info.value.written == 40
        with pytest.raises(OutputNoSpaceError):
            out.pwrite(b"c", 500)
        out.pwrite(b"Z", 0)  # rewriting inside the limit still works (header fix-ups)
    assert path.read_bytes() == b"Z" + b"a" * 59 + b"b" * 40


def test_discard_removes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "dump"
    out = create_output(path)
    out.pwrite(b"partial", 0)
    out.discard()
    assert not path.exists()
    assert out.closed
    out.close()  # idempotent


def test_output_file_is_a_sink() -> None:
    fd = os.open("/dev/null", os.O_WRONLY)
    out = OutputFile("/dev/null", fd)
    assert isinstance(out, Sink)
    out.close()
