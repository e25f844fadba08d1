"""``cdbdump verify``: is a kdump-compressed dump whole and, given its source, true?

Checks, in crash's and libkdumpfile's reading order (diskdump.c
read_dump_header, pfn_to_pos, cache_page): headers consistent, the 2nd bitmap
a subset of the 1st, the page_desc table inside the file, every dumpable page
decompressing to exactly one page, lost pages only in a dump flagged
incomplete; with a source, every dumpable page byte-equal to the source's
frame (bytes the source does not store compare as zero, as makedumpfile
writes them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from cdbdump.dumpfile import open_dump
from cdbdump.errors import AddressError, CdbdumpError, TruncatedDumpError
from cdbdump.formats.kdump import PAGE_DESC_DTYPE
from cdbdump.memory.kdump import KdumpMemory
from cdbdump.memory.physical import PhysicalMemory, fill
from cdbdump.vmcore.kdumpfile import KdumpFile, PageDesc

__all__ = ("VerifyResult", "verify")

_MAX_PROBLEMS = 20
_WINDOW = 4096
_BATCH = 1024  # pages decoded at a time by the bulk check


@dataclass(slots=True)
class VerifyResult:
    dumpfile: str
    source: str | None = None
    problems: list[str] = field(default_factory=list)
    nr_problems: int = 0
    incomplete: bool = False
    nr_dumpable: int = 0
    nr_checked: int = 0  # pages decompressed (and compared)
    nr_lost: int = 0
    nr_differing: int = 0

    @property
    def ok(self) -> bool:
        return self.nr_problems == 0

    def problem(self, text: str) -> None:
        self.nr_problems += 1
        if len(self.problems) < _MAX_PROBLEMS:
            self.problems.append(text)

    def verdict(self) -> str:
        if not self.ok:
            more = f" (and {self.nr_problems - 1} more problems)" if self.nr_problems > 1 else ""
            return f"FAILED: {self.dumpfile}: {self.problems[0]}{more}"
        against = f", byte-equal to {self.source}" if self.source else ""
        flag = f"; INCOMPLETE dump, {self.nr_lost} pages lost" if self.incomplete else ""
        return (f"OK: {self.dumpfile}: {self.nr_checked} dumpable pages decompress to one "
                f"page each{against}{flag}")

    def as_json(self) -> dict[str, object]:
        out = asdict(self)
        out["ok"] = self.ok
        out["verdict"] = self.verdict()
        return out


def verify(dumpfile: Path, *split_parts: Path, source: Path | None = None,
           source_parts: tuple[Path, ...] = ()) -> VerifyResult:
    """Check a dump; problems are collected, never raised (the first is the verdict)."""
    result = VerifyResult(str(dumpfile), str(source) if source is not None else None)
    try:
        dump = open_dump(dumpfile, *split_parts)
    except CdbdumpError as exc:
        result.problem(str(exc))
        return result
    with dump:
        if not isinstance(dump.memory, KdumpMemory):
            result.problem(f"a {dump.facts.format} file, not a kdump-compressed dump")
            return result
        src = None
        if source is not None:
            try:
                src = open_dump(source, *source_parts)
            except CdbdumpError as exc:
                result.problem(f"source {source}: {exc}")
                return result
        try:
            _check(dump.memory, result, src.memory if src is not None else None)
        finally:
            if src is not None:
                src.close()
    return result


def _check(memory: KdumpMemory, result: VerifyResult, source: PhysicalMemory | None) -> None:
    ps = memory.page_size
    result.incomplete = any(p.is_incomplete for p in memory.parts)
    for part in memory.parts:
        stray = part.bitmap2.bits & ~part.bitmap1.bits
        if stray.any():
            byte = int(np.flatnonzero(stray)[0])
            result.problem(f"{part.file.path}: 2nd bitmap marks pfns dumpable that the 1st "
                           f"bitmap says are not present (first near pfn {byte * 8:#x})")
        table_end = part.offset_page_desc + part.nr_descs * PAGE_DESC_DTYPE.itemsize
        if table_end > part.file.size and not part.is_incomplete:
            result.problem(f"{part.file.path}: truncated: the page_desc table ends at "
                           f"{table_end:#x}, the file at {part.file.size:#x}")
        _check_end(part, result)
        result.nr_dumpable += part.nr_descs
        # makedumpfile's shared zero page sits first in the data area (dump level bit 1)
        shared_desc: PageDesc | None = None
        shared_page: bytes | None = None
        for pfns in part.iter_dumpable_pfns(_WINDOW):
            descs = part.page_descs(pfns)
            part.file.drop_all()  # RSS: the page data and descriptors are read mapped
            compare = None
            if source is not None:
                source.release_all()
                compare = np.empty(ps * pfns.size, dtype=np.uint8)
                _source_pages(source, pfns, compare, ps)
            if _check_window(part, pfns, descs, compare, result):
                continue
            # a bad page in the window: page by page, every problem named
            for i, (pfn, d) in enumerate(zip(pfns.tolist(), descs.tolist(), strict=True)):
                desc = PageDesc(*d)
                if desc.offset == 0:
                    result.nr_lost += 1
                    if not part.is_incomplete:
                        result.problem(f"pfn {pfn:#x}: no page data (descriptor is zero) but "
                                       "the header does not flag the dump incomplete")
                    continue
                try:
                    if desc == shared_desc and shared_page is not None:
                        page = shared_page  # the shared zero page, checked once
                    else:
                        page = part.load_page(pfn, desc)
                        if desc.offset == part.offset_data:
                            shared_desc, shared_page = desc, page
                except TruncatedDumpError as exc:
                    result.problem(f"truncated: pfn {pfn:#x}: {exc}")
                    continue
                except (CdbdumpError, AddressError) as exc:
                    result.problem(f"pfn {pfn:#x}: {exc}")
                    continue
                result.nr_checked += 1
                if compare is not None and page != compare[i * ps : (i + 1) * ps].tobytes():
                    result.nr_differing += 1
                    result.problem(f"pfn {pfn:#x} differs from the source")


def _check_window(
    part: KdumpFile, pfns: npt.NDArray[np.int64], descs: npt.NDArray[np.void],
    compare: npt.NDArray[np.uint8] | None, result: VerifyResult,
) -> bool:
    """A window's pages decoded in bulk; False (nothing counted) if one is bad."""
    ps = part.page_size
    lost = descs["offset"] == 0
    stored = pfns[~lost]
    at = np.flatnonzero(~lost)  # the stored pages' rows of compare
    pages = np.empty(min(stored.size, _BATCH) * ps, dtype=np.uint8)  # RSS: a few MiB
    differs = np.zeros(pfns.size, dtype=np.bool_)
    differs_stored = differs[~lost]  # a copy: put back below
    for lo in range(0, stored.size, _BATCH):
        batch = stored[lo : lo + _BATCH]
        try:
            part.pages_into(batch, pages)
        except (CdbdumpError, AddressError):
            return False
        if compare is not None:
            expected = compare.reshape(-1, ps)[at[lo : lo + batch.size]]
            got = pages[: batch.size * ps].reshape(-1, ps)
            differs_stored[lo : lo + batch.size] = (got != expected).any(axis=1)
    differs[~lost] = differs_stored
    result.nr_checked += int(stored.size)
    for i in np.flatnonzero(lost | differs).tolist():
        pfn = int(pfns[i])
        if lost[i]:
            result.nr_lost += 1
            if not part.is_incomplete:
                result.problem(f"pfn {pfn:#x}: no page data (descriptor is zero) but "
                               "the header does not flag the dump incomplete")
        else:
            result.nr_differing += 1
            result.problem(f"pfn {pfn:#x} differs from the source")
    return True


def _check_end(part: KdumpFile, result: VerifyResult) -> None:
    """The last page's data must end inside the file (makedumpfile writes data in pfn order)."""
    last = -1
    for pfns in part.iter_dumpable_pfns():
        last = int(pfns[-1])
    if last < 0:
        return
    desc = part.page_descs(np.array([last], dtype=np.int64))[0]
    end = int(desc["offset"]) + int(desc["size"])
    if end > part.file.size or (desc["offset"] == 0 and not part.is_incomplete):
        result.problem(f"truncated: {part.file.path} ends at {part.file.size:#x}, the data of "
                       f"its last page (pfn {last:#x}) needs {max(end, part.offset_data):#x}")


def _source_pages(
    source: PhysicalMemory, pfns: npt.NDArray[np.int64], out: npt.NDArray[np.uint8], ps: int
) -> None:
    """The source's frames ``pfns`` into ``out``, one fill per run of consecutive pfns."""
    breaks = np.flatnonzero(np.diff(pfns) != 1) + 1
    for lo, hi in zip((0, *breaks.tolist()), (*breaks.tolist(), pfns.size), strict=True):
        fill(source, int(pfns[lo]) * ps, out[lo * ps : hi * ps])
