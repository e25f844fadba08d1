"""kdump-tools itself saves the dump with cdbdump as makedumpfile (fixtures/kdump_debian.py).

A Debian 12 root file system (mmdebstrap, kdump-tools, the cloud kernel), cdbdump's
bundle diverted into /usr/bin/makedumpfile, boots under QEMU with crashkernel=;
kdump-tools loads the capture kernel, sysrq-c panics it, and the capture kernel boots
the same disk with systemd.unit=kdump-tools-dump.service. What kdump-tools saved in
/var/crash/<stamp>/ is read back here: the flattened dump.<stamp> is rearranged by
makedumpfile -R and compared page by page with the unfiltered /proc/vmcore copied in
the same capture kernel; dmesg.<stamp> holds the panic.

A boot takes about ten minutes under TCG, so `make test` leaves this module out
(marker rootfs_boot); `make kdump-e2e` runs it after a fresh boot.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from fixtures import kdump_debian, kdump_e2e
from tests.oracles import crash_header, drgn_check, libkdumpfile_check, rearrange_flattened
from tests.real.conftest import unavailable

pytestmark = [pytest.mark.real, pytest.mark.oracle, pytest.mark.slow, pytest.mark.rootfs_boot]

MEM, CRASHKERNEL = "1G", "384M"  # kdump-tools' grub default is 384M-:128M (see README)


@pytest.fixture(scope="module")
def saved() -> tuple[Path, Path]:
    """(the result directory, /var/crash/<stamp>/ as kdump-tools wrote it)."""
    try:
        result = kdump_debian.run(MEM, CRASHKERNEL)
    except kdump_e2e.E2eUnavailable as exc:
        unavailable(f"Debian root file system kdump run: {exc}")
    except (kdump_e2e.E2eError, subprocess.CalledProcessError) as exc:
        pytest.fail(str(exc), pytrace=False)
    return result, kdump_debian.stamp_dir(result)


def test_kdump_tools_saved_dump_and_dmesg_with_cdbdump(saved) -> None:  # type: ignore[no-untyped-def]
    result, stamp_dir = saved
    stamp = stamp_dir.name
    assert sorted(p.name for p in stamp_dir.iterdir()) == [f"dmesg.{stamp}", f"dump.{stamp}"]
    console = (result / "console.log").read_text(errors="replace")
    assert "systemd.unit=kdump-tools-dump.service" in console  # kdump-config's command line
    assert f"saved vmcore in /var/crash/{stamp}" in console
    assert "falling back to 'cp'" not in console
    # makedumpfile there was cdbdump: its --version, and it measured as kdump-tools runs it
    assert "(cdbdump " in (result / "version.txt").read_text()  # makedumpfile -v
    facts = kdump_e2e.parse_results(result)
    assert facts["kdump-tools: rc"] == "0", (result / "kdump-tools.log").read_text()
    assert facts["copy: rc"] == "0"


def test_flattened_dump_has_every_dumpable_page_of_the_copy(saved, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result, stamp_dir = saved
    flat = stamp_dir / f"dump.{stamp_dir.name}"
    assert flat.read_bytes()[:16].rstrip(b"\0") == b"makedumpfile"  # the -F stream
    dump = tmp_path / "dump.kdump"
    rearrange_flattened(flat, dump)  # makedumpfile -R, independent of cdbdump
    ours = tmp_path / "dump.cdbdump-R.kdump"
    cli = Path(os.environ.get("VIRTUAL_ENV", ".venv")) / "bin" / "cdbdump"
    with flat.open("rb") as stream:
        subprocess.run([str(cli) if cli.exists() else "cdbdump", "-R", str(ours)],
                       stdin=stream, check=True, capture_output=True)
    assert ours.read_bytes() == dump.read_bytes()
    source = result / "vmcore.elf"
    assert b"CRASHTIME=" in source.open("rb").read(1 << 16)
    lib = libkdumpfile_check(dump, source)
    assert lib.ok, lib.summary()
    assert lib.nr_dumpable > 10_000
    dr = drgn_check(dump, source)
    assert dr.ok, dr.summary()
    assert dr.dumpable_pfns.tolist() == lib.dumpable_pfns.tolist()
    header = crash_header(dump)
    assert header["total_valid_pages"].split()[0] in (str(lib.nr_dumpable),
                                                       hex(lib.nr_dumpable))


def test_dmesg_holds_the_panic_byte_for_byte(saved, makedumpfile_new: Path,  # type: ignore[no-untyped-def]
                                             tmp_path: Path) -> None:
    result, stamp_dir = saved
    ours = (stamp_dir / f"dmesg.{stamp_dir.name}").read_bytes()
    assert b"sysrq: Trigger a crash" in ours
    assert b"Kernel panic - not syncing: sysrq triggered crash" in ours
    ref = tmp_path / "dmesg.ref"
    proc = subprocess.run([str(makedumpfile_new), "--dump-dmesg", str(result / "vmcore.elf"),
                           str(ref)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert ours == ref.read_bytes()
