"""The set-up a new user gets: `make demo` without a compiler, `make test`'s one list of
Debian packages, the archive taken from the machine's apt sources, CI = the README."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"
MIRRORS = REPO / "fixtures" / "apt-mirrors.sh"


@pytest.mark.slow
def test_make_demo_in_a_fresh_copy_without_a_compiler(tmp_path: Path) -> None:
    """scripts/fresh-demo.sh: gcc, cc and x86_64-linux-gnu-gcc fail; the demo and
    `cdbdump -l` still run (pip may use its wheel cache), on the Python compressor."""
    if shutil.which("git") is None or shutil.which("make") is None:
        pytest.fail("git and make are needed (scripts/install-system-deps.sh installs git)")
    proc = subprocess.run(["bash", str(SCRIPTS / "fresh-demo.sh"), str(tmp_path)],
                          capture_output=True, text=True, timeout=1200, check=False,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "passed without a C compiler" in proc.stdout
    calls = (tmp_path / "compiler-calls.log").read_text().splitlines()
    # only the optional native compressor's build (setup.py) may try the compiler
    assert all("_pagebatch" in c or "/probe." in c for c in calls), calls


def test_system_deps_names_what_is_missing() -> None:
    script = SCRIPTS / "install-system-deps.sh"
    listed = subprocess.run(["bash", str(script), "--list"], capture_output=True, text=True,
                            check=True).stdout.split()
    for needed in ("makedumpfile", "python3-libkdumpfile", "qemu-system-x86", "liblzo2-dev",
                   "libsnappy-dev", "libzstd-dev",
                   "python3-venv", "debian-archive-keyring"):
        assert needed in listed
    absent = "cdbdump-no-such-package"
    proc = subprocess.run(["bash", str(script), "--check", absent, "bash"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 1
    assert absent in proc.stderr and "apt-get install" in proc.stderr
    assert "bash" not in proc.stderr.replace("bash:", "")  # present packages are not named
    ok = subprocess.run(["bash", str(script), "--check", "bash"], capture_output=True,
                        text=True, check=False)
    assert (ok.returncode, ok.stderr) == (0, "")


def _mirrors(sources: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DEBIAN_")}
    return subprocess.run(["bash", str(MIRRORS)], capture_output=True, text=True, check=False,
                          env={**clean, "APT_SOURCES_DIR": str(sources), **env})


def _codename() -> str:
    text = Path("/etc/os-release").read_text()
    m = re.search(r"^VERSION_CODENAME=\"?(\w+)", text, re.M)
    if m is None:
        pytest.fail("/etc/os-release has no VERSION_CODENAME (not Debian?)")
    return m.group(1)


def test_archive_comes_from_the_machines_apt_sources(tmp_path: Path) -> None:
    code = _codename()
    deb822 = tmp_path / "a"
    (deb822 / "sources.list.d").mkdir(parents=True)
    (deb822 / "sources.list.d" / "other.sources").write_text(
        "Types: deb\nURIs: http://other.invalid/repo\nSuites: nodistro\nComponents: main\n")
    (deb822 / "sources.list.d" / "debian.sources").write_text(
        f"Types: deb\n# a comment\nURIs: http://main.invalid/mirror/\nSuites: {code} "
        f"{code}-updates\nComponents: main\n\nTypes: deb\nURIs: http://sec.invalid/ds\n"
        f"Suites: {code}-security\nComponents: main\n")
    proc = _mirrors(deb822)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["http://main.invalid/mirror", "http://sec.invalid/ds"]

    oneline = tmp_path / "b"
    oneline.mkdir()
    (oneline / "sources.list").write_text(
        f"deb [arch=amd64 signed-by=/k.gpg] http://one.invalid/mirror {code} main\n")
    assert _mirrors(oneline).stdout.split() == ["http://one.invalid/mirror",
                                                "http://one.invalid/mirror-security"]
    override = _mirrors(oneline, DEBIAN_MIRROR="http://x.invalid/d")
    assert override.stdout.split()[0] == "http://x.invalid/d"

    empty = tmp_path / "c"
    empty.mkdir()
    none = _mirrors(empty)
    assert none.returncode == 1 and "DEBIAN_MIRROR" in none.stderr


def test_repository_names_no_package_archive_host() -> None:
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard"],
                           capture_output=True, text=True, check=True).stdout.splitlines()
    host = re.compile(r"[\w.-]*(debian|ubuntu)" + r"\.(org|com|net)\b", re.I)
    named = []
    for name in files:
        path = REPO / name
        if path.is_file() and path.stat().st_size < 2_000_000:
            text = path.read_text(errors="replace")
            named += [f"{name}: {m.group(0)}" for m in host.finditer(text)]
    assert not named, named


def test_ci_runs_the_readme_test_command_and_nothing_else() -> None:
    readme = (REPO / "README.md").read_text()
    assert readme.startswith("# cdbdump\n\n```sh\nmake demo")
    assert "\nmake test" in readme.split("```")[1]
    assert "apt-get install" not in readme
    commands = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    assert commands == ['set -euo pipefail', 'cd "$(dirname "$0")/.."', "export CI=true",
                        "make test"]
