"""The one rule for "in CI" and the gate that makes every skip fail there.

In CI means: the environment variable CI is set and true (``true``, ``1`` or ``yes``,
any case); `.ci/run` sets ``CI=true``. Under it a skipped test or a skipped module
is reported as failed: CI runs every tier or says why it did not. xfail stays xfail.
tests/conftest.py imports the two hooks; `pytest -p tests.ci_gate` loads them alone.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Mapping
from typing import Any

import pytest


def in_ci(environ: Mapping[str, str]) -> bool:
    return environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


IN_CI = in_ci(os.environ)


def _reason(longrepr: Any) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def _fail_skip(report: Any) -> None:
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = (f"skipped under CI={os.environ.get('CI')}, where nothing may be "
                           f"skipped: {_reason(report.longrepr)}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, Any, None]:
    outcome = yield
    _fail_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, Any, None]:
    outcome = yield
    _fail_skip(outcome.get_result())
