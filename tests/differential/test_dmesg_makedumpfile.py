"""--dump-dmesg against makedumpfile on synthetic kernels whose log buffers the tests fill.

tests/builders/printk.py fills each buffer as the kernel's writer does (wrapping
data and descriptor rings, ids crossing 2**62, the printk_log wrap marker), with
texts drawing on every byte value. cdbdump's log must be byte-identical to
makedumpfile 1.7.6's (caller ids shown) and, without caller ids, to Debian 12's
1.7.2; its records must be the ones the builder says a reader must find.

One case is a deliberate difference: since Linux kernel commit 67e1b0052f6b (2025)
a text block may end exactly at the end of the data ring; makedumpfile reads such
a block from index 0 (another record's text), cdbdump from where it is.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from cdbdump.fileio import MappedFile
from cdbdump.pipeline import DmesgOptions, dump_dmesg, open_input
from cdbdump.printk import LogRecord, read_kernel_log
from tests.builders import SyntheticKernel
from tests.builders.printk import (
    COMMITTED,
    RESERVED,
    PrintkLogBuilder,
    Record,
    RingBuilder,
)
from tests.ci_gate import IN_CI

pytestmark = pytest.mark.oracle
TIMEOUT_S = 120
CALLERS = (0, 1, 4242, 0x80000000, 0x80000003)


def _text(rng: random.Random) -> bytes:
    n = rng.choice((0, 1, 3, 17, 40, 90))
    return bytes(
        rng.randrange(256) if rng.random() < 0.3 else rng.choice(b"ab \n\t\r\v\f")
        for _ in range(n)
    )


def _ring_kernel(tmp_path: Path, seed: int) -> tuple[Path, list[Record]]:
    rng = random.Random(seed)
    kernel = SyntheticKernel("6.1", seed=seed, catalog=False)
    ring = RingBuilder(count_bits=5, size_bits=10)
    for i in range(300):  # wraps the data ring ~20 times and the descriptor ring ~9 times
        ring.add(_text(rng), i * 1_234_567_891 + rng.randrange(10**9), rng.choice(CALLERS))
    ring.add(b"committed, not finalized", 10**15, 7, state=COMMITTED)
    ring.add(b"reserved: not printed", 10**15 + 1, 7, state=RESERVED)
    ring.install(kernel)
    path = tmp_path / f"ring{seed}.elf"
    kernel.write(path)
    return path, ring.expected()


def _printk_log_kernel(tmp_path: Path, seed: int, *, caller_id: bool,
                       struct_name: str = "printk_log") -> tuple[Path, list[Record]]:
    rng = random.Random(seed)
    kernel = SyntheticKernel("5.10", seed=seed, catalog=False)
    log = PrintkLogBuilder(3000, caller_id=caller_id, struct_name=struct_name)
    for i in range(250):
        log.add(_text(rng), i * 987_654_321, rng.choice(CALLERS))
    log.install(kernel)
    path = tmp_path / f"log{seed}.elf"
    kernel.write(path)
    return path, log.expected()


def _makedumpfile(binary: str | os.PathLike[str], vmcore: Path, out: Path) -> bytes:
    p = subprocess.run([os.fspath(binary), "--dump-dmesg", str(vmcore), str(out)],
                       capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert p.returncode == 0, f"{binary} --dump-dmesg failed:\n{p.stdout}\n{p.stderr}"
    return out.read_bytes()


def _old_makedumpfile() -> str:
    binary = shutil.which("makedumpfile")
    if binary is None:
        if IN_CI:
            pytest.fail("makedumpfile (Debian 12's 1.7.2) is not installed", pytrace=False)
        pytest.skip("makedumpfile is not installed")
    return binary


def _ours(vmcore: Path, out: Path, *, caller_id: bool = True) -> tuple[bytes, list[LogRecord]]:
    result = dump_dmesg(DmesgOptions(vmcore, out, caller_id=caller_id))
    return out.read_bytes(), result.log.records


def _as_records(records: list[LogRecord]) -> list[Record]:
    return [Record(r.ts_nsec, r.text, r.caller_id or 0) for r in records]


@pytest.mark.parametrize("seed", [1, 2])
def test_ringbuffer_equals_makedumpfile(tmp_path: Path, makedumpfile_new: Path,
                                        seed: int) -> None:
    vmcore, expected = _ring_kernel(tmp_path, seed)
    ours, records = _ours(vmcore, tmp_path / "ours.txt")
    assert _as_records(records) == expected
    assert len(expected) > 10
    assert expected[-1].text == b"committed, not finalized"
    assert any(b >= 0x80 for r in expected for b in r.text)
    assert ours == _makedumpfile(makedumpfile_new, vmcore, tmp_path / "md176.txt")
    plain, _ = _ours(vmcore, tmp_path / "plain.txt", caller_id=False)
    assert plain == _makedumpfile(_old_makedumpfile(), vmcore, tmp_path / "md172.txt")


@pytest.mark.parametrize(("caller_id", "struct_name"),
                         [(True, "printk_log"), (False, "printk_log"), (False, "log")])
def test_printk_log_equals_makedumpfile(tmp_path: Path, makedumpfile_new: Path,
                                        caller_id: bool, struct_name: str) -> None:
    vmcore, expected = _printk_log_kernel(tmp_path, 5, caller_id=caller_id,
                                          struct_name=struct_name)
    ours, records = _ours(vmcore, tmp_path / "ours.txt")
    assert [Record(r.ts_nsec, r.text, r.caller_id or 0) for r in records] == expected
    assert all((r.caller_id is not None) == caller_id for r in records)
    assert ours == _makedumpfile(makedumpfile_new, vmcore, tmp_path / "md176.txt")
    plain, _ = _ours(vmcore, tmp_path / "plain.txt", caller_id=False)
    assert plain == _makedumpfile(_old_makedumpfile(), vmcore, tmp_path / "md172.txt")


def test_block_ending_at_the_ring_end(tmp_path: Path, makedumpfile_new: Path) -> None:
    # 64-byte blocks in a 512-byte ring: the 8th ends exactly at the end, and with
    # kernel commit 67e1b0052f6b it stays there instead of wrapping to index 0
    kernel = SyntheticKernel("6.1", seed=4, catalog=False)
    ring = RingBuilder(count_bits=4, size_bits=9, exact_fit=True)
    for i in range(12):
        ring.add(b"message %02d " % i + b"x" * 45, i * 1000, 1)
    ring.install(kernel)
    vmcore = tmp_path / "fit.elf"
    kernel.write(vmcore)
    with MappedFile(vmcore) as file:
        image = open_input(file)
        assert image.kernel is not None and image.vmcoreinfo is not None
        log = read_kernel_log(image.kernel, image.vmcoreinfo)
    assert _as_records(log.records) == ring.expected()
    assert [r.text[:10] for r in log.records] == [b"message %02d" % i for i in range(4, 12)]
    theirs = _makedumpfile(makedumpfile_new, vmcore, tmp_path / "md176.txt").splitlines()
    ours = _ours(vmcore, tmp_path / "ours.txt")[0].splitlines()
    differ = [i for i, (a, b) in enumerate(zip(theirs, ours, strict=True)) if a != b]
    assert differ == [3]  # message 07: makedumpfile shows message 08's text instead
    assert b"message 08" in theirs[3] and b"message 07" in ours[3]
