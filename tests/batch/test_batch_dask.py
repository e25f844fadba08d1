"""`cdbdump batch --scheduler` on a real Dask LocalCluster of 2 worker processes.

The test starts the cluster and stops it; the batch (the CLI, a subprocess) only
gets its address, as it would a remote cluster's. A worker process is killed in
the middle of a dump: Dask reruns the task elsewhere and nothing is lost.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cdbdump.batch.publish import partial_pid
from tests.batch.conftest import (
    BATCH_TIMEOUT_S,
    MixedDir,
    cdbdump,
    check_against_single_runs,
    copy_tree,
    manifest,
    partial_files,
    sparse_copy,
    start_batch,
    wait_for,
)

distributed = pytest.importorskip("distributed") if os.environ.get("CI") != "true" else \
    __import__("distributed")
pytestmark = pytest.mark.slow


def parent_pid(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("PPid:")))


def zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None, silence_logs=logging.ERROR) as c:
        yield c


def test_dask_mixed_directory_killed_worker_and_rerun(
    cluster: Any, mixed_dir: MixedDir, slow_inputs: tuple[Path, bytes, int], tmp_path: Path,
    reaper: list[Any],
) -> None:
    src = tmp_path / "in"
    copy_tree(mixed_dir.root, src)
    slow_root, slow_expected, _ = slow_inputs
    for i in range(3):  # long enough to be killed in the middle of
        sparse_copy(slow_root / "m0" / "vmcore", src / f"slow{i}" / "vmcore")
    copied = mixed_dir.moved(src)
    with distributed.Client(cluster) as client:
        worker_pids = set(client.run(os.getpid).values())
    assert len(worker_pids) == 2

    out = tmp_path / "out"
    proc = start_batch(str(src), "--out", str(out), "--scheduler", cluster.scheduler_address,
                       *mixed_dir.options)
    reaper.append(proc)

    def writing_slow_child() -> tuple[int, int, Path] | None:
        """(child pid, its worker's pid, the partial file) of a slow output being written."""
        for part in partial_files(out):
            child = partial_pid(part) if "slow" in str(part) else None
            if child is None:
                continue
            try:
                return child, parent_pid(child), part
            except (OSError, StopIteration):
                continue  # the child finished between the listing and the read
        return None

    found = wait_for(writing_slow_child, 120, "a Dask worker writing a slow output")
    assert isinstance(found, tuple)
    child, pid, killed_part = found
    assert pid in worker_pids  # the task's bounded child belongs to a worker of the cluster
    os.kill(pid, signal.SIGKILL)  # the nanny restarts it; the scheduler reruns the task
    # the child dies with its worker: no orphan publishes what the rerun writes
    wait_for(lambda: not Path(f"/proc/{child}").exists() or zombie(child), 10,
             "the killed worker's child to end")
    _stdout, stderr = proc.communicate(timeout=BATCH_TIMEOUT_S)
    assert proc.returncode == 1, stderr  # the corrupt and truncated inputs
    assert "Traceback" not in stderr
    records = manifest(out)
    slow = [r for r in records if "slow" in r["input"]]
    assert len(slow) == 3

    def counts(record: dict[str, Any]) -> tuple[int, int, int]:
        return record["original_pages"], record["remaining_pages"], record["dump_level_applied"]

    done_counts = {counts(r) for r in slow if r["status"] == "done"}
    for record in slow:
        assert Path(record["output"]).read_bytes() == slow_expected
        if record["status"] == "skipped":  # published by the killed worker just before
            assert record["skip_reason"] == "the output exists and verifies", record
            assert {counts(record)} == done_counts, record  # read back: copies of one input
            continue
        assert record["status"] == "done", record
        assert str(pid) not in record["worker"]
    # the task killed in the middle of its write was done again, by another worker
    (rerun,) = [r for r in slow if killed_part.parent.name == Path(r["input"]).parent.name]
    assert rerun["status"] == "done" and str(pid) not in rerun["worker"]
    check_against_single_runs(copied, out, [r for r in records if "slow" not in r["input"]],
                              after_a_kill=True)
    assert not partial_files(out)

    again = cdbdump("batch", str(src), "--out", str(out), "--scheduler",
                    cluster.scheduler_address, *mixed_dir.options)
    assert again.returncode == 1, again.stderr
    second = manifest(out)[len(records):]
    assert len(second) == len(records)
    for record in second:
        was = next(r for r in records if r["input"] == record["input"])
        assert record["status"] == ("error" if was["status"] == "error" else "skipped")


def test_local_cluster_option_starts_and_stops_its_own_cluster(mixed_dir: MixedDir,
                                                               tmp_path: Path) -> None:
    vmcore = mixed_dir.root / "host-b" / "vmcore"
    out = tmp_path / "out"
    proc = cdbdump("batch", str(vmcore), "--out", str(out), "--local-cluster", "1",
                   *mixed_dir.options)
    assert proc.returncode == 0, proc.stderr
    assert "Dask LocalCluster of 1 worker process" in proc.stdout
    (record,) = manifest(out)
    assert record["status"] == "done"
    assert (out / "vmcore.kdump").read_bytes() == mixed_dir.expected[vmcore]
    worker_pid = int(record["worker"].rsplit(":", 1)[1])
    with pytest.raises(ProcessLookupError):  # the cluster went with the batch
        os.kill(worker_pid, 0)


def test_dask_task_runs_under_the_memory_bound_and_a_big_one_is_an_error_line(
    cluster: Any, mixed_dir: MixedDir, tmp_path: Path
) -> None:
    with distributed.Client(cluster) as client:
        before = client.run(os.getpid)
    vmcore = mixed_dir.root / "host-b" / "vmcore"
    out = tmp_path / "out"
    proc = cdbdump("batch", str(vmcore), "--out", str(out), "--scheduler",
                   cluster.scheduler_address, "--memory", "1", *mixed_dir.options)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    (record,) = manifest(out)
    assert record["status"] == "error", record
    assert "memory bound (1 MiB)" in record["error"]
    assert record["memory_bound"] == 1 << 20
    assert int(record["worker"].rsplit(":", 1)[1]) not in before.values()  # a child ran it
    assert not partial_files(out) and not list(out.rglob("*.kdump"))
    with distributed.Client(cluster) as client:
        assert client.run(os.getpid) == before  # no Dask worker died or was restarted

    # the same input at the default bound: done, within 96 MiB, on the same workers
    again = cdbdump("batch", str(vmcore), "--out", str(out), "--scheduler",
                    cluster.scheduler_address, *mixed_dir.options)
    assert again.returncode == 0, again.stderr
    record = manifest(out)[-1]
    assert record["status"] == "done" and record["memory_bound"] == 96 << 20
    assert 0 < record["peak_rss_kib"] < 96 * 1024
    assert (out / "vmcore.kdump").read_bytes() == mixed_dir.expected[vmcore]
