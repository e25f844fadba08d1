"""The one work function of a batch: one input in, one output out, one Outcome back.

``run_one(input, output, options)`` runs the library pipeline (cdbdump.pipeline
``dump``) into a temporary name and publishes it atomically. A split set
(``parts``: its other files) is read as one input, as ``cdbdump VMCORE
--split-part ...`` reads it. The local pool and
Dask call exactly this function; whatever input formats the pipeline reads, the
batch reads. It never raises for a bad input or an output problem: those are an
``error`` Outcome. Anything else (a bug, an interrupt) propagates to the executor.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

from cdbdump.batch import hooks
from cdbdump.batch.existing import output_counts, output_problem
from cdbdump.batch.limits import apply_memory_bound, peak_rss_kib, reset_peak_rss
from cdbdump.batch.publish import partial_name, publish
from cdbdump.codecs import Codec
from cdbdump.errors import CdbdumpError, IncompleteDumpError, InputError, OutputError
from cdbdump.mm.levels import DumpLevel
from cdbdump.pipeline import DumpOptions, dump
from cdbdump.report import DumpReport

__all__ = (
    "DONE",
    "ERROR",
    "SKIPPED",
    "BatchOptions",
    "Outcome",
    "Piece",
    "dmesg_path",
    "existing_outcome",
    "run_one",
)

DONE, SKIPPED, ERROR = "done", "skipped", "error"
FINGERPRINT_BYTES = 1 << 20  # the manifest's sha256 covers the first MiB of an input's files
DMESG_SUFFIX = ".dmesg.txt"

_bound_applied: int | None = None  # the memory bound this process runs under


@dataclass(frozen=True, slots=True)
class BatchOptions:
    """What every input of the batch is done with."""

    dump_level: int = 31
    codec: Codec = Codec.ZSTD
    use_kernel_bitmap: bool = False  # -q
    force: bool = False  # -f: replace outputs that exist but do not verify
    verify: bool = False  # run `cdbdump verify` on each output before publishing it
    dmesg: bool = False  # also write each input's kernel log (--dump-dmesg)
    memory_bound: int | None = None  # bytes (RLIMIT_DATA) for the process running run_one
    shards: int = 1  # pieces per input (--shards): pfn ranges written by separate workers

    def dump_options(self, vmcore: Path, dumpfile: Path, parts: tuple[Path, ...] = ()
                     ) -> DumpOptions:
        return DumpOptions(vmcore=vmcore, dumpfile=dumpfile,
                           dump_level=DumpLevel(self.dump_level), codec=self.codec,
                           use_kernel_bitmap=self.use_kernel_bitmap, split_parts=parts)


class Piece(NamedTuple):
    """One file of a sharded input's --split set: every worker derives the same pfn
    ranges from the same bitmaps, and writes the range of its ``number``."""

    number: int  # 0-based
    total: int  # pieces of the input


@dataclass(slots=True)
class Outcome:
    """One manifest record: what happened to one input in one run."""

    input: str
    output: str | None
    status: str = ERROR
    error: str | None = None
    parts: list[str] | None = None  # the other files of a split-set input, in pfn order
    size: int | None = None  # input file size (the sum over a split set's files)
    sha256_1mib: str | None = None  # sha256 of the input's first MiB (of each file's, in turn)
    path_taken: str | None = None  # bitmap / legacy / fallback / none
    fallback_reason: str | None = None
    pages: dict[str, int] | None = None  # excluded pages per class
    original_pages: int | None = None
    remaining_pages: int | None = None
    bytes_in: int | None = None  # file-backed bytes of the input's memory
    bytes_out: int | None = None  # output file size
    seconds: float = 0.0
    dump_level: int = 0  # asked for
    dump_level_applied: int | None = None
    codec: str = ""
    use_kernel_bitmap: bool = False
    levels_not_applied: str | None = None
    warnings: list[str] = field(default_factory=list)
    skip_reason: str | None = None
    replaced: str | None = None  # why an existing output was replaced (-f)
    verified: bool = False  # `cdbdump verify` passed (--verify)
    dmesg: str | None = None  # the kernel log written (--dmesg)
    dmesg_error: str | None = None
    peak_rss_kib: int | None = None
    memory_bound: int | None = None
    worker: str = ""
    attempts: int = 1
    traceback: str | None = None  # an unexpected exception's (a bug to report)

    @classmethod
    def begin(cls, input_path: Path, output_path: Path, options: BatchOptions,
              parts: tuple[Path, ...] = ()) -> Outcome:
        """An error Outcome for this input, until the work says otherwise."""
        return cls(
            input=str(input_path),
            output=str(output_path),
            parts=[str(p) for p in parts] or None,
            dump_level=options.dump_level,
            codec=options.codec.label,
            use_kernel_bitmap=options.use_kernel_bitmap,
            memory_bound=options.memory_bound,
            worker=f"{socket.gethostname()}:{os.getpid()}",
        )

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def dmesg_path(output: Path) -> Path:
    name = output.name.removesuffix(".kdump")
    return output.with_name(name + DMESG_SUFFIX)


def _fingerprint(path: Path, parts: tuple[Path, ...] = ()) -> tuple[int, str]:
    """Size and sha256 of the first MiB; of a split set, the sizes' sum and the
    sha256 of each file's first MiB one after the other."""
    size = 0
    digest = hashlib.sha256()
    for one in (path, *parts):
        try:
            with one.open("rb") as f:
                size += os.fstat(f.fileno()).st_size
                digest.update(f.read(FINGERPRINT_BYTES))
        except OSError as exc:
            raise InputError(f"{one}: cannot read: {exc.strerror}") from exc
    return size, digest.hexdigest()


