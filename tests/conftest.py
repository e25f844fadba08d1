"""Shared pytest fixtures and hypothesis profiles.

Fixtures:
* ``tiny_kernel(dialect="6.1", **kwargs) -> SyntheticKernel``: a factory; machines are
  cached per argument set for the session (building one takes a fraction of a second,
  tests must not mutate them; pass ``fresh=True`` for a private copy to corrupt).
* ``tiny_vmcore(dialect="6.1", **kwargs) -> (SyntheticKernel, Path)``: the same, written
  sparse into a session temporary directory.
* ``makedumpfile_new -> Path``: a makedumpfile >= 1.7.6 with zstd: $CDBDUMP_MAKEDUMPFILE when
  it is one, else Debian 13's, fetched once into .cache/ (fixtures/makedumpfile_trixie.py).
  Skips when it cannot be had, fails under CI=true.

Under CI (tests/ci_gate.py: $CI set and true) every skip is a failure.

Hypothesis profiles: "ci" (derandomized, more examples; selected under CI) and "dev"
(few examples, the default). Choose explicitly with HYPOTHESIS_PROFILE=ci|dev.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `tests.builders` importable however pytest is started
    sys.path.insert(0, str(ROOT))

from fixtures import makedumpfile_trixie  # noqa: E402
from tests.builders import SyntheticKernel  # noqa: E402
from tests.ci_gate import (  # noqa: E402, F401  (hooks: every skip fails under CI)
    IN_CI,
    pytest_make_collect_report,
    pytest_runtest_makereport,
)

settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=200,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev",
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if IN_CI else "dev")
)


def _key(dialect: str, kwargs: dict[str, Any]) -> tuple[Any, ...]:
    def freeze(value: Any) -> Any:
        if isinstance(value, dict):
            return tuple(sorted((k, freeze(v)) for k, v in value.items()))
        if isinstance(value, list | tuple | set | frozenset):
            return tuple(freeze(v) for v in value)
        return value

    return (dialect, freeze(kwargs))


@pytest.fixture(scope="session")
def _kernel_cache() -> dict[tuple[Any, ...], SyntheticKernel]:
    return {}


@pytest.fixture(scope="session")
def tiny_kernel(
    _kernel_cache: dict[tuple[Any, ...], SyntheticKernel],
) -> Callable[..., SyntheticKernel]:
    def make(dialect: str = "6.1", *, fresh: bool = False, **kwargs: Any) -> SyntheticKernel:
        if fresh:
            return SyntheticKernel(dialect, **kwargs)
        key = _key(dialect, kwargs)
        if key not in _kernel_cache:
            _kernel_cache[key] = SyntheticKernel(dialect, **kwargs)
        return _kernel_cache[key]

    return make


@pytest.fixture(scope="session")
def tiny_vmcore(
    tiny_kernel: Callable[..., SyntheticKernel], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., tuple[SyntheticKernel, Path]]]:
    written: dict[tuple[Any, ...], Path] = {}

    def make(dialect: str = "6.1", **kwargs: Any) -> tuple[SyntheticKernel, Path]:
        kernel = tiny_kernel(dialect, **kwargs)
        key = _key(dialect, kwargs)
        if key not in written:
            path = tmp_path_factory.mktemp("vmcore") / f"synthetic-{dialect}.elf"
            kernel.write(path)
            written[key] = path
        return kernel, written[key]

    yield make


@pytest.fixture(scope="session")
def makedumpfile_new() -> Path:
    env = os.environ.get("CDBDUMP_MAKEDUMPFILE")
    try:
        if env:
            version, codecs = makedumpfile_trixie.version_info(env)
            if version >= makedumpfile_trixie.MIN_VERSION and "zstd" in codecs:
                return Path(env)
        return makedumpfile_trixie.ensure()
    except makedumpfile_trixie.MakedumpfileUnavailable as exc:
        if IN_CI:
            pytest.fail(f"makedumpfile >= 1.7.6 unavailable under CI: {exc}", pytrace=False)
        pytest.skip(f"makedumpfile >= 1.7.6 unavailable: {exc}")
