from __future__ import annotations

import mmap
from pathlib import Path

import pytest

from cdbdump.errors import InputError, TruncatedDumpError
from cdbdump.fileio import MappedFile


def test_pread_fallback_when_mmap_is_refused(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "f"
    path.write_bytes(bytes(range(256)) * 64)

    def refuse(*_args: object, **_kwargs: object) -> mmap.mmap:
        raise OSError(19, "No such device")  # what /proc files without ->mmap answer

    monkeypatch.setattr(mmap, "mmap", refuse)
    with MappedFile(path) as f:
        assert not f.is_mapped
        assert bytes(f.view(0x1FE, 4)) == bytes([0xFE, 0xFF, 0x00, 0x01])
        with pytest.raises(TruncatedDumpError) as exc:
            f.view(0x3FFE, 4, "tail")
        assert exc.value.file_offset == 0x3FFE
        f.drop_all()  # no mapping: nothing to do, no error


def test_open_errors_are_typed(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot open"):
        MappedFile(tmp_path / "missing")
    with pytest.raises(InputError, match="is a directory"):
        MappedFile(tmp_path)