def _ensure_memory_bound(bound: int) -> None:
    global _bound_applied
    if _bound_applied != bound:
        apply_memory_bound(bound)
        _bound_applied = bound


def run_one(
    input_path: Path,
    output_path: Path,
    options: BatchOptions,
    previous: dict[str, Any] | None = None,
    piece: Piece | None = None,
    parts: tuple[Path, ...] = (),
) -> Outcome:
    """Turn ``input_path`` (with ``parts``, a split set) into ``output_path``; return
    what happened.

    ``previous`` is the manifest's last ``done`` record of this output (from an
    earlier run), used to tell a finished output from a stale one. With ``piece``
    only that file of the input's --split set is written, beside ``output_path``
    (named in the Outcome's ``output``), for shards.Assembler to reassemble.
    """
    start = time.perf_counter()
    if options.memory_bound is not None:
        _ensure_memory_bound(options.memory_bound)
    reset_peak_rss()
    outcome = Outcome.begin(input_path, output_path, options, parts)
    try:
        if piece is None:
            _process(input_path, output_path, options, previous, outcome, parts)
        else:
            _process_piece(input_path, output_path, options, piece, outcome, parts)
    except IncompleteDumpError as exc:  # no half output is kept
        outcome.status = ERROR
        outcome.error = (f"{output_path}: {_incomplete_why(exc)}; nothing was kept, a re-run "
                         "retries it")
    except CdbdumpError as exc:
        outcome.status, outcome.error = ERROR, str(exc)
    except MemoryError:
        bound = options.memory_bound
        outcome.status = ERROR
        outcome.error = (f"{input_path}: needs more than the worker's memory bound "
                         f"({bound >> 20} MiB)" if bound else f"{input_path}: out of memory")
    except OSError as exc:  # file-system trouble outside the pipeline (mkdir, stat)
        outcome.status = ERROR
        outcome.error = f"{exc.filename or input_path}: {exc.strerror}"
    if outcome.error is not None and str(input_path) not in outcome.error:
        outcome.error = f"{input_path}: {outcome.error}"  # every error line names its input
    outcome.seconds = time.perf_counter() - start
    outcome.peak_rss_kib = peak_rss_kib()
    return outcome


def _incomplete_why(exc: IncompleteDumpError) -> str:
    """Why the dump came out incomplete: a full file system, a signal, or the input
    (unreadable pages, pages its headers claim but the file lacks)."""
    if exc.cause is not None:
        return f"the output file system filled up after {exc.file_offset + exc.written:#x} bytes"
    if exc.signum is not None:
        return f"interrupted by {signal.Signals(exc.signum).name}"
    return f"the dump would be incomplete: {exc.reason}"


def _previous_matches(previous: dict[str, Any] | None, options: BatchOptions) -> bool:
    return previous is not None and (
        previous.get("dump_level") == options.dump_level
        and previous.get("codec") == options.codec.label
        and bool(previous.get("use_kernel_bitmap")) == options.use_kernel_bitmap
    )


def _existing_problem(
    output: Path,
    options: BatchOptions,
    previous: dict[str, Any] | None,
    size: int,
    sha: str,
) -> str | None:
    """None when the existing ``output`` is this input's finished output for ``options``."""
    level = options.dump_level
    if previous is not None:
        if previous.get("size") != size or previous.get("sha256_1mib") != sha:
            return "was made from a different input (size or first-MiB sha256 differ)"
        if not _previous_matches(previous, options):
            return (f"was made with other options (-d {previous.get('dump_level')}, "
                    f"{previous.get('codec')})")
        applied = previous.get("dump_level_applied")
        if isinstance(applied, int):
            level = applied  # a level degraded for want of mem_map, as recorded then
    return output_problem(output, options.codec, level)


