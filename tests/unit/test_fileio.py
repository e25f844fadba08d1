from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from cdbdump.errors import AddressError, InputError, InputReadError, TruncatedDumpError
from cdbdump.fileio import MappedFile


def test_reads_by_offset_and_past_the_end(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(bytes(range(256)) * 64)
    with MappedFile(path) as f:
        assert bytes(f.view(0x1FE, 4)) == bytes([0xFE, 0xFF, 0x00, 0x01])
        out = np.zeros(3, dtype=np.uint8)
        f.read_into(0x10, out)
        assert out.tolist() == [0x10, 0x11, 0x12]
        with pytest.raises(TruncatedDumpError) as exc:
            f.view(0x3FFE, 4, "tail")
        assert exc.value.file_offset == 0x3FFE


def test_file_shrunk_while_read_is_a_read_error(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(bytes(0x3000))
    with MappedFile(path) as f:
        os.truncate(path, 0x1800)
        assert len(f.view(0x1000, 0x800)) == 0x800
        with pytest.raises(InputReadError) as exc:
            f.view(0x1000, 0x1000)
        assert exc.value.file_offset == 0x1800
        assert isinstance(exc.value, AddressError)  # readers degrade on it like a hole
        assert "truncated while being read" in str(exc.value)


def test_open_errors_are_typed(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot open"):
        MappedFile(tmp_path / "missing")
    with pytest.raises(InputError, match="is a directory"):
        MappedFile(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDWR)  # a writer, so opening it for reading does not block
    try:
        with pytest.raises(InputError, match="pipe or FIFO"):
            MappedFile(fifo)
    finally:
        os.close(fd)
