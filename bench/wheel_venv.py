"""The cdbdump a bench runs: a wheel of this tree installed into a venv of its own (what a
user runs), or with --editable the development venv's editable install.

bench.py, batch.py and memory.py import this as a sibling module (their directory is
sys.path[0] when run as scripts).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / ".cache" / "bench"


def install_wheel(bench_dir: Path) -> str:
    """Install this tree the way a user gets it: a wheel (bytecode compiled at install),
    into a venv of its own; returns that venv's python.

    The development venv holds an editable install, whose import finder runs at every
    interpreter start (`site`: ~10 ms quiet, ~40 ms loaded), a cost no installed
    cdbdump has. The dependencies are the development venv's (one .pth line, which adds
    the directory to sys.path without running the .pth files in it), so the versions
    measured are the ones tested.
    """
    venv = bench_dir / "venv"
    wheels = bench_dir / "wheel"
    shutil.rmtree(wheels, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "-w", str(wheels), str(REPO)], check=True)
    wheel = next(wheels.glob("cdbdump-*.whl"))
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = subprocess.run([str(venv / "bin" / "python"), "-c",
                           "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    dev_site = subprocess.run([sys.executable, "-c",
                               "import sysconfig; print(sysconfig.get_path('purelib'))"],
                              capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "cdbdump-bench-deps.pth").write_text(dev_site + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    "--upgrade", "--target", site, str(wheel)], check=True)
    return str(venv / "bin" / "python")


def cdbdump_python(bench_dir: Path = BENCH_DIR, editable: bool = False) -> str:
    """The python that runs cdbdump: the wheel venv's under ``bench_dir`` (install_wheel),
    or with ``editable`` this one."""
    # an installed cdbdump has its bytecode; without it (PYTHONDONTWRITEBYTECODE, a fresh
    # clone) every timed run would compile the package from source first
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "cdbdump")],
                   check=True)
    return sys.executable if editable else install_wheel(bench_dir)


def cdbdump_cmd(python: str, *args: str) -> list[str]:
    # -P: not the current directory first on sys.path, where a source tree's cdbdump
    # would shadow the installed one
    return [python, "-P", "-m", "cdbdump", *args]
