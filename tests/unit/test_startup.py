"""Start-up: what a dump run imports, and numpy's BLAS threads (cdbdump.blas).

Each check runs a fresh interpreter: the test process has imported everything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.builders import SyntheticKernel

MakeVmcore = Callable[..., tuple[SyntheticKernel, Path]]

# Modules a plain `-l -d 31` (or `-c`) dump to a file never uses: the zstd codec, the
# batch runner and Dask, the ELF reader library, progress bars, the other writers and
# the subcommands. Each costs start-up time when imported eagerly.
NOT_FOR_A_DUMP = (
    "zstandard", "dask", "distributed", "elftools", "tqdm", "cramjam",
    "cdbdump.batch", "cdbdump.verify", "cdbdump.subcommands", "cdbdump.mdcli",
    "cdbdump.writers.elf", "cdbdump.writers.split", "cdbdump.writers.flattened",
    "cdbdump.printk",
)

# Runs the command line in-process, then prints the modules it imported.
_RUN_AND_LIST = """
import json, sys
from cdbdump.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    assert not exc.code, exc.code
print(json.dumps(sorted(sys.modules)))
"""

# Records OPENBLAS_NUM_THREADS as it is when numpy is first imported.
_BLAS_AT_NUMPY_IMPORT = """
import os, sys
seen = []
class Spy:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "numpy" and not seen:
            seen.append(os.environ.get("OPENBLAS_NUM_THREADS"))
        return None
sys.meta_path.insert(0, Spy)
exec(sys.argv[1])
assert "numpy" in sys.modules
print(seen[0])
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    env.update(extra)
    return env


def _modules_of_run(*args: str) -> set[str]:
    proc = subprocess.run([sys.executable, "-c", _RUN_AND_LIST, *args], capture_output=True,
                          text=True, check=False, env=_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    return set(json.loads(proc.stdout.splitlines()[-1]))


def test_a_dump_imports_only_what_it_uses(tiny_vmcore: MakeVmcore, tmp_path: Path) -> None:
    _, vmcore = tiny_vmcore("6.1", seed=5)
    for codec in ("-l", "-c"):
        out = tmp_path / f"dump{codec}"
        modules = _modules_of_run(codec, "-d", "31", "--message-level", "0", str(vmcore),
                                  str(out))
        assert out.stat().st_size > 0
        assert "cdbdump.writers.kdump" in modules  # the run did write a dump
        eager = sorted(m for m in modules for lazy in NOT_FOR_A_DUMP
                       if m == lazy or m.startswith(lazy + "."))
        assert not eager, f"{codec} -d 31 imported what it does not use: {eager}"


def test_zstandard_is_imported_by_a_zstd_run_only_without_native_zstd(
    tiny_vmcore: MakeVmcore, tmp_path: Path
) -> None:
    # cdbdump._pagebatch compresses zstd itself when built with libzstd (CI: always,
    # test_pagebatch.py); python-zstandard is then the fallback, loaded only without it
    from cdbdump.codecs import Codec
    from cdbdump.writers.compress import native_codecs

    _, vmcore = tiny_vmcore("6.1", seed=5)
    args = ("-z", "-d", "31", "--message-level", "0", str(vmcore))
    modules = _modules_of_run(*args, str(tmp_path / "z"))
    assert ("zstandard" in modules) == (Codec.ZSTD not in native_codecs())
    proc = subprocess.run(  # the same run as a build without the C extension
        [sys.executable, "-c", "import sys; sys.modules['cdbdump._pagebatch'] = None\n"
         + _RUN_AND_LIST, *args, str(tmp_path / "z-python")],
        capture_output=True, text=True, check=False, env=_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "zstandard" in json.loads(proc.stdout.splitlines()[-1])
    assert (tmp_path / "z").read_bytes() == (tmp_path / "z-python").read_bytes()


def _blas_at_numpy_import(code: str, **env: str) -> str:
    proc = subprocess.run([sys.executable, "-c", _BLAS_AT_NUMPY_IMPORT, code],
                          capture_output=True, text=True, check=False, env=_env(**env))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip()


def test_command_line_loads_numpy_with_one_blas_thread() -> None:
    assert _blas_at_numpy_import("import cdbdump.cli") == "1"
    # a value the user set is kept
    assert _blas_at_numpy_import("import cdbdump.cli", OPENBLAS_NUM_THREADS="3") == "3"


def test_library_leaves_blas_threads_alone() -> None:
    # importing the library (not the command line) changes nothing in the process
    assert _blas_at_numpy_import("import cdbdump, cdbdump.pipeline") == "None"
