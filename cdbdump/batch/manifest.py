"""DIR/batch.jsonl: one JSON object per input and run, appended as results arrive.

Each record is written with one write(2) on an O_APPEND descriptor, so a batch
killed at any moment leaves whole lines (a torn last line, if the machine itself
fails, is passed over when read back). The file is created 0600 and never
through a symbolic link. Reading it back gives, per output, the last record of
a finished run (for the next run's skip decision), and per input the latest
record of any run (the merged summary).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from cdbdump.errors import OutputError

__all__ = ("MANIFEST_NAME", "Manifest", "Summary", "finished_by_output", "read_records",
           "summarise")

MANIFEST_NAME = "batch.jsonl"
_FINISHED = ("done", "skipped")


class Manifest:
    """The append side of the manifest."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1

    def __enter__(self) -> Manifest:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            self._fd = os.open(self.path, flags, 0o600)
        except OSError as exc:
            raise OutputError(f"cannot open the manifest: {exc.strerror}",
                              path=str(self.path)) from exc
        return self

    def append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        try:
            written = os.write(self._fd, line)
        except OSError as exc:
            raise OutputError(f"cannot append to the manifest: {exc.strerror}",
                              path=str(self.path)) from exc
        if written != len(line):
            raise OutputError(f"short write to the manifest ({written} of {len(line)} bytes)",
                              path=str(self.path))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fd >= 0:
            try:
                os.fsync(self._fd)
            except OSError:
                pass  # the lines are written; durability is best effort here
            os.close(self._fd)
            self._fd = -1


def read_records(path: Path) -> tuple[list[dict[str, Any]], int]:
    """All records of the manifest, and the number of unreadable lines passed over."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return [], 0
    except OSError as exc:
        raise OutputError(f"cannot read the manifest: {exc.strerror}", path=str(path)) from exc
    records: list[dict[str, Any]] = []
    bad = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(record, dict) and isinstance(record.get("input"), str):
            records.append(record)
        else:
            bad += 1
    return records, bad


def finished_by_output(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per output path, the last record of a run that finished it (done or skipped)."""
    last: dict[str, dict[str, Any]] = {}
    for record in records:
        output = record.get("output")
        if isinstance(output, str) and record.get("status") in _FINISHED:
            last[output] = record
    return last


@dataclass(slots=True)
class Summary:
    """The batch as a whole: the latest record of every input over all runs."""

    latest: list[dict[str, Any]] = field(default_factory=list)
    by_status: dict[str, int] = field(default_factory=dict)
    input_bytes: int = 0
    output_bytes: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)


def summarise(records: Iterable[dict[str, Any]], inputs: Iterable[str] | None = None) -> Summary:
    """Merge runs: per input, its latest record. ``inputs`` limits it to this batch's."""
    latest: dict[str, dict[str, Any]] = {}
    for record in records:
        latest[record["input"]] = record
    wanted = list(latest) if inputs is None else [i for i in inputs if i in latest]
    summary = Summary()
    for name in wanted:
        record = latest[name]
        summary.latest.append(record)
        status = str(record.get("status"))
        summary.by_status[status] = summary.by_status.get(status, 0) + 1
        if status == "error":
            summary.errors.append(record)
        else:
            summary.input_bytes += int(record.get("size") or 0)
            summary.output_bytes += int(record.get("bytes_out") or 0)
    return summary
