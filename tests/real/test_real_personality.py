"""The distributions' collector lines, verbatim, with cdbdump in makedumpfile's place.

Each line is the one the distribution's kdump script builds (Fedora/RHEL kdump-utils
kdump.sh and mkdumprd, Debian kdump-tools kdump-config, SUSE kdump-save), run by the
shell that script runs under, with our program installed under the name
``makedumpfile`` on PATH. The vmcore is the fixtures' real /proc/vmcore (a panic of
Debian's 6.1 kernel, saved by its capture kernel); where makedumpfile 1.7.2 is a
valid reference for the same file (the QEMU dump of the same kernel), its output is
compared byte for byte too.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.real.conftest import cdbdump_cmd, cdbdump_env, get_vmcore

pytestmark = pytest.mark.real
TIMEOUT_S = 600
KDUMP_VMCORE = "debian12-6.1-1g-kdump"  # a real /proc/vmcore, CRASHTIME set
QEMU_VMCORE = "debian12-6.1-1g"  # makedumpfile 1.7.2 classifies this one right


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bin directory whose ``makedumpfile`` is cdbdump (what an administrator's link
    does: the program sees the name it was called by)."""
    bindir = tmp_path_factory.mktemp("personality-bin")
    tool = bindir / "makedumpfile"
    cmd = cdbdump_cmd()
    if os.environ.get("CDBDUMP_CMD"):  # a built executable: link it under the name
        tool.symlink_to(shutil.which(cmd[0]) or cmd[0])
    else:
        tool.write_text(f"#!{sys.executable}\nfrom cdbdump.cli import main\nmain()\n")
        tool.chmod(0o755)
    return bindir


def _env(shim: Path) -> dict[str, str]:
    env = cdbdump_env()
    env["PATH"] = f"{shim}{os.pathsep}{env['PATH']}"
    return env


def _sh(shell: str, script: str, shim: Path, **kw: Any) -> subprocess.CompletedProcess[bytes]:
    exe = shutil.which(shell)
    if exe is None:
        pytest.fail(f"{shell} is not installed")
    return subprocess.run([exe, "-c", script], env=_env(shim), capture_output=True,
                          timeout=TIMEOUT_S, check=False, **kw)


def _ok(proc: subprocess.CompletedProcess[bytes], what: str) -> None:
    assert proc.returncode == 0, (
        f"{what}: rc {proc.returncode}\n{proc.stdout[-2000:]!r}\n{proc.stderr[-2000:]!r}")


def _cdbdump(*args: str) -> None:
    proc = subprocess.run([*cdbdump_cmd(), *args], env=cdbdump_env(), capture_output=True,
                          timeout=TIMEOUT_S, check=False)
    _ok(proc, "cdbdump " + shlex.join(args))


def _same(a: Path, b: Path) -> None:
    assert a.stat().st_size == b.stat().st_size, (a, b)
    assert subprocess.run(["cmp", str(a), str(b)], check=False).returncode == 0, (a, b)


@pytest.fixture(scope="module")
def kdump_vm(real_tools: None) -> Any:
    return get_vmcore(KDUMP_VMCORE)


def test_rhel_file_target(kdump_vm: Any, shim: Path, tmp_path: Path) -> None:
    # kdump-utils kdump.sh dump_fs: collector output to the console, rename on success
    script = (
        "set -o pipefail\n"
        f"dir={tmp_path}\n"
        "makedumpfile -l --message-level 7 -d 31 --num-threads=2 "
        f"{kdump_vm.raw} $dir/vmcore-incomplete > $dir/console 2>&1\n"
        "_exitcode=$?\n"
        "[ $_exitcode -eq 0 ] && mv $dir/vmcore-incomplete $dir/vmcore\n"
        "exit $_exitcode\n")
    _ok(_sh("bash", script, shim), "RHEL file target")
    assert not (tmp_path / "vmcore-incomplete").exists()
    console = (tmp_path / "console").read_text()
    assert "The dumpfile is saved to" in console and "makedumpfile Completed." in console
    assert "Copying data" in console  # progress bit 1: makedumpfile's \r lines
    _cdbdump("-l", "-d", "31", str(kdump_vm.raw), str(tmp_path / "direct"))
    _same(tmp_path / "vmcore", tmp_path / "direct")
    assert (tmp_path / "vmcore").stat().st_mode & 0o777 == 0o600


