"""The click layer: makedumpfile's spellings, report lines, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from cdbdump.cli import command
from tests.builders import SyntheticKernel

MakeVmcore = Callable[..., tuple[SyntheticKernel, Path]]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cdbdump", *args], capture_output=True,
                          text=True, check=False)


def test_report_lines_and_json(tiny_vmcore: MakeVmcore, tmp_path: Path) -> None:
    kernel, vmcore = tiny_vmcore("6.1", seed=5)
    out, js = tmp_path / "o.kdump", tmp_path / "r.json"
    result = CliRunner().invoke(command, ["-l", "-d", "31", "--show-stats", "--report-json",
                                          str(js), str(vmcore), str(out)])
    assert result.exit_code == 0, result.output
    counts = kernel.expected_counts(31)
    # one rule for text: the report and every message on stderr, nothing on stdout
    assert result.stdout == ""
    assert f"    Free pages              : 0x{counts.free:016x}" in result.stderr
    assert f"    User process data pages : 0x{counts.user:016x}" in result.stderr
    assert f"  Excluded pages   : 0x{counts.total:016x}" in result.stderr
    assert f"Total pages     : 0x{kernel.max_mapnr:016x}" in result.stderr
    assert f"The dumpfile is saved to {out}." in result.stderr
    report = json.loads(js.read_text())
    assert report["path_taken"] == "legacy"
    assert report["counts"]["free"] == counts.free
    assert report["codec"] == "lzo"
    assert report["bytes_out"] == out.stat().st_size
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_report_is_gated_by_message_level(tiny_vmcore: MakeVmcore, tmp_path: Path) -> None:
    _, vmcore = tiny_vmcore("6.1", seed=5)
    result = CliRunner().invoke(command, ["-d", "31", str(vmcore), str(tmp_path / "a")])
    assert result.exit_code == 0
    assert "Excluded pages" not in result.output  # bit 16 is off by default
    quiet = CliRunner().invoke(command, ["-d", "31", "--message-level", "0", str(vmcore),
                                         str(tmp_path / "b")])
    assert quiet.exit_code == 0
    assert quiet.output == ""


def test_fallback_is_one_line_and_succeeds(tiny_vmcore: MakeVmcore, tmp_path: Path) -> None:
    _, vmcore = tiny_vmcore("6.1", seed=5)
    proc = _run("-q", "-d", "31", str(vmcore), str(tmp_path / "o"))
    assert proc.returncode == 0
    lines = [ln for ln in proc.stderr.splitlines() if "crash dump bitmap" in ln]
    assert lines == [
        "cdbdump: kernel crash dump bitmap not used: VMCOREINFO has no "
        "SYMBOL(crash_dump_bitmap_info); falling back to the mem_map scan"
    ]


def test_existing_output_needs_force(tiny_vmcore: MakeVmcore, tmp_path: Path) -> None:
    _, vmcore = tiny_vmcore("6.1", seed=5)
    out = tmp_path / "o"
    out.write_bytes(b"precious")
    proc = _run("-d", "31", str(vmcore), str(out))
    assert proc.returncode == 1
    assert proc.stderr.startswith("cdbdump: error: ")
    assert "already exists" in proc.stderr and "Traceback" not in proc.stderr
    assert out.read_bytes() == b"precious"
    assert _run("-f", "-d", "31", str(vmcore), str(out)).returncode == 0
    assert out.read_bytes()[:8] == b"KDUMP   "


def test_symlink_and_same_file_refused(tiny_vmcore: MakeVmcore, tmp_path: Path) -> None:
    _, vmcore = tiny_vmcore("6.1", seed=5)
    target = tmp_path / "target"
    link = tmp_path / "link"
    link.symlink_to(target)
    proc = _run("-f", str(vmcore), str(link))
    assert proc.returncode == 1 and "symbolic link" in proc.stderr
    assert not target.exists()
    proc = _run("-f", str(vmcore), str(vmcore))
    assert proc.returncode == 1 and "same file as the input" in proc.stderr


def test_usage_errors_and_version() -> None:
    runner = CliRunner()
    assert runner.invoke(command, ["--no-such-option", "a", "b"]).exit_code == 2
    assert runner.invoke(command, ["-d", "32", "a", "b"]).exit_code == 2
    version = runner.invoke(command, ["-v"])
    assert version.exit_code == 0 and "zstd\tenabled" in version.output


def test_corrupt_input_names_the_file_offset(tiny_kernel: Callable[..., SyntheticKernel],
                                             tmp_path: Path) -> None:
    kernel = tiny_kernel("6.1", seed=5)
    builder = kernel.elf_builder()
    builder.override_ehdr(e_phnum=4000)  # program headers run past the end of the file
    vmcore = tmp_path / "bad.elf"
    builder.write(vmcore)
    os.truncate(vmcore, 8192)
    proc = _run("-d", "31", str(vmcore), str(tmp_path / "o"))
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1
    assert "at file offset 0x40" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("codec", ["-c", "-l", "-p", "-z", "--no-compress"])
def test_codec_flags(tiny_vmcore: MakeVmcore, tmp_path: Path, codec: str) -> None:
    _, vmcore = tiny_vmcore("6.1", seed=5)
    js = tmp_path / "r.json"
    result = CliRunner().invoke(command, [codec, "-d", "31", "--report-json", str(js),
                                          str(vmcore), str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    names = {"-c": "zlib", "-l": "lzo", "-p": "snappy", "-z": "zstd", "--no-compress": "none"}
    assert json.loads(js.read_text())["codec"] == names[codec]


@pytest.mark.parametrize("codec", ["-c", "-l", "-p", "-z"])
def test_num_threads_does_not_change_the_file(tiny_vmcore: MakeVmcore, tmp_path: Path,
                                              codec: str) -> None:
    kernel, vmcore = tiny_vmcore("6.1", seed=5)
    assert kernel.max_mapnr > 3 * 64  # enough dumpable pages for chunks on every thread
    outputs = []
    for threads in ("0", "1", "2", "3", None):
        out = tmp_path / f"o{threads}"
        args = [codec, "-d", "1", str(vmcore), str(out)]
        if threads is not None:
            args[:0] = ["--num-threads", threads]
        result = CliRunner().invoke(command, args)
        assert result.exit_code == 0, result.output
        outputs.append(out.read_bytes())
    assert all(o == outputs[0] for o in outputs[1:])
    bad = CliRunner().invoke(command, ["--num-threads", "-1", str(vmcore), str(tmp_path / "x")])
    assert bad.exit_code == 2


def test_cyclic_buffer_size_does_not_change_the_file(tiny_vmcore: MakeVmcore,
                                                     tmp_path: Path) -> None:
    kernel, vmcore = tiny_vmcore("6.1", seed=5)
    outputs = []
    # 1 KiB = 8192 pfns per window: the tiny machine's mem_map and 2nd bitmap take many
    for kib in (None, "1", "3", "64", "100000"):
        out, js = tmp_path / f"o{kib}", tmp_path / f"r{kib}.json"
        args = ["-l", "-d", "31", "--report-json", str(js), str(vmcore), str(out)]
        if kib is not None:
            args[:0] = ["--cyclic-buffer", kib]
        result = CliRunner().invoke(command, args)
        assert result.exit_code == 0, result.output
        assert json.loads(js.read_text())["counts"]["free"] == kernel.expected_counts(31).free
        outputs.append(out.read_bytes())
    assert kernel.max_mapnr > 8 * 8192
    assert all(o == outputs[1] for o in outputs[2:])
    # given at all, makedumpfile is cyclic: the partial page 0x9f is left out
    assert (outputs[0] == outputs[1]) != kernel.keeps_partial_last_pages


@pytest.mark.parametrize(("e_machine", "arch"), [(22, "s390x"), (21, "ppc64"), (183, "aarch64"),
                                                 (4242, "e_machine 4242")])
def test_other_architecture_is_one_line(tmp_path: Path, e_machine: int, arch: str) -> None:
    from tests.builders.elfcore import ElfCoreBuilder
    from tests.builders.vmcoreinfo import make_vmcoreinfo

    b = ElfCoreBuilder()
    b.add_vmcoreinfo(make_vmcoreinfo("6.1"))
    b.add_load(0, data=bytes(4096))
    b.override_ehdr(e_machine=e_machine)
    vmcore = tmp_path / "vmcore"
    vmcore.write_bytes(b.build())
    proc = _run("-d", "31", str(vmcore), str(tmp_path / "out"))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"cdbdump: error: unsupported: {vmcore}: a vmcore of {arch}; "
                     "cdbdump supports x86_64 only"]
    assert not (tmp_path / "out").exists()


def test_progress_bar_style(monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import shutil

    from cdbdump.cli import _bar_style

    class Stream(io.StringIO):
        def __init__(self, encoding: str) -> None:
            super().__init__()
            self._encoding = encoding

        @property
        def encoding(self) -> str:  # type: ignore[override]
            return self._encoding

    monkeypatch.setattr(shutil, "get_terminal_size",
                        lambda fallback=(0, 0): os.terminal_size((0, 0)))
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setattr(sys, "stderr", Stream("UTF-8"))
    assert _bar_style() == {"ascii": False, "ncols": 80}  # 0 columns: a sane width
    monkeypatch.setenv("TERM", "linux")
    assert _bar_style()["ascii"] is True  # the Linux VT font lacks tqdm's blocks
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setattr(sys, "stderr", Stream("ANSI_X3.4-1968"))
    assert _bar_style()["ascii"] is True
    monkeypatch.setattr(shutil, "get_terminal_size",
                        lambda fallback=(0, 0): os.terminal_size((132, 40)))
    assert _bar_style()["ncols"] == 132