def existing_outcome(
    input_path: Path,
    output_path: Path,
    options: BatchOptions,
    previous: dict[str, Any] | None,
    outcome: Outcome,
    parts: tuple[Path, ...] = (),
) -> bool:
    """Decide on an output that may exist already; True when nothing is left to do.

    Fills ``outcome`` with the input's fingerprint, and marks it skipped when the
    output is this input's finished output. Raises OutputError when an output
    exists that is not, unless -f (then ``outcome.replaced`` says why).
    """
    size, sha = _fingerprint(input_path, parts)
    outcome.size, outcome.sha256_1mib = size, sha
    if not (output_path.exists() or output_path.is_symlink()):
        return False
    problem = _existing_problem(output_path, options, previous, size, sha)
    if problem is None:
        _skip(output_path, options, previous, outcome)
        return True
    if not options.force:
        raise OutputError(f"exists and {problem}; -f replaces it", path=str(output_path))
    outcome.replaced = problem
    return False


def _process(
    input_path: Path,
    output_path: Path,
    options: BatchOptions,
    previous: dict[str, Any] | None,
    outcome: Outcome,
    parts: tuple[Path, ...],
) -> None:
    if existing_outcome(input_path, output_path, options, previous, outcome, parts):
        return
    output_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = partial_name(output_path)
    try:
        report = dump(options.dump_options(input_path, partial, parts))
        if options.verify:
            hooks.run_verify(partial, input_path, parts)
            outcome.verified = True
        publish(partial, output_path, replace=options.force)
    finally:
        partial.unlink(missing_ok=True)  # published, or a failed run: never left behind
    record_report(report, outcome)
    outcome.bytes_out = output_path.stat().st_size
    outcome.status = DONE
    if options.dmesg:
        _write_dmesg(input_path, output_path, outcome, parts)


def _process_piece(
    input_path: Path, output_path: Path, options: BatchOptions, piece: Piece, outcome: Outcome,
    parts: tuple[Path, ...],
) -> None:
    size, sha = _fingerprint(input_path, parts)
    outcome.size, outcome.sha256_1mib = size, sha
    output_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # the whole set's names (only ours is created): the ranges depend on their number
    paths = tuple(partial_name(output_path.with_name(f"{output_path.name}.piece{i + 1}of"
                                                     f"{piece.total}"))
                  for i in range(piece.total))
    path = paths[piece.number]
    kept = False
    try:
        report = dump(replace(options.dump_options(input_path, path, parts), split_files=paths,
                              split_only=piece.number))
        kept = True
    finally:
        if not kept:
            path.unlink(missing_ok=True)
    record_report(report, outcome)
    outcome.output = str(path)  # a temporary file: the assembler's to reassemble or remove
    outcome.bytes_out = path.stat().st_size
    outcome.status = DONE


def _skip(
    output: Path, options: BatchOptions, previous: dict[str, Any] | None, outcome: Outcome
) -> None:
    outcome.status = SKIPPED
    outcome.skip_reason = "the output exists and verifies"
    outcome.bytes_out = output.stat().st_size
    if previous is not None:  # carry the facts of the run that made it
        for name in ("path_taken", "fallback_reason", "pages", "original_pages",
                     "remaining_pages", "bytes_in", "dump_level_applied",
                     "levels_not_applied", "verified"):
            setattr(outcome, name, previous.get(name))
    else:  # its worker died before reporting: the counts read back
        counts = output_counts(output, Path(outcome.input),
                               tuple(Path(p) for p in outcome.parts or ()))
        outcome.original_pages = counts.original_pages
        outcome.remaining_pages = counts.remaining_pages
        outcome.dump_level_applied = counts.dump_level
    if options.dmesg:
        log = dmesg_path(output)
        if log.exists():
            outcome.dmesg = str(log)
        else:
            parts = tuple(Path(p) for p in outcome.parts or ())
            _write_dmesg(Path(outcome.input), output, outcome, parts)


def record_report(report: DumpReport, outcome: Outcome) -> None:
    outcome.path_taken = report.path_taken.value
    outcome.fallback_reason = report.fallback_reason
    outcome.pages = report.counts.as_dict()
    outcome.original_pages = report.original_pages
    outcome.remaining_pages = report.remaining_pages
    outcome.bytes_in = report.bytes_in
    outcome.dump_level_applied = report.dump_level_applied
    outcome.levels_not_applied = report.levels_not_applied
    outcome.warnings = list(report.warnings)


def _write_dmesg(input_path: Path, output_path: Path, outcome: Outcome,
                 parts: tuple[Path, ...] = ()) -> None:
    """The kernel log beside the output; its failure is noted, the dump stays done."""
    log = dmesg_path(output_path)
    partial = partial_name(log)
    try:
        # --dump-dmesg reads one file: of a split set, the dump made from it (filtering
        # never drops the log buffer, which is kernel data)
        source = output_path if parts else input_path
        outcome.warnings += [f"dmesg: {w}" for w in hooks.run_dmesg(source, partial)]
        publish(partial, log, replace=True)
    except CdbdumpError as exc:
        outcome.dmesg_error = str(exc)
        return
    finally:
        partial.unlink(missing_ok=True)
    outcome.dmesg = str(log)