def test_rhel_line_matches_makedumpfile_byte_for_byte(shim: Path, tmp_path: Path,
                                                      real_tools: None) -> None:
    vm = get_vmcore(QEMU_VMCORE)
    ours, ref = tmp_path / "ours", tmp_path / "ref"
    _ok(_sh("bash", f"makedumpfile -l --message-level 7 -d 31 {vm.norm} {ours}", shim), "ours")
    real = shutil.which("makedumpfile", path=f"{os.defpath}:/usr/sbin:/sbin") or "makedumpfile"
    ref_proc = subprocess.run([real, "-l", "--message-level", "7", "-d", "31", str(vm.norm),
                               str(ref)], capture_output=True, timeout=TIMEOUT_S, check=False)
    _ok(ref_proc, "makedumpfile")
    _same(ours, ref)


def test_rhel_ssh_and_raw_targets(kdump_vm: Any, shim: Path, tmp_path: Path) -> None:
    # kdump.sh dump_ssh/dump_raw: -F into a pipe (ssh ... dd), -R at the next boot
    script = (
        "set -o pipefail\n"
        f"makedumpfile -l --message-level 7 -d 31 -F {kdump_vm.raw} "
        f"| dd of={tmp_path}/vmcore-incomplete bs=512 2>/dev/null\n")
    proc = _sh("bash", script, shim)
    _ok(proc, "RHEL ssh line")
    assert b"makedumpfile Completed." in proc.stderr  # -F: text on stderr only
    _ok(_sh("bash", f"makedumpfile -R {tmp_path}/vmcore < {tmp_path}/vmcore-incomplete",
            shim), "makedumpfile -R")
    _cdbdump("-l", "-d", "31", str(kdump_vm.raw), str(tmp_path / "direct"))
    _same(tmp_path / "vmcore", tmp_path / "direct")


def test_rhel_build_time_check_params(shim: Path, tmp_path: Path) -> None:
    # mkdumprd: a failing --check-params aborts the initramfs build
    good = _sh("bash", "makedumpfile --check-params -l --message-level 7 -d 31 vmcore dumpfile",
               shim, cwd=tmp_path)
    _ok(good, "--check-params")
    assert list(tmp_path.iterdir()) == []
    bad = _sh("bash", "makedumpfile --check-params -E -l -d 31 vmcore dumpfile", shim)
    assert bad.returncode == 1
    assert b"Commandline parameter is invalid." in bad.stdout


def test_debian_kdump_tools_dump_and_dmesg(kdump_vm: Any, shim: Path, tmp_path: Path,
                                           makedumpfile_new: Path) -> None:
    # kdump-tools kdump-config kdump_save_core, under dash (no pipefail)
    stamp = "202612042300"
    script = (
        'compress() { case "$KDUMP_COMPRESSION" in gzip) gzip -c ;; *) cat ;; esac; }\n'
        'MAKEDUMP_ARGS="-c -d 31"\n'
        '[ "${MAKEDUMP_ARGS#-F*}" != "${MAKEDUMP_ARGS}" ] || '
        'MAKEDUMP_ARGS="${MAKEDUMP_ARGS} -F"\n'
        f'KDUMP_STAMPDIR={tmp_path}\n'
        f'vmcore_file={kdump_vm.raw}\n'
        'makedumpfile $MAKEDUMP_ARGS $vmcore_file | compress > "$KDUMP_STAMPDIR/dump-incomplete"\n'
        'ERROR=$?\n'
        f'[ $ERROR -eq 0 ] && mv "$KDUMP_STAMPDIR/dump-incomplete" "$KDUMP_STAMPDIR/dump.{stamp}"\n'
        f'makedumpfile --dump-dmesg $vmcore_file "$KDUMP_STAMPDIR/dmesg.{stamp}"\n')
    proc = _sh("dash", script, shim)
    _ok(proc, "Debian kdump-tools")
    assert proc.stdout.count(b"The dmesg log is saved to") == 1
    with (tmp_path / f"dump.{stamp}").open("rb") as stream:
        rebuilt = subprocess.run([*cdbdump_cmd(), "-R", str(tmp_path / "rebuilt")],
                                 stdin=stream, env=cdbdump_env(), capture_output=True,
                                 timeout=TIMEOUT_S, check=False)
    _ok(rebuilt, "cdbdump -R")
    _cdbdump("-c", "-d", "31", str(kdump_vm.raw), str(tmp_path / "direct"))
    _same(tmp_path / "rebuilt", tmp_path / "direct")
    ref = tmp_path / "dmesg.ref"
    ref_proc = subprocess.run([str(makedumpfile_new), "--dump-dmesg", str(kdump_vm.norm),
                               str(ref)], capture_output=True, timeout=TIMEOUT_S, check=False)
    _ok(ref_proc, "makedumpfile --dump-dmesg")
    assert (tmp_path / f"dmesg.{stamp}").read_bytes() == ref.read_bytes()
    assert b"Kernel panic" in ref.read_bytes() or b"sysrq" in ref.read_bytes().lower()


