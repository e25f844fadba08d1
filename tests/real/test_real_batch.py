"""`cdbdump batch` over the real Debian vmcores: each output byte-identical to a
single `cdbdump` run of its input (and, once --dump-dmesg is built, each kernel
log identical to a single `--dump-dmesg` run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cdbdump.batch import hooks
from tests.real.conftest import VMCORES, get_vmcore

pytestmark = [pytest.mark.real, pytest.mark.slow]
TIMEOUT_S = 900


def _cdbdump(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cdbdump", *args], capture_output=True,
                          text=True, timeout=TIMEOUT_S, check=False)


def test_real_vmcores_batch_equals_single_runs(tmp_path: Path) -> None:
    src = tmp_path / "crash"
    src.mkdir()
    raws = {}
    # a QEMU dump and a /proc/vmcore one are enough here: every vmcore's dump is
    # already compared with makedumpfile's by the rest of the tier
    names = [n for n in VMCORES if n.startswith("debian12-6.1-1g")] or VMCORES[:2]
    for name in names:
        raw = get_vmcore(name).raw
        (src / raw.name).symlink_to(raw)
        raws[src / raw.name] = raw
    dmesg = hooks.find(hooks.DMESG) is not None
    out = tmp_path / "out"
    proc = _cdbdump("batch", str(src), "--out", str(out), "--jobs", "2", "-d", "31",
                    *(["--dmesg"] if dmesg else []))
    assert proc.returncode == 0, proc.stderr
    records = {r["input"]: r for r in map(json.loads,
                                          (out / "batch.jsonl").read_text().splitlines())}
    assert set(records) == {str(p) for p in raws}
    for link, raw in raws.items():
        record = records[str(link)]
        assert record["status"] == "done", record
        single = tmp_path / "single.kdump"
        ran = _cdbdump("-d", "31", "--message-level", "0", str(raw), str(single))
        assert ran.returncode == 0, ran.stderr
        assert Path(record["output"]).read_bytes() == single.read_bytes(), raw.name
        single.unlink()
        if dmesg:
            log = tmp_path / "single.dmesg"
            ran = _cdbdump("--dump-dmesg", str(raw), str(log))
            assert ran.returncode == 0, ran.stderr
            assert record["dmesg_error"] is None
            assert Path(record["dmesg"]).read_bytes() == log.read_bytes(), raw.name
            log.unlink()


def test_real_makedumpfile_split_set_is_one_input(tmp_path: Path, real_tools: None) -> None:
    """makedumpfile --split of a real vmcore: the batch finds the set by its headers
    (names in another order than the pfns) and its output equals a single run on
    the set (--split-part); its kernel log equals --dump-dmesg of the vmcore."""
    name = next((n for n in VMCORES if n.startswith("debian12-6.1-1g")), VMCORES[0])
    vm = get_vmcore(name)
    src = tmp_path / "crash" / "host"
    src.mkdir(parents=True)
    parts = [src / "z-dump", src / "a-dump", src / "m-dump"]  # pfn order: z, a, m
    made = subprocess.run(["makedumpfile", "-l", "-d", "1", "--split", str(vm.norm),
                           *map(str, parts)], capture_output=True, text=True,
                          timeout=TIMEOUT_S, check=False)
    assert made.returncode == 0, made.stderr
    dmesg = hooks.find(hooks.DMESG) is not None
    out = tmp_path / "out"
    proc = _cdbdump("batch", str(src.parent), "--out", str(out), "--jobs", "2", "-d", "31",
                    *(["--dmesg"] if dmesg else []))
    assert proc.returncode == 0, proc.stderr
    (record,) = map(json.loads, (out / "batch.jsonl").read_text().splitlines())
    assert record["status"] == "done", record
    assert record["input"] == str(parts[0])
    assert record["parts"] == [str(p) for p in parts[1:]]
    assert record["output"] == str(out / "host" / "z-dump.kdump")
    single = tmp_path / "single.kdump"
    ran = _cdbdump("-d", "31", "--message-level", "0", "--split-part", str(parts[1]),
                   "--split-part", str(parts[2]), str(parts[0]), str(single))
    assert ran.returncode == 0, ran.stderr
    assert Path(record["output"]).read_bytes() == single.read_bytes()
    if dmesg:
        log = tmp_path / "single.dmesg"
        ran = _cdbdump("--dump-dmesg", str(vm.raw), str(log))
        assert ran.returncode == 0, ran.stderr
        assert record["dmesg_error"] is None
        assert Path(record["dmesg"]).read_bytes() == log.read_bytes()
