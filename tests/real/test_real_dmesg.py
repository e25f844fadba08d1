"""--dump-dmesg on real Debian vmcores: byte-identical to makedumpfile, and to the console.

makedumpfile reads the normalised copy, cdbdump QEMU's raw ELF. makedumpfile 1.7.6
(Debian 13) prints caller ids ("[      T1] "), as cdbdump does; 1.7.2 (Debian 12)
does not, which the library's caller_id=False reproduces. The guest's serial
console log (saved by make-real-vmcore.sh) is a second, independent reference:
every kernel line it shows must be in the log, the console writing each line of a
multi-line record with the record's time stamp where makedumpfile indents.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cdbdump.fileio import MappedFile
from cdbdump.pipeline import open_input
from cdbdump.printk import LAYOUT_RINGBUFFER, LogRecord, format_record, read_kernel_log
from tests.real.conftest import cdbdump_cmd, cdbdump_env

pytestmark = pytest.mark.real
TIMEOUT_S = 300
_CONSOLE_LINE = re.compile(rb"^\[ *\d+\.\d{6}\] ")


def _records(path: Path) -> list[LogRecord]:
    with MappedFile(path) as file:
        image = open_input(file)
        assert image.kernel is not None and image.vmcoreinfo is not None
        log = read_kernel_log(image.kernel, image.vmcoreinfo)
    assert log.layout == LAYOUT_RINGBUFFER  # 5.10 and later
    assert log.warnings == []  # a young guest: nothing overwritten, everything in the dump
    return log.records


def _makedumpfile(binary: str, vmcore: Path, out: Path) -> bytes:
    out.unlink(missing_ok=True)
    p = subprocess.run([binary, "--dump-dmesg", str(vmcore), str(out)], capture_output=True,
                       text=True, timeout=TIMEOUT_S, check=False)
    assert p.returncode == 0, f"{binary} --dump-dmesg: {p.stdout}\n{p.stderr}"
    return out.read_bytes()


def test_dmesg_equals_makedumpfile(vmcore: Any, makedumpfile_new: Path, tmp_path: Path) -> None:
    ours_path = tmp_path / "ours.txt"
    p = subprocess.run([*cdbdump_cmd(), "--dump-dmesg", str(vmcore.raw), str(ours_path)],
                       capture_output=True, text=True, timeout=TIMEOUT_S, env=cdbdump_env(),
                       check=False)
    assert p.returncode == 0, p.stderr
    # no warning on a whole, young log: stderr holds only the closing messages
    assert "warning" not in p.stderr and "error" not in p.stderr, p.stderr
    assert f"The dmesg log is saved to {ours_path}." in p.stderr
    ours = ours_path.read_bytes()
    assert ours.count(b"\n") > 300
    assert ours.startswith(b"[    0.000000] [      T0] Linux version ")
    assert ours == _makedumpfile(str(makedumpfile_new), vmcore.norm, tmp_path / "md176.txt")
    records = _records(vmcore.raw)
    old = b"".join(format_record(r, caller_id=False) for r in records)
    assert old == _makedumpfile("makedumpfile", vmcore.norm, tmp_path / "md172.txt")
    stdout = subprocess.run([*cdbdump_cmd(), "-F", "--dump-dmesg", str(vmcore.raw)],
                            capture_output=True, timeout=TIMEOUT_S, env=cdbdump_env(),
                            check=False)
    assert stdout.returncode == 0 and stdout.stdout == ours


def test_dmesg_holds_the_console(qemu_vmcore: Any) -> None:
    vm = qemu_vmcore
    console = Path(f"{vm.raw}.console.log").read_bytes().replace(b"\r\n", b"\n")
    kernel_lines = [line for line in console.split(b"\n") if _CONSOLE_LINE.match(line)]
    assert len(kernel_lines) > 250
    ours = set()
    for record in _records(vm.raw):
        prefix = format_record(LogRecord(record.ts_nsec, b""), caller_id=False)[:-1]
        ours.update(prefix + piece for piece in record.text.split(b"\n"))
    missing = [line for line in kernel_lines if line not in ours]
    assert missing == []
