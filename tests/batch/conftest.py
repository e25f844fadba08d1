"""Inputs for the batch tests: a mixed directory and each input's single-run output.

The mixed directory holds every input format: ELF vmcores of synthetic machines
of several kernel dialects (one with the RFC kernel bitmap, taken with -q), a
QEMU-layout one, a kdump-compressed dump and a flattened stream named
``dump.<stamp>`` as Debian's kdump-tools writes them (kdump-compressed on a local
disk, flattened when it sends the dump over ssh), the three files of a
`--split` set under names whose order is not their pfn order, a corrupt vmcore
(ELF signature, e_phoff past the end of the file), one truncated inside its
headers, one truncated inside its page data, a split set with its middle file
missing, and a text file that is not a dump. The reference for every input is a
single `cdbdump` run (the CLI) at the same options, a split set read with
--split-part: exit 0 and its bytes, or a failure.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cdbdump.cli import command
from cdbdump.fileio import MappedFile
from cdbdump.vmcore.kdumpfile import KdumpFile
from tests.builders import SyntheticKernel

MakeVmcore = Callable[..., tuple[SyntheticKernel, Path]]
BATCH_TIMEOUT_S = 180


@dataclass(frozen=True)
class MixedDir:
    root: Path
    options: tuple[str, ...]  # cdbdump options shared by the batch and the single runs
    # input path -> the single run's output bytes, or None when the single run failed
    expected: dict[Path, bytes | None]
    # a split set's input (its file of the lowest pfns) -> its other files, in pfn order
    parts: dict[Path, tuple[Path, ...]] = field(default_factory=dict)
    # an incomplete split set's input -> the pfn range of its missing file ("0x..-0x..")
    missing: dict[Path, str] = field(default_factory=dict)

    def output_of(self, out_dir: Path, path: Path) -> Path:
        return out_dir / path.relative_to(self.root).parent / (path.name + ".kdump")

    def moved(self, root: Path) -> MixedDir:
        """The same inputs copied below ``root``."""
        def there(p: Path) -> Path:
            return root / p.relative_to(self.root)
        return replace(self, root=root,
                       expected={there(p): d for p, d in self.expected.items()},
                       parts={there(p): tuple(map(there, ps)) for p, ps in self.parts.items()},
                       missing={there(p): r for p, r in self.missing.items()})

    def files_of(self, path: Path) -> tuple[Path, ...]:
        return (path, *self.parts.get(path, ()))


def sparse_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "--sparse=always", str(src), str(dst)], check=True)


def single_run(options: tuple[str, ...], vmcore: Path, out: Path,
               parts: tuple[Path, ...] = ()) -> bytes | None:
    more = [arg for p in parts for arg in ("--split-part", str(p))]
    result = CliRunner().invoke(command, [*options, "--message-level", "0", *more, str(vmcore),
                                          str(out)])
    if result.exit_code != 0:
        assert "Traceback" not in result.output
        out.unlink(missing_ok=True)  # an incomplete dump is kept, flagged; not compared
        return None
    data = out.read_bytes()
    out.unlink()
    return data


@pytest.fixture(scope="session")
def mixed_dir(tiny_vmcore: MakeVmcore, tmp_path_factory: pytest.TempPathFactory) -> MixedDir:
    root = tmp_path_factory.mktemp("batch-inputs")
    good = {
        "host-a/vmcore": tiny_vmcore("6.1", seed=11),
        "host-b/vmcore": tiny_vmcore("5.10", seed=12),
        "host-c/vmcore": tiny_vmcore("6.12", seed=13, crash_dump_bitmap=31),
        "host-d/dump.qemu": tiny_vmcore("6.9", seed=14, layout="qemu"),
    }
    for name, (_kernel, path) in good.items():
        sparse_copy(path, root / name)
    source = good["host-a/vmcore"][1]
    # corrupt: the ELF header's e_phoff points far past the end of the file
    corrupt = bytearray(source.read_bytes()[:1 << 16])
    struct.pack_into("<Q", corrupt, 32, 0x7FFF_0000_0000)
    (root / "host-e").mkdir()
    (root / "host-e" / "vmcore").write_bytes(bytes(corrupt))
    # truncated inside the headers, and inside the page data
    (root / "host-f").mkdir()
    (root / "host-f" / "vmcore").write_bytes(source.read_bytes()[:5000])
    sparse_copy(source, root / "host-g" / "vmcore")
    with (root / "host-g" / "vmcore").open("r+b") as f:
        f.truncate(source.stat().st_size * 2 // 3)
    (root / "host-a" / "vmcore-dmesg.txt").write_text("[    0.000000] Linux version\n")
    # the kdump-compressed formats, written by cdbdump at -d 0 (the batch refilters them)
    make_dump("-d", "0", good["host-a/vmcore"][1], root / "host-h" / "dump.202612050101")
    (root / "host-i").mkdir()
    with (root / "host-i" / "dump.202612050102").open("wb") as stream:
        subprocess.run([sys.executable, "-m", "cdbdump", "-F", "-d", "0", "--message-level",
                        "0", str(good["host-b/vmcore"][1])], stdout=stream, check=True)
    # a split set: names in another order than the pfns ("b" holds the lowest pfns)
    split_names = ("b-vmcore", "c-vmcore", "a-vmcore")
    split = [root / "host-j" / name for name in split_names]
    make_dump("-d", "1", "--split", good["host-c/vmcore"][1], *split)
    incomplete = [root / "host-k" / name for name in ("part1", "part2", "part3")]
    make_dump("-d", "1", "--split", good["host-b/vmcore"][1], *incomplete)
    with MappedFile(incomplete[1]) as f:  # the reader's view of the file about to go
        middle = KdumpFile.open(f)
        missing = {incomplete[0]: f"{middle.start_pfn:#x}-{middle.end_pfn:#x}"}
    incomplete[1].unlink()  # the middle file of the set
    options = ("-q", "-d", "31")
    scratch = tmp_path_factory.mktemp("batch-single")
    parts = {split[0]: tuple(split[1:])}
    expected: dict[Path, bytes | None] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "dmesg" not in p.name):
        if path in (*split[1:], incomplete[2]):
            continue  # one input with the file of the set's lowest pfns
        expected[path] = single_run(options, path, scratch / "out.kdump",
                                    parts.get(path, ()))
    # host-g's page data is cut short: its lost pages make the dump incomplete, an error
    assert expected[root / "host-g" / "vmcore"] is None
    assert sum(v is not None for v in expected.values()) >= 7
    assert sum(v is None for v in expected.values()) >= 4
    assert expected[split[0]] is not None and expected[incomplete[0]] is None
    return MixedDir(root, options, expected, parts, missing)


def make_dump(*args: Path | str) -> None:
    """`cdbdump ARGS` (the CLI, in-process), which must succeed."""
    *_, last = args
    Path(last).parent.mkdir(parents=True, exist_ok=True)
    result = CliRunner().invoke(command, ["--message-level", "0", *map(str, args)])
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="session")
def slow_inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes, int]:
    """A directory of 6 copies of a sparse 1 GiB machine (each takes about half a second),
    and the single-run output of one of them."""
    root = tmp_path_factory.mktemp("batch-slow")
    first = root / "m0" / "vmcore"
    first.parent.mkdir()
    SyntheticKernel("6.1", ram_size=1 << 30, data_fraction=0.15, seed=3).write(first)
    for i in range(1, 6):
        (root / f"m{i}").mkdir()
        sparse_copy(first, root / f"m{i}" / "vmcore")
    expected = single_run(("-d", "31"), first, tmp_path_factory.mktemp("slow-ref") / "o")
    assert expected is not None
    return root, expected, 6


def cdbdump(*args: str, timeout: float = BATCH_TIMEOUT_S, cwd: Path | None = None
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cdbdump", *args], capture_output=True,
                          text=True, timeout=timeout, check=False, cwd=cwd)


def start_batch(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "cdbdump", "batch", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


def partial_files(out_dir: Path) -> list[Path]:
    return list(out_dir.rglob(".*.part")) if out_dir.exists() else []


@pytest.fixture
def reaper() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test started; any still running at the end are ended by pid."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, copy_function=lambda s, d: sparse_copy(Path(s), Path(d)))


WORKER_BOUND_KIB = 96 * 1024


def manifest(out_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out_dir / "batch.jsonl").read_text().splitlines()]


def check_against_single_runs(mixed: MixedDir, out: Path, records: list[dict[str, Any]],
                              *, after_a_kill: bool = False) -> dict[Path, dict[str, Any]]:
    """Every record against a single `cdbdump` run of its input. ``after_a_kill``: a task
    whose output a killed worker published before it could report is rerun and finds
    that output complete ("skipped", verified) instead of "done"."""
    by_input = {Path(r["input"]): r for r in records}
    assert set(by_input) == set(mixed.expected)  # the dmesg text file was passed over
    for path, data in mixed.expected.items():
        record = by_input[path]
        output = mixed.output_of(out, path)
        files = mixed.files_of(path)
        if data is None and record["output"] is None:  # found bad before any work
            assert record["status"] == "error" and str(path) in record["error"], record
            assert f"the part holding pfns {mixed.missing[path]} is missing" in record["error"]
            assert not output.exists()
            continue
        assert record["output"] == str(output)
        assert record["parts"] == ([str(p) for p in files[1:]] or None)
        assert record["size"] == sum(p.stat().st_size for p in files)
        digest = hashlib.sha256()
        for one in files:
            with one.open("rb") as f:
                digest.update(f.read(1 << 20))
        assert record["sha256_1mib"] == digest.hexdigest()
        if data is None:
            assert record["status"] == "error", record
            assert str(path) in record["error"]
            assert not output.exists()
        else:
            assert output.read_bytes() == data, path
            assert stat.S_IMODE(output.stat().st_mode) == 0o600
            assert record["bytes_out"] == len(data)
            if after_a_kill and record["status"] == "skipped":
                assert record["skip_reason"] == "the output exists and verifies", record
                continue
            assert record["status"] == "done", record
            assert 0 < record["peak_rss_kib"] < WORKER_BOUND_KIB
            assert record["remaining_pages"] + sum(record["pages"].values()) == \
                record["original_pages"]
    return by_input
