"""The flattened stream (-F) and its reassembly (-R): record rules, bad streams, the CLI."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdbdump.errors import CorruptDumpError, InputError, OutputError, TruncatedDumpError
from cdbdump.writers.flattened import (
    COALESCE_BYTES,
    FlattenedSink,
    mark_rebuilt_incomplete,
    rearrange,
    start_header,
)
from cdbdump.writers.sink import create_output
from tests.builders import SyntheticKernel

MakeVmcore = Callable[..., tuple[SyntheticKernel, Path]]
REC = struct.Struct(">qq")


def parse_stream(raw: bytes) -> list[tuple[int, int]]:
    """(offset, size) of every record, end marker included; asserts the framing."""
    assert raw[:16] == b"makedumpfile\0\0\0\0"
    assert struct.unpack_from(">qq", raw, 16) == (1, 1)
    assert raw[32:4096] == bytes(4064)
    at, records = 4096, []
    while at < len(raw):
        offset, size = REC.unpack_from(raw, at)
        records.append((offset, size))
        at += 16 + max(size, 0)
    assert at == len(raw)
    return records


writes_strategy = st.lists(
    st.tuples(st.integers(0, 1 << 20),
              st.one_of(st.binary(max_size=300), st.integers(0, 3 * COALESCE_BYTES // 8))),
    max_size=25,
)


@given(writes=writes_strategy)
def test_stream_replays_to_the_same_file(writes: list[tuple[int, bytes | int]],
                                         tmp_path_factory: pytest.TempPathFactory) -> None:
    d = tmp_path_factory.mktemp("flat")
    direct = create_output(d / "direct")
    stream_path = d / "stream"
    with stream_path.open("wb") as f:
        sink = FlattenedSink(f.fileno())
        for offset, data in writes:
            payload = data if isinstance(data, bytes) else bytes([offset & 0xFF]) * data
            direct.pwrite(payload, offset)
            sink.pwrite(payload, offset)
        sink.close()
    direct.close()
    raw = stream_path.read_bytes()
    records = parse_stream(raw)
    assert records[-1] == (-1, -1)
    assert all(size > 0 and offset >= 0 for offset, size in records[:-1])  # never empty
    assert sink.bytes_written == len(raw)
    out = create_output(d / "rebuilt")
    with stream_path.open("rb") as f:
        result = rearrange(f.fileno(), out)
    out.close()
    assert result.nr_records == len(records) - 1
    assert (d / "rebuilt").read_bytes() == (d / "direct").read_bytes()
    assert result.file_size == sink.size == (d / "direct").stat().st_size


def test_adjacent_small_writes_share_a_record_and_big_ones_go_alone(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with path.open("wb") as f:
        sink = FlattenedSink(f.fileno())
        sink.pwrite(b"a" * 100, 0)
        sink.pwrite(b"b" * 100, 100)  # continues the record
        sink.pwrite(b"c" * 10, 5000)  # a jump: new record
        sink.pwrite(b"", 7)  # nothing at all
        sink.pwrite(b"d" * COALESCE_BYTES, 8192)  # large: its own record, not buffered
        sink.close()
    assert parse_stream(path.read_bytes()) == [(0, 200), (5000, 10), (8192, COALESCE_BYTES),
                                               (-1, -1)]


def test_discard_leaves_no_end_marker(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with path.open("wb") as f:
        sink = FlattenedSink(f.fileno())
        sink.pwrite(b"x" * 10, 0)
        sink.discard()
    raw = path.read_bytes()
    assert raw == start_header()  # the buffered record is dropped, no end marker
    out = create_output(tmp_path / "o")
    with path.open("rb") as f, pytest.raises(TruncatedDumpError, match="no end marker"):
        rearrange(f.fileno(), out)
    out.close()


def test_closed_pipe_is_an_output_error() -> None:
    r, w = os.pipe()
    os.close(r)
    try:
        with pytest.raises(OutputError, match="reader closed the pipe"):
            FlattenedSink(w)
    finally:
        os.close(w)


def _stream(*records: tuple[int, int, bytes], header: bytes | None = None) -> bytes:
    body = b"".join(REC.pack(o, s) + d for o, s, d in records)
    return (start_header() if header is None else header) + body


END = (-1, -1, b"")


@pytest.mark.parametrize(("raw", "error", "match"), [
    (b"", InputError, "empty stream"),
    (start_header()[:20], TruncatedDumpError, "start header"),
    (b"x" * 4096, CorruptDumpError, "no flattened-format signature"),
    (start_header()[:16] + struct.pack(">qq", 2, 1) + bytes(4064), CorruptDumpError, "type 2"),
    (start_header()[:16] + struct.pack(">qq", 1, 9) + bytes(4064), CorruptDumpError,
     "version 9"),
    (_stream((0, 4, b"abcd")), TruncatedDumpError, "no end marker"),
    (_stream((0, 8, b"abcd")), TruncatedDumpError, "record data"),
    (_stream((0, 0, b""), END), CorruptDumpError, "neither data nor the end marker"),
    (_stream((-5, 4, b"abcd"), END), CorruptDumpError, "neither data nor the end marker"),
    (_stream((0, 4, b"abcd"), (-1, 0, b"")), CorruptDumpError, "neither"),
])
def test_bad_streams(tmp_path: Path, raw: bytes, error: type[Exception], match: str) -> None:
    src = tmp_path / "in"
    src.write_bytes(raw)
    out = create_output(tmp_path / "o")
    with src.open("rb") as f, pytest.raises(error, match=match):
        rearrange(f.fileno(), out)
    out.close()


def test_trailing_junk_after_the_end_marker_is_ignored(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.write_bytes(_stream((4096, 3, b"xyz"), END) + os.urandom(5000))
    out = create_output(tmp_path / "o")
    with src.open("rb") as f:
        result = rearrange(f.fileno(), out)
    out.close()
    assert (tmp_path / "o").read_bytes() == bytes(4096) + b"xyz"
    assert result.stream_bytes == 4096 + 16 + 3 + 16


def test_cut_kdump_is_flagged_incomplete(tmp_path: Path) -> None:
    header = bytearray(464)
    header[:8] = b"KDUMP   "
    header[424:428] = (0x20).to_bytes(4, "little")
    out = create_output(tmp_path / "o")
    out.pwrite(header, 0)
    assert mark_rebuilt_incomplete(out)
    out.close()
    status = int.from_bytes((tmp_path / "o").read_bytes()[424:428], "little")
    assert status == 0x28
    junk = create_output(tmp_path / "j")
    junk.pwrite(b"not a dump", 0)
    assert not mark_rebuilt_incomplete(junk)
    junk.close()


# -- the command line -----------------------------------------------------------------------


def _cdbdump(*args: str, **kw: object) -> subprocess.CompletedProcess[bytes]:
    kw.setdefault("stdout", subprocess.PIPE)
    return subprocess.run([sys.executable, "-m", "cdbdump", *args], stderr=subprocess.PIPE,
                          check=False, timeout=120, **kw)  # type: ignore[call-overload]


def test_cli_stream_round_trip(tiny_vmcore: MakeVmcore, tmp_path: Path) -> None:
    _, vmcore = tiny_vmcore("6.1", seed=5)
    direct, stream, rebuilt = tmp_path / "d", tmp_path / "s", tmp_path / "r"
    assert _cdbdump("-l", "-d", "31", str(vmcore), str(direct)).returncode == 0
    with stream.open("wb") as f:
        proc = _cdbdump("-F", "-F", "-l", "-d", "31", "--show-stats", str(vmcore), stdout=f)
    assert proc.returncode == 0, proc.stderr
    assert b"Excluded pages" in proc.stderr and b"saved to STDOUT." in proc.stderr
    records = parse_stream(stream.read_bytes())
    assert records[-1] == (-1, -1) and all(s > 0 for _, s in records[:-1])
    with stream.open("rb") as f:
        proc = _cdbdump("-R", str(rebuilt), stdin=f)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b""
    assert rebuilt.read_bytes() == direct.read_bytes()
    assert (rebuilt.stat().st_mode & 0o777) == 0o600
    # a stream cut in the middle: the file is kept, flagged incomplete, exit 1
    cut = tmp_path / "cut"
    cut.write_bytes(stream.read_bytes()[: stream.stat().st_size // 2])
    with cut.open("rb") as f:
        proc = _cdbdump("-R", str(tmp_path / "partial"), stdin=f)
    assert proc.returncode == 1 and proc.stderr.count(b"\n") == 1
    assert b"Traceback" not in proc.stderr
    status = int.from_bytes((tmp_path / "partial").read_bytes()[424:428], "little")
    assert status & 0x08


def test_cli_elf_stream_round_trip(tiny_vmcore: MakeVmcore, tmp_path: Path) -> None:
    _, vmcore = tiny_vmcore("6.1", seed=5)
    direct, stream, rebuilt = tmp_path / "d.elf", tmp_path / "s", tmp_path / "r.elf"
    assert _cdbdump("-E", "-d", "31", str(vmcore), str(direct)).returncode == 0
    with stream.open("wb") as f:
        assert _cdbdump("-E", "-F", "-d", "31", str(vmcore), stdout=f).returncode == 0
    with stream.open("rb") as f:
        assert _cdbdump("-R", str(rebuilt), stdin=f).returncode == 0
    assert direct.read_bytes()[:4] == b"\x7fELF"
    # the file's phdr area is written twice (zeros first, as makedumpfile reserves it),
    # the stream's once: the files are the same
    assert rebuilt.read_bytes() == direct.read_bytes()


def test_cli_empty_stdin_fails_fast(tmp_path: Path) -> None:
    start = time.monotonic()
    proc = _cdbdump("-R", str(tmp_path / "o"), stdin=subprocess.DEVNULL)
    assert time.monotonic() - start < 30  # makedumpfile 1.7.2 waits 600 s here
    assert proc.returncode == 1
    assert proc.stderr == b"cdbdump: error: stdin: empty stream, expected a flattened dump " \
                          b"(makedumpfile -F)\n"
    assert not (tmp_path / "o").exists()


def test_cli_closed_pipe_is_one_line(tiny_vmcore: MakeVmcore) -> None:
    _, vmcore = tiny_vmcore("6.1", seed=5)
    r, w = os.pipe()
    os.close(r)
    try:
        proc = subprocess.run([sys.executable, "-m", "cdbdump", "-F", "-d", "31", str(vmcore)],
                              stdout=w, stderr=subprocess.PIPE, check=False, timeout=120)
    finally:
        os.close(w)
    assert proc.returncode == 1
    assert proc.stderr == b"cdbdump: error: STDOUT: the reader closed the pipe\n"


@pytest.mark.parametrize("args", [
    ["-F", "v", "out"],  # -F writes to stdout only
    ["-E", "-c", "v", "out"],  # ELF is never compressed
    ["--split", "v", "a"],  # at least two pieces
    ["--split", "-E", "v", "a", "b"],
    ["-R", "a", "b"],
    ["-R", "-d", "31", "a"],
    ["--reassemble", "a", "b"],
    ["-F", "-R", "a"],
    ["v", "a", "b"],
])
def test_cli_mode_usage_errors(args: list[str]) -> None:
    proc = _cdbdump(*args, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stderr
