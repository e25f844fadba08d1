"""SRC arguments -> jobs: which files to process, and the name of each output.

SRC is a file, a directory (walked recursively, symbolic links to directories not
followed) or a glob pattern (``**`` matches across directories). Outputs mirror the
inputs' paths below their root, with ``.kdump`` appended:

    SRC /var/crash             /var/crash/host-0102/vmcore -> DIR/host-0102/vmcore.kdump
    SRC '/var/crash/*/vmcore'  same (the root is the glob's literal part, /var/crash)
    SRC /tmp/x.vmcore          DIR/x.vmcore.kdump (the root is the file's directory)

In a directory, only files that start with a dump signature are taken (ELF,
kdump-compressed, flattened), so kdump's dmesg logs beside a vmcore are passed
over; a file named directly or by a glob is always taken. The output directory
itself is never walked. Two inputs that would share an output are an error for
the second, never a silent overwrite.

The files of a `makedumpfile --split` set are one input, recognised by their
headers (splitsets.py), named after the file holding the lowest pfns (its
output, its place in the order); the others are its ``parts``. An incomplete
set is a problem naming the missing pfn range.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cdbdump.batch.splitsets import SplitSet, group_parts, read_split_part
from cdbdump.formats.elf import ELFMAG
from cdbdump.formats.flattened import MAKEDUMPFILE_SIGNATURE
from cdbdump.formats.kdump import DISKDUMP_SIGNATURE, KDUMP_SIGNATURE

__all__ = ("OUTPUT_SUFFIX", "Discovery", "Job", "discover", "looks_like_dump")

OUTPUT_SUFFIX = ".kdump"
_SIGNATURE_BYTES = 16


@dataclass(frozen=True, slots=True)
class Job:
    """One input and the output it becomes."""

    input: Path
    output: Path
    size: int  # st_size of the input when it was found (of all its files, for a split set)
    parts: tuple[Path, ...] = ()  # the other files of a split set, in pfn order


@dataclass(slots=True)
class Discovery:
    jobs: list[Job] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (SRC or input, why)
    passed_over: int = 0  # files in walked directories that are not dumps


def looks_like_dump(path: Path) -> bool:
    """True when the file starts with a dump signature (or cannot be read: let the
    work function report why)."""
    try:
        with path.open("rb") as f:
            head = f.read(_SIGNATURE_BYTES)
    except OSError:
        return True
    return (
        head.startswith(ELFMAG)
        or head[:8] in (KDUMP_SIGNATURE, DISKDUMP_SIGNATURE)
        or head == MAKEDUMPFILE_SIGNATURE
    )


def _walk(root: Path, out_dir: Path, found: Discovery) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root, onerror=None):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not _same_dir(here / d, out_dir))
        for name in sorted(filenames):
            path = here / name
            if not path.is_file():
                continue  # sockets, FIFOs, dangling links
            if looks_like_dump(path):
                yield path
            else:
                found.passed_over += 1


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


def _glob_root(pattern: str) -> Path:
    """The literal directory part of a glob pattern ('/var/crash/*/vmcore' -> /var/crash)."""
    parts = Path(pattern).parts
    literal: list[str] = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        literal.append(part)
    return Path(*literal) if literal else Path()


def _expand(src: str, out_dir: Path, found: Discovery) -> Iterator[tuple[Path, Path]]:
    """(input, root) pairs of one SRC argument."""
    if glob.has_magic(src) and not Path(src).exists():
        root = _glob_root(src)
        matches = sorted(glob.glob(src, recursive=True))  # noqa: PTH207 (absolute patterns)
        if not matches:
            found.problems.append((src, "no file matches this pattern"))
        for match in matches:
            path = Path(match)
            if path.is_dir():
                yield from ((p, root) for p in _walk(path, out_dir, found))
            elif path.is_file():
                yield path, root
        return
    path = Path(src)
    if path.is_dir():
        yield from ((p, path) for p in _walk(path, out_dir, found))
    elif path.exists() or path.is_symlink():
        yield path, path.parent
    else:
        found.problems.append((src, "no such file or directory"))


def output_for(input_path: Path, root: Path, out_dir: Path) -> Path:
    try:
        rel = input_path.absolute().relative_to(root.absolute())
    except ValueError:
        rel = Path(input_path.name)
    return out_dir / rel.parent / (rel.name + OUTPUT_SUFFIX)


@dataclass(frozen=True, slots=True)
class _Found:
    path: Path  # absolute
    root: Path
    size: int


def discover(sources: Sequence[str], out_dir: Path) -> Discovery:
    """Expand SRC arguments into jobs, in a stable order (SRC order, then path order)."""
    found = Discovery()
    candidates: list[_Found] = []
    seen_inputs: set[tuple[int, int]] = set()
    for src in sources:
        for path, root in _expand(src, out_dir, found):
            try:
                st = path.stat()
            except OSError as exc:
                found.problems.append((str(path), f"cannot stat: {exc.strerror}"))
                continue
            identity = (st.st_dev, st.st_ino)
            if identity in seen_inputs:
                continue  # the same file named twice (or through a link)
            seen_inputs.add(identity)
            # records name inputs the same however SRC was spelled
            candidates.append(_Found(path.absolute(), root, st.st_size))
    sets = _split_sets(candidates)
    by_output: dict[Path, Path] = {}
    for cand in candidates:
        split_set = sets.get(cand.path)
        parts: tuple[Path, ...] = ()
        size = cand.size
        if split_set is not None:
            if split_set.first != cand.path:
                continue  # a later file of a set: the set is the job of its first file
            if split_set.problem is not None:
                found.problems.append((str(cand.path), split_set.problem))
                continue
            parts = tuple(p.path for p in split_set.parts[1:])
            size = sum(c.size for c in candidates if sets.get(c.path) is split_set)
        output = output_for(cand.path, cand.root, out_dir)
        other = by_output.get(output)
        if other is not None:
            found.problems.append(
                (str(cand.path), f"its output {output} is also the output of {other}; "
                 "name their common directory instead")
            )
            continue
        by_output[output] = cand.path
        found.jobs.append(Job(cand.path, output, size, parts))
    return found


def _split_sets(candidates: Sequence[_Found]) -> dict[Path, SplitSet]:
    """Each file of a split set -> its set (files that are not split files are absent)."""
    parts = [part for part in map(read_split_part, (c.path for c in candidates))
             if part is not None]
    return {part.path: split_set for split_set in group_parts(parts)
            for part in split_set.parts}
