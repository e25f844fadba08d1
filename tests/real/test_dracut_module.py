"""The dracut module packaging/dracut/99cdbdump, built for real (fixtures/dracut_initramfs.py).

dracut runs in the Debian root file system of the kdump e2e (a chroot; the host's
initramfs tool is untouched) with `--add cdbdump` and /etc/kdump.conf. The initramfs
is unpacked, and the bundle runs from the unpacked tree alone (chroot into it: the
glibc there is what dracut put in): --version, then kdump.conf's core_collector line
on a real /proc/vmcore, whose output libkdumpfile compares page by page with it.
Needs the mmdebstrap root file system, so it runs with `make kdump-e2e`
(marker rootfs_boot), not `make test`.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from fixtures import dracut_initramfs, kdump_e2e
from tests.oracles import libkdumpfile_check
from tests.real.conftest import get_vmcore, unavailable

pytestmark = [pytest.mark.real, pytest.mark.oracle, pytest.mark.slow, pytest.mark.rootfs_boot]


@pytest.fixture(scope="module")
def initramfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        out, _seconds = dracut_initramfs.build(tmp_path_factory.mktemp("dracut"))
    except kdump_e2e.E2eUnavailable as exc:
        unavailable(f"dracut in the Debian root file system: {exc}")
    except kdump_e2e.E2eError as exc:
        pytest.fail(str(exc), pytrace=False)
    return out


def _in_initramfs(tree: Path, command: str,
                  binds: dict[Path, str]) -> subprocess.CompletedProcess[str]:
    """COMMAND by the initramfs' own /bin/sh, chrooted into the unpacked TREE; BINDS maps
    host files to paths inside (a private mount namespace)."""
    mounts = "".join(f"touch {shlex.quote(str(tree) + dest)}; mount --bind "
                     f"{shlex.quote(str(src))} {shlex.quote(str(tree) + dest)}; "
                     for src, dest in binds.items())
    script = (f"set -e; mount -t proc proc {tree}/proc; {mounts}"
              f'exec chroot {tree} /bin/sh -c "$0"')
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                           command], capture_output=True, text=True, check=False,
                          stdin=subprocess.DEVNULL, timeout=600)


def test_bundle_and_kdump_conf_are_in_the_initramfs(initramfs: Path) -> None:
    listing = (initramfs / "lsinitrd.txt").read_text()
    assert "cdbdump" in listing.split("dracut modules:")[-1].split("=====")[0]
    for path in ("usr/lib/cdbdump/cdbdump", "usr/sbin/cdbdump", "etc/kdump.conf"):
        assert f" {path}" in listing, path
    conf = (initramfs / "unpacked" / "etc" / "kdump.conf").read_text()
    assert "core_collector cdbdump -l --message-level 7 -d 31" in conf.splitlines()


def test_core_collector_line_runs_from_the_initramfs_alone(initramfs: Path) -> None:
    tree = initramfs / "unpacked"
    version = _in_initramfs(tree, "cdbdump --version", {})
    assert version.returncode == 0, version.stderr
    assert "disabled" not in version.stdout and "zstd\tenabled" in version.stdout
    source = get_vmcore("debian12-6.1-1g-kdump").raw  # a capture kernel's /proc/vmcore
    conf = (tree / "etc" / "kdump.conf").read_text()
    collector = next(line.split(None, 1)[1] for line in conf.splitlines()
                     if line.startswith("core_collector "))
    (tree / "tmp").mkdir(exist_ok=True)
    proc = _in_initramfs(tree, f"{collector} /proc-vmcore /tmp/vmcore", {source: "/proc-vmcore"})
    assert proc.returncode == 0, proc.stderr
    dump = tree / "tmp" / "vmcore"
    lib = libkdumpfile_check(dump, source)
    assert lib.ok, lib.summary()
    assert lib.nr_dumpable > 10_000
