"""The files of a `makedumpfile --split` set, found by their headers and grouped.

Every file of a split set carries the same disk_dump_header (its status aside:
the INCOMPLETE bit is per file) and the same sub header except its own pfn
range (split = 1, start_pfn_64, end_pfn_64) and where its erase info landed.
Files whose headers agree are one set; the set is complete when their ranges
tile [0, max_mapnr) with no gap and no overlap. File names play no part: a set
copied under other names is still found, and two sets in one directory are
told apart by their headers (reference: makedumpfile store_splitting_info and
check_splitting_info, which accept files into one set on the same criteria).

Only headers are read here (a few hundred bytes per file); a file that cannot
be read, or is not a split file, is left for the work function to report.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cdbdump.formats.kdump import (
    DISK_DUMP_HEADER,
    DISK_DUMP_HEADER_STATUS_OFFSET,
    DISKDUMP_SIGNATURE,
    KDUMP_SIGNATURE,
    KDUMP_SUB_HEADER,
    DiskDumpHeader,
    KdumpSubHeader,
)

__all__ = ("SplitPart", "SplitSet", "group_parts", "read_split_part")

_MIN_BLOCK_SIZE = 0x200


@dataclass(frozen=True, slots=True)
class SplitPart:
    """One file of a split set, as its headers describe it."""

    path: Path
    set_key: bytes  # equal for the files of one set
    start_pfn: int
    end_pfn: int
    max_mapnr: int


@dataclass(frozen=True, slots=True)
class SplitSet:
    """The files of one set in pfn order, and what is wrong with the set (None: complete)."""

    parts: tuple[SplitPart, ...]
    problem: str | None

    @property
    def first(self) -> Path:
        return self.parts[0].path


def read_split_part(path: Path) -> SplitPart | None:
    """The split-set facts of ``path``, or None when it is not one file of a split set."""
    try:
        with path.open("rb") as f:
            raw = f.read(DISK_DUMP_HEADER.size)
            if len(raw) < DISK_DUMP_HEADER.size:
                return None
            header = DiskDumpHeader(*DISK_DUMP_HEADER.unpack(raw))
            if header.signature not in (KDUMP_SIGNATURE, DISKDUMP_SIGNATURE):
                return None
            block_size = header.block_size
            if (header.header_version < 2 or block_size < _MIN_BLOCK_SIZE
                    or block_size & (block_size - 1)):
                return None
            f.seek(block_size)
            sub_raw = f.read(KDUMP_SUB_HEADER.size)
    except OSError:
        return None
    if len(sub_raw) < KDUMP_SUB_HEADER.size:
        return None
    sub = KdumpSubHeader(*KDUMP_SUB_HEADER.unpack(sub_raw))
    if not sub.split:
        return None
    if header.header_version >= 6:
        start, end, max_mapnr = sub.start_pfn_64, sub.end_pfn_64, sub.max_mapnr_64
    else:
        start, end, max_mapnr = sub.start_pfn, sub.end_pfn, header.max_mapnr
    status_at = DISK_DUMP_HEADER_STATUS_OFFSET
    common = sub._replace(start_pfn=0, end_pfn=0, start_pfn_64=0, end_pfn_64=0,
                          offset_eraseinfo=0, size_eraseinfo=0)
    key = (raw[:status_at] + bytes(4) + raw[status_at + 4:]
           + KDUMP_SUB_HEADER.pack(*common))
    return SplitPart(path, key, start, end, max_mapnr)


def _problem(parts: list[SplitPart]) -> str | None:
    """None when ``parts`` (in pfn order) tile [0, max_mapnr) exactly."""
    expected = 0
    for part in parts:
        if part.start_pfn > expected:
            return (f"the part holding pfns {expected:#x}-{part.start_pfn:#x} is missing "
                    f"(before {part.path})")
        if part.start_pfn < expected:
            return f"{part.path} overlaps another file of the set (it starts at pfn " \
                   f"{part.start_pfn:#x}, the files before it end at {expected:#x})"
        expected = part.end_pfn
    max_mapnr = parts[-1].max_mapnr
    if expected < max_mapnr:
        return (f"the part holding pfns {expected:#x}-{max_mapnr:#x} is missing "
                f"(after {parts[-1].path})")
    return None


def group_parts(parts: Iterable[SplitPart]) -> list[SplitSet]:
    """The sets ``parts`` belong to, in the order their first file was found."""
    by_key: dict[bytes, list[SplitPart]] = {}
    for part in parts:
        by_key.setdefault(part.set_key, []).append(part)
    sets: list[SplitSet] = []
    for members in by_key.values():
        members.sort(key=lambda p: (p.start_pfn, p.end_pfn))
        problem = _problem(members)
        if problem is not None:
            names = ", ".join(str(p.path) for p in members)
            problem = f"split set of {len(members)} file{'s' * (len(members) != 1)} " \
                      f"({names}): {problem}"
        sets.append(SplitSet(tuple(members), problem))
    return sets