def _drain(fifo: Path, into: Path) -> threading.Thread:
    def run() -> None:
        with fifo.open("rb") as src, into.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_suse_kdump_save_through_a_fifo(kdump_vm: Any, shim: Path, tmp_path: Path) -> None:
    # kdump-save: the dump and the dmesg both go -F into a FIFO; stderr of the dmesg run
    # at message level 8 is scraped for OSRELEASE= and CRASHTIME=
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    saved = tmp_path / "vmcore.flat"
    reader = _drain(fifo, saved)
    proc = _sh("bash", f"makedumpfile -F -c --num-threads 2 --message-level 6 -d 31 "
                       f"{kdump_vm.raw} > {fifo}", shim)
    reader.join(TIMEOUT_S)
    _ok(proc, "SUSE dump line")
    with saved.open("rb") as stream:
        _ok(subprocess.run([*cdbdump_cmd(), "-R", str(tmp_path / "rebuilt")], stdin=stream,
                           env=cdbdump_env(), capture_output=True, timeout=TIMEOUT_S,
                           check=False), "cdbdump -R")
    _cdbdump("-c", "-d", "31", str(kdump_vm.raw), str(tmp_path / "direct"))
    _same(tmp_path / "rebuilt", tmp_path / "direct")

    log = tmp_path / "dmesg.txt"
    reader = _drain(fifo, log)
    proc = _sh("bash", f"makedumpfile -F --message-level 8 --dump-dmesg {kdump_vm.raw} > {fifo}",
               shim)
    reader.join(TIMEOUT_S)
    _ok(proc, "SUSE dmesg line")
    _cdbdump("--dump-dmesg", str(kdump_vm.raw), str(tmp_path / "dmesg.direct"))
    assert log.read_bytes() == (tmp_path / "dmesg.direct").read_bytes()
    scraped = {}
    for line in proc.stderr.decode().splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key in ("OSRELEASE", "CRASHTIME"):
            scraped[key] = value
    assert scraped == {"OSRELEASE": kdump_vm.vmcoreinfo["OSRELEASE"],
                       "CRASHTIME": kdump_vm.vmcoreinfo["CRASHTIME"]}


def test_size_limit_retries_at_the_next_level(kdump_vm: Any, shim: Path, tmp_path: Path) -> None:
    # -L behaves as a full disk; "-d 1,31" deletes the incomplete file and retries
    out, direct = tmp_path / "vmcore", tmp_path / "direct"
    _cdbdump("-l", "-d", "31", str(kdump_vm.raw), str(direct))
    limit = direct.stat().st_size + (1 << 20)
    proc = _sh("bash", f"makedumpfile -l -d 1,31 -L {limit} {kdump_vm.raw} {out}", shim)
    _ok(proc, "-L with a retry level")
    assert b"Retry to create a dumpfile by dump_level(31)." in proc.stdout
    _same(out, direct)
    out.unlink()
    proc = _sh("bash", f"makedumpfile -l -d 1 -L {limit} {kdump_vm.raw} {out}", shim)
    assert proc.returncode == 1
    assert b"This is an incomplete dumpfile" in proc.stdout
    assert out.stat().st_size <= limit
