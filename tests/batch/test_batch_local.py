"""`cdbdump batch` on the local process pool, end to end (the CLI as a subprocess).

Every output is compared byte for byte with a single `cdbdump` run of its input;
the manifest is read back; workers are killed and the batch interrupted for real.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cdbdump.batch.publish import partial_pid
from tests.batch.conftest import (
    BATCH_TIMEOUT_S,
    MixedDir,
    cdbdump,
    check_against_single_runs,
    manifest,
    partial_files,
    single_run,
    start_batch,
    wait_for,
)

pytestmark = pytest.mark.slow


def test_mixed_directory_equals_single_runs_and_rerun_skips(mixed_dir: MixedDir,
                                                            tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = cdbdump("batch", str(mixed_dir.root), "--out", str(out), "--jobs", "2",
                   *mixed_dir.options)
    assert proc.returncode == 1, proc.stderr  # the corrupt and truncated inputs
    assert "Traceback" not in proc.stderr
    records = manifest(out)
    by_input = check_against_single_runs(mixed_dir, out, records)
    assert by_input[mixed_dir.root / "host-c" / "vmcore"]["path_taken"] == "bitmap"
    assert by_input[mixed_dir.root / "host-a" / "vmcore"]["path_taken"] == "fallback"
    assert not partial_files(out)
    # not a terminal: one line per input on stderr, the merged table on stdout
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("[")]
    assert len(lines) == len(mixed_dir.expected)
    errors = sum(v is None for v in mixed_dir.expected.values())
    done = len(mixed_dir.expected) - errors
    assert any(ln.split()[:2] == ["done", str(done)] for ln in proc.stdout.splitlines())
    assert any(ln.split()[:2] == ["error", str(errors)] for ln in proc.stdout.splitlines())

    before = {p: p.stat() for p in out.rglob("*.kdump")}
    again = cdbdump("batch", str(mixed_dir.root), "--out", str(out), "--jobs", "2",
                    *mixed_dir.options)
    assert again.returncode == 1, again.stderr
    second = manifest(out)[len(records):]
    assert len(second) == len(records)
    for record in second:
        expected = mixed_dir.expected[Path(record["input"])]
        assert record["status"] == ("error" if expected is None else "skipped"), record
    for path, st in before.items():  # nothing rewritten
        assert (path.stat().st_ino, path.stat().st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    assert any(ln.split()[:2] == ["skipped", str(done)] for ln in again.stdout.splitlines())


def test_killed_worker_loses_nothing(slow_inputs: tuple[Path, bytes, int], tmp_path: Path,
                                     reaper: list[Any]) -> None:
    root, expected, count = slow_inputs
    out = tmp_path / "out"
    proc = start_batch(str(root), "--out", str(out), "--jobs", "2", "-d", "31")
    reaper.append(proc)
    part = wait_for(lambda: partial_files(out), 60, "a worker writing an output")
    assert isinstance(part, list)
    victim = part[0]
    pid = partial_pid(victim)
    assert pid is not None and pid != proc.pid
    os.kill(pid, signal.SIGKILL)  # a pool worker the batch started, mid-dump
    _stdout, stderr = proc.communicate(timeout=BATCH_TIMEOUT_S)
    assert proc.returncode == 0, stderr
    records = manifest(out)
    assert len(records) == count
    assert {r["status"] for r in records} == {"done"}
    killed = next(r for r in records if r["output"] == str(victim.parent / "vmcore.kdump"))
    assert killed["attempts"] == 2
    assert str(pid) not in killed["worker"]
    for record in records:
        assert Path(record["output"]).read_bytes() == expected
    assert not partial_files(out)


def _signal_after_first_done(out: Path, proc: Any, signum: int) -> None:
    def first_done() -> bool:
        path = out / "batch.jsonl"
        return path.exists() and '"status":"done"' in path.read_text()

    wait_for(first_done, 60, "the first finished input")
    proc.send_signal(signum)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_batch_restarts_without_redoing_work(
    slow_inputs: tuple[Path, bytes, int], tmp_path: Path, reaper: list[Any], signum: int
) -> None:
    root, expected, count = slow_inputs
    out = tmp_path / "out"
    proc = start_batch(str(root), "--out", str(out), "--jobs", "1", "-d", "31")
    reaper.append(proc)
    _signal_after_first_done(out, proc, signum)
    _stdout, stderr = proc.communicate(timeout=BATCH_TIMEOUT_S)
    assert proc.returncode == 128 + signum, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    first = manifest(out)
    done = {r["output"] for r in first if r["status"] == "done"}
    assert 1 <= len(done) < count
    assert {str(p) for p in out.rglob("*.kdump")} == done  # no output without a record
    assert not partial_files(out)
    stats = {p: (Path(p).stat().st_ino, Path(p).stat().st_mtime_ns) for p in done}

    again = cdbdump("batch", str(root), "--out", str(out), "--jobs", "2", "-d", "31")
    assert again.returncode == 0, again.stderr
    second = manifest(out)[len(first):]
    assert len(second) == count
    for record in second:
        assert record["status"] == ("skipped" if record["output"] in done else "done")
        assert Path(record["output"]).read_bytes() == expected
    assert {p: (Path(p).stat().st_ino, Path(p).stat().st_mtime_ns) for p in done} == stats


def test_memory_bound_turns_a_big_allocation_into_an_error_line(
    slow_inputs: tuple[Path, bytes, int], tmp_path: Path
) -> None:
    root, _expected, _count = slow_inputs
    out = tmp_path / "out"
    proc = cdbdump("batch", str(root / "m0" / "vmcore"), "--out", str(out), "--jobs", "1",
                   "--memory", "1", "-c")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    (record,) = manifest(out)
    assert record["status"] == "error"
    assert "memory bound (1 MiB)" in record["error"]
    assert not partial_files(out) and not list(out.rglob("*.kdump"))



def test_an_input_that_keeps_killing_its_worker_is_an_error_line(
    slow_inputs: tuple[Path, bytes, int], tmp_path: Path, reaper: list[Any]
) -> None:
    root, expected, _count = slow_inputs
    src = tmp_path / "in"
    for name in ("m0", "m1"):
        (src / name).mkdir(parents=True)
        (src / name / "vmcore").symlink_to(root / name / "vmcore")
    out = tmp_path / "out"
    proc = start_batch(str(src), "--out", str(out), "--jobs", "2", "-d", "31")
    reaper.append(proc)
    killed: set[int] = set()
    while proc.poll() is None:  # every worker that starts writing m0's output dies
        for part in partial_files(out / "m0"):
            pid = partial_pid(part)
            if pid is not None and pid not in killed:
                killed.add(pid)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        time.sleep(0.005)
    _stdout, stderr = proc.communicate(timeout=BATCH_TIMEOUT_S)
    assert proc.returncode == 1, stderr
    assert "Traceback" not in stderr
    records = {Path(r["input"]).parent.name: r for r in manifest(out)}
    assert records["m1"]["status"] == "done"
    assert Path(records["m1"]["output"]).read_bytes() == expected
    assert records["m0"]["status"] == "error"
    assert records["m0"]["error"].endswith("the worker process died while processing it alone, "
                                           "3 times")
    assert len(killed) >= 3
    assert not partial_files(out) and not (out / "m0" / "vmcore.kdump").exists()


def test_a_full_output_file_system_keeps_no_half_output(mixed_dir: MixedDir,
                                                        tmp_path: Path) -> None:
    vmcore = mixed_dir.root / "host-a" / "vmcore"
    expected = mixed_dir.expected[vmcore]
    assert expected is not None and len(expected) > 1 << 20
    out = tmp_path / "out"

    def small_files() -> None:  # EFBIG past 1 MiB: the writer's "no space" path
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    proc = subprocess.run([sys.executable, "-m", "cdbdump", "batch", str(vmcore), "--out",
                           str(out), "--jobs", "1", *mixed_dir.options], capture_output=True,
                          text=True, timeout=BATCH_TIMEOUT_S, preexec_fn=small_files, check=False)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    (record,) = manifest(out)
    assert record["status"] == "error"
    assert "filled up" in record["error"] and "a re-run retries it" in record["error"]
    assert not partial_files(out) and not list(out.rglob("*.kdump"))


def test_shards_reassemble_byte_identical_to_the_single_process_dump(
    mixed_dir: MixedDir, slow_inputs: tuple[Path, bytes, int], tmp_path: Path
) -> None:
    root, _expected, _count = slow_inputs
    src = tmp_path / "in"
    (src / "big").mkdir(parents=True)
    (src / "big" / "vmcore").symlink_to(root / "m0" / "vmcore")
    (src / "small").mkdir()
    small = mixed_dir.root / "host-c" / "vmcore"  # -q: the kernel bitmap path
    (src / "small" / "vmcore").symlink_to(small)
    out = tmp_path / "out"
    proc = cdbdump("batch", str(src), "--out", str(out), "--jobs", "2", "--shards", "3",
                   *mixed_dir.options)
    assert proc.returncode == 0, proc.stderr
    records = {Path(r["input"]).parent.name: r for r in manifest(out)}
    assert set(records) == {"big", "small"}
    single_big = single_run(mixed_dir.options, root / "m0" / "vmcore", tmp_path / "ref")
    assert single_big is not None
    assert (out / "big" / "vmcore.kdump").read_bytes() == single_big
    assert (out / "small" / "vmcore.kdump").read_bytes() == mixed_dir.expected[small]
    for record in records.values():
        assert record["status"] == "done" and len(record["worker"].split(",")) == 3
    assert records["small"]["path_taken"] == "bitmap"
    assert not partial_files(out)
    again = cdbdump("batch", str(src), "--out", str(out), "--jobs", "2", "--shards", "3",
                    *mixed_dir.options)
    assert again.returncode == 0, again.stderr
    assert [r["status"] for r in manifest(out)[2:]] == ["skipped", "skipped"]
