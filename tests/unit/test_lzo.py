"""The LZO backends (cdbdump._lzo): python-lzo's lzo1x_1 bytes, lzallright's wheel, and
the one-line error when neither is installed."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from cdbdump import _lzo
from cdbdump.codecs import Codec, decompress_page
from cdbdump.errors import CorruptDumpError, UnsupportedError
from cdbdump.fileio import MappedFile
from cdbdump.vmcore.kdumpfile import KdumpFile
from cdbdump.writers.compress import PageCompressor
from tests.builders import SyntheticKernel

PS = 4096
BACKENDS = [name for name, _, _ in _lzo.BACKENDS]
# Blocks both LZO modules before cdbdump imports them (sys.modules[name] = None).
NO_LZO = "import sys; sys.modules['lzo'] = sys.modules['lzallright'] = None; "


def _pages() -> list[bytes]:
    rng = np.random.default_rng(7)
    text = b"".join(b"struct page %d slab\0\0\0\0" % i for i in range(300))[:PS]
    half = rng.integers(0, 256, PS // 2, dtype=np.uint8).tobytes() + bytes(PS // 2)
    return [text, half, bytes(PS), b"\xab" * PS, rng.integers(0, 4, PS, np.uint8).tobytes()]


@pytest.fixture(params=BACKENDS)
def lzo_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
                ) -> Iterator[_lzo.Backend]:
    """Each backend in turn, forced through $CDBDUMP_LZO (both are in the test venv)."""
    monkeypatch.setenv(_lzo.ENV_BACKEND, request.param)
    backend = _lzo.backend()
    assert backend.name == request.param
    yield backend


def test_preference_is_python_lzo_then_lzallright(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_lzo.ENV_BACKEND, raising=False)
    assert _lzo.backend().name == "python-lzo"
    monkeypatch.setitem(sys.modules, "lzo", None)  # python-lzo not installed
    monkeypatch.setattr(_lzo, "_chosen", {})
    assert _lzo.backend().name == "lzallright"
    assert not _lzo.backend().byte_identical


def test_python_lzo_is_liblzo_lzo1x_1() -> None:
    lzo = pytest.importorskip("lzo")
    backend = _lzo._python_lzo(lzo)
    assert backend.byte_identical
    for page in _pages():
        assert backend.compress(page) == lzo.compress(page, 1, False)


def test_backends_read_each_others_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    stored = {}
    for name in BACKENDS:
        monkeypatch.setenv(_lzo.ENV_BACKEND, name)
        with PageCompressor(Codec.LZO, PS, threads=1) as pc:
            stored[name] = pc.compress_pages(b"".join(_pages()))
    for name in BACKENDS:
        monkeypatch.setenv(_lzo.ENV_BACKEND, name)
        for written in stored.values():
            offsets = [0, *np.cumsum(written.sizes, dtype=np.int64).tolist()]
            for i, page in enumerate(_pages()):
                data = bytes(written.payload)[offsets[i]:offsets[i + 1]]
                assert decompress_page(int(written.flags[i]), data, PS) == page, (name, i)


def test_garbage_and_long_streams_are_corrupt(lzo_backend: _lzo.Backend) -> None:
    two_pages = _pages()[0] * 2
    for stored in (b"\x13\x37garbage" * 5, b"", lzo_backend.compress(two_pages),
                   lzo_backend.compress(_pages()[1])[:-3]):
        with pytest.raises(CorruptDumpError) as info:
            decompress_page(Codec.LZO.flag, stored, PS, file_offset=0x40)
        assert info.value.file_offset == 0x40
        assert len(str(info.value)) < 300  # not lzallright's partial output


def test_unknown_backend_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_lzo.ENV_BACKEND, "minilzo")
    with pytest.raises(UnsupportedError, match="CDBDUMP_LZO"):
        Codec.LZO.check_available()


def test_no_backend_names_both_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_lzo.ENV_BACKEND, raising=False)
    monkeypatch.setitem(sys.modules, "lzo", None)
    monkeypatch.setitem(sys.modules, "lzallright", None)
    monkeypatch.setattr(_lzo, "_chosen", {})
    assert not Codec.LZO.available
    with pytest.raises(UnsupportedError) as info:
        Codec.LZO.check_available()
    text = str(info.value)
    assert "-l" in text and "python-lzo" in text and "lzallright" in text
    assert "cdbdump[lzo]" in text


def test_cli_without_lzo_is_one_line(tiny_vmcore: Callable[..., tuple[SyntheticKernel, Path]],
                                     tmp_path: Path) -> None:
    _, vmcore = tiny_vmcore("6.1", seed=5)
    out = tmp_path / "o.kdump"
    env = {k: v for k, v in os.environ.items() if k != _lzo.ENV_BACKEND}
    proc = subprocess.run(
        [sys.executable, "-c", NO_LZO + "from cdbdump.cli import main; main()",
         "-l", "-d", "31", str(vmcore), str(out)],
        capture_output=True, text=True, env=env, check=False, timeout=120)
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("cdbdump: error: ") and "lzallright" in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not out.exists()


def test_dump_with_each_backend_reads_back(
        lzo_backend: _lzo.Backend, tiny_vmcore: Callable[..., tuple[SyntheticKernel, Path]],
        tmp_path: Path) -> None:
    kernel, vmcore = tiny_vmcore("6.1", seed=5)
    out = tmp_path / f"{lzo_backend.name}.kdump"
    proc = subprocess.run([sys.executable, "-m", "cdbdump", "-l", "-d", "31", str(vmcore),
                           str(out)], capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    dumpable = kernel.expected_dumpable(31)
    dump = KdumpFile.open(MappedFile(out))
    for pfn in np.flatnonzero(dumpable)[:: max(1, int(dumpable.sum()) // 200)].tolist():
        assert dump.read_page(pfn) == kernel.page_bytes(pfn), pfn
