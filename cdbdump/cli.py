"""The command line: a thin click layer over cdbdump.pipeline.

Spelled like makedumpfile (-q -d -c -l -p -z -f -E -F -R --split --reassemble
--message-level --show-stats -D -v), with its report lines and exit codes, so
kdump.conf core_collector lines and scripts that scrape the report keep working.

One rule for text: every message, the report and progress go to stderr (as
makedumpfile does with -F, flag_strerr_message), so stdout only ever carries
data: the -F stream, and the text products of --mem-usage and -v.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

import cdbdump.blas  # noqa: F401  (before numpy: one OpenBLAS thread)
from cdbdump import __version__, interrupts
from cdbdump.codecs import Codec
from cdbdump.deliver import STDOUT_NAME
from cdbdump.errors import CdbdumpError, IncompleteDumpError, Interrupted
from cdbdump.mm.levels import MAX_DUMP_LEVEL, DumpLevel
from cdbdump.pipeline import (
    DmesgOptions,
    DumpOptions,
    dump,
    dump_dmesg,
    mem_usage,
    rearrange_stream,
    reassemble_files,
)
from cdbdump.report import DumpReport, PathTaken, print_mem_usage, print_report
from cdbdump.writers.sink import check_output, write_small_output

__all__ = ("main",)

# --message-level bits (makedumpfile print_info.h ML_PRINT_*)
ML_PROGRESS = 1
ML_COMMON = 2
ML_ERROR = 4
ML_DEBUG = 8
ML_REPORT = 16
DEFAULT_MESSAGE_LEVEL = ML_PROGRESS | ML_COMMON | ML_ERROR

EXIT_COMPLETED = 0
EXIT_FAILED = 1


def _version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from cdbdump.writers.compress import native_codecs

    click.echo(f"cdbdump: version {__version__}")
    for codec in Codec:
        if codec is not Codec.NONE:
            state = "enabled" if codec.available else "disabled"
            native = " (native)" if codec.available and codec in native_codecs() else ""
            click.echo(f"  {codec.label}\t{state}{native}")
    ctx.exit(EXIT_COMPLETED)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("vmcore", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("dumpfile", type=click.Path(path_type=Path, dir_okay=False), required=False)
@click.argument("more_files", nargs=-1, type=click.Path(path_type=Path, dir_okay=False))
@click.option("-q", "use_kernel_bitmap", is_flag=True,
              help="Use the kernel's crash dump bitmap (crash_dump_bitmap_info); "
              "falls back to the mem_map scan when it is unusable.")
@click.option("-d", "dump_level", type=click.IntRange(0, MAX_DUMP_LEVEL), default=0,
              show_default=True,
              help="Dump level: OR of 1 zero, 2 cache, 4 cache private, 8 user, 16 free pages.")
@click.option("-c", "codec", flag_value=Codec.ZLIB.value, help="Compress pages with zlib.")
@click.option("-l", "codec", flag_value=Codec.LZO.value, help="Compress pages with LZO.")
@click.option("-p", "codec", flag_value=Codec.SNAPPY.value, help="Compress pages with snappy.")
@click.option("-z", "codec", flag_value=Codec.ZSTD.value, default=True,
              help="Compress pages with zstd (the default).")
@click.option("--no-compress", "codec", flag_value=Codec.NONE.value,
              help="Store pages uncompressed.")
@click.option("-f", "force", is_flag=True, help="Overwrite an existing DUMPFILE.")
@click.option("--num-threads", "num_threads", type=click.IntRange(0, 256), default=None,
              help="Threads compressing pages (default: every usable core; 0 or 1: one). "
              "The output is the same whatever the number.")
@click.option("--cyclic-buffer", "cyclic_buffer", type=click.IntRange(1, 1 << 30), default=None,
              help="KiB of bitmap handled per window (8192 pfns per KiB) by the mem_map scan "
              "and the page writer. The output is the same whatever the size; given at all, "
              "a memory range's partial last page is left out, as makedumpfile's cyclic "
              "mode does.")
@click.option("-E", "elf", is_flag=True, help="Write an ELF dump (makedumpfile -E) instead.")
@click.option("-F", "flatten", count=True,
              help="Write the dump as a flattened stream to stdout (VMCORE only); with "
              "--dump-dmesg, the log.")
@click.option("-R", "rearrange_stdin", is_flag=True,
              help="Rebuild DUMPFILE from a flattened stream on stdin.")
@click.option("--split", "split", is_flag=True,
              help="Write VMCORE into DUMPFILE1 DUMPFILE2 ... (pfn ranges, concurrently).")
@click.option("--splitblock-size", "splitblock_kib", type=click.IntRange(min=1),
              help="--split balances whole blocks of this many KiB (default: 1 GiB, as "
              "makedumpfile).")
@click.option("--reassemble", "reassemble_files", is_flag=True,
              help="Join the --split files DUMPFILE1 ... into the last file named.")
@click.option("--message-level", type=click.IntRange(0, 31), default=DEFAULT_MESSAGE_LEVEL,
              show_default=True,
              help="Bits: 1 progress, 2 common, 4 error, 8 debug, 16 report.")
@click.option("--show-stats", is_flag=True, help="Print the report (message level bit 16).")
@click.option("--report-json", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write the report as JSON to this file.")
@click.option("--mem-usage", is_flag=True,
              help="Print the pages per class of VMCORE (a vmcore or /proc/kcore) and exit.")
@click.option("--split-part", "split_parts", multiple=True,
              type=click.Path(path_type=Path, dir_okay=False),
              help="Another file of a split (makedumpfile --split) input; VMCORE is the first.")
@click.option("--dump-dmesg", "dump_dmesg_mode", is_flag=True,
              help="Write the kernel log of VMCORE to DUMPFILE (a text file), as "
              "makedumpfile --dump-dmesg does.")
@click.option("-D", "debug", is_flag=True, help="Debug messages, tracebacks on errors.")
@click.option("-v", "--version", is_flag=True, expose_value=False, is_eager=True,
              callback=_version, help="Print the version and the codecs available.")
def command(
    *,
    vmcore: Path,
    dumpfile: Path | None,
    more_files: tuple[Path, ...],
    use_kernel_bitmap: bool,
    dump_level: int,
    codec: str,
    force: bool,
    num_threads: int | None,
    cyclic_buffer: int | None,
    elf: bool,
    flatten: int,
    rearrange_stdin: bool,
    split: bool,
    splitblock_kib: int | None,
    reassemble_files: bool,
    message_level: int,
    show_stats: bool,
    report_json: Path | None,
    mem_usage: bool,
    split_parts: tuple[Path, ...],
    dump_dmesg_mode: bool,
    debug: bool,
) -> None:
    """Filter and compress the crash dump VMCORE into the kdump-compressed DUMPFILE.

    \b
    cdbdump [OPTIONS] VMCORE DUMPFILE             kdump-compressed (or ELF with -E) file
    cdbdump -F [OPTIONS] VMCORE > STREAM          flattened stream on stdout
    cdbdump -R DUMPFILE < STREAM                  a flattened stream back into a file
    cdbdump --split [OPTIONS] VMCORE DUMPFILE...  one dump in pfn ranges, written at once
    cdbdump --reassemble DUMPFILE... DUMPFILE     split files joined into the last one
    """
    if show_stats:
        message_level |= ML_REPORT
    if debug:
        message_level |= ML_DEBUG
    ui = _Messages(message_level)
    files = [vmcore, *([dumpfile] if dumpfile is not None else []), *more_files]
    if dump_dmesg_mode:
        if mem_usage:
            raise click.UsageError("--dump-dmesg and --mem-usage exclude each other")
        if more_files or bool(flatten) == (dumpfile is not None):
            raise click.UsageError("--dump-dmesg takes VMCORE LOGFILE, or -F and VMCORE only")
        _run_dump_dmesg(DmesgOptions(vmcore, dumpfile, force=force), ui, debug)
        return
    if mem_usage:
        if len(files) != 1:
            raise click.UsageError("--mem-usage takes only VMCORE")
        _run_mem_usage(vmcore, ui, debug)
        return
    ctx = click.get_current_context()
    _check_modes(ctx, files, elf=elf, flatten=bool(flatten), rearrange=rearrange_stdin,
                 split=split, reassemble=reassemble_files)
    if rearrange_stdin:
        _run_rearrange(vmcore, force, ui, debug)
        return
    if reassemble_files:
        _run_reassemble(files[:-1], files[-1], force, ui, debug)
        return
    options = DumpOptions(
        vmcore=vmcore,
        dumpfile=None if flatten else dumpfile,
        dump_level=DumpLevel(dump_level),
        codec=Codec(codec),
        use_kernel_bitmap=use_kernel_bitmap,
        force=force,
        split_parts=split_parts,
        elf=elf,
        split_files=tuple(files[1:]) if split else (),
        splitblock_bytes=None if splitblock_kib is None else splitblock_kib << 10,
        threads=None if num_threads is None else max(1, num_threads),
        cyclic_buffer_kib=cyclic_buffer,
    )
    interrupts.install()  # SIGTERM/SIGINT/SIGHUP: keep what is written, flag it INCOMPLETE
    json_inputs = [vmcore, *options.split_parts, *([dumpfile] if dumpfile else []),
                   *options.split_files]
    try:
        if report_json is not None:  # refused before any memory is read
            check_output(report_json, force, inputs=json_inputs)
        with _ProgressBar(ui) as progress:
            report = dump(options, progress)
    except IncompleteDumpError as exc:
        if isinstance(exc.report, DumpReport):
            _render(exc.report, ui)
            if report_json is not None:
                _write_json(report_json, exc.report, force, json_inputs, ui)
        ui.error(str(exc))
        ui.common("This is an incomplete dumpfile, but might be analyzable.")
        sys.exit(_signal_exit(exc.signum) if exc.signum is not None else EXIT_FAILED)
    except CdbdumpError as exc:
        if debug:
            traceback.print_exc()
        ui.error(str(exc))
        sys.exit(EXIT_FAILED)
    except Interrupted as exc:
        ui.error(f"interrupted by {signal.Signals(exc.signum).name} before any page was "
                 "written; no dump file was left")
        sys.exit(_signal_exit(exc.signum))
    _render(report, ui)
    if report_json is not None:
        _write_json(report_json, report, force, json_inputs, ui)
    ui.common("")
    if options.split_files:
        names = [str(p) for p in options.split_files]
        ui.common(f"The dumpfiles are saved to {', '.join(names[:-1])}, and {names[-1]}.")
    else:
        ui.common(f"The dumpfile is saved to {options.dumpfile or STDOUT_NAME}.")
    ui.common("cdbdump Completed.")


def _check_modes(ctx: click.Context, files: list[Path], *, elf: bool, flatten: bool,
                 rearrange: bool, split: bool, reassemble: bool) -> None:
    """makedumpfile's check_param_for_*: which options and how many files go together."""
    codec_given = ctx.get_parameter_source("codec") is not click.core.ParameterSource.DEFAULT
    if sum((flatten, rearrange, split, reassemble)) > 1:
        raise click.UsageError("-F, -R, --split and --reassemble exclude each other")
    if elf and codec_given:
        raise click.UsageError("-E writes an uncompressed ELF dump: drop -c/-l/-p/-z")
    if rearrange or reassemble:
        if elf or codec_given or ctx.get_parameter_source("dump_level") is not (
                click.core.ParameterSource.DEFAULT):
            raise click.UsageError("-R and --reassemble take no -E, -d or compression option")
    if rearrange and len(files) != 1:
        raise click.UsageError("-R takes one DUMPFILE (the stream comes on stdin)")
    if flatten and len(files) != 1:
        raise click.UsageError("-F takes only VMCORE (the stream goes to stdout)")
    if split:
        if elf:
            raise click.UsageError("--split writes kdump-compressed files: drop -E")
        if len(files) < 3:
            raise click.UsageError("--split needs VMCORE and at least two DUMPFILEs")
    if reassemble and len(files) < 3:
        raise click.UsageError("--reassemble needs at least two split files and DUMPFILE")
    if not (flatten or rearrange or split or reassemble) and len(files) != 2:
        raise click.UsageError("expected VMCORE and DUMPFILE" if len(files) < 2
                               else f"unexpected extra argument {files[2]}")
    if flatten and os.isatty(1):
        raise click.UsageError("-F writes binary data to stdout, which is a terminal: "
                               "redirect or pipe it")


def _run_rearrange(dumpfile: Path, force: bool, ui: _Messages, debug: bool) -> None:
    """-R: the flattened stream on stdin becomes DUMPFILE."""
    try:
        result = rearrange_stream(dumpfile, force)
    except CdbdumpError as exc:
        if debug:
            traceback.print_exc()
        ui.error(str(exc))
        sys.exit(EXIT_FAILED)
    ui.report(f"Records: {result.nr_records}, stream bytes: {result.stream_bytes}, "
              f"file size: {result.file_size}")
    ui.common("")
    ui.common(f"The dumpfile is saved to {dumpfile}.")
    ui.common("cdbdump Completed.")


def _run_reassemble(pieces: list[Path], dumpfile: Path, force: bool, ui: _Messages,
                    debug: bool) -> None:
    """--reassemble: the split files become one kdump-compressed DUMPFILE."""
    try:
        result = reassemble_files(pieces, dumpfile, force)
    except CdbdumpError as exc:
        if debug:
            traceback.print_exc()
        ui.error(str(exc))
        sys.exit(EXIT_FAILED)
    if result.incomplete:
        ui.error(f"{dumpfile}: a split file was incomplete ({result.nr_lost} pages lost); "
                 "so is the reassembled dump")
        ui.common("This is an incomplete dumpfile, but might be analyzable.")
        sys.exit(EXIT_FAILED)
    ui.common("")
    ui.common(f"The dumpfile is saved to {dumpfile}.")
    ui.common("cdbdump Completed.")


def _signal_exit(signum: int) -> int:
    return 128 + signum  # the shell's convention: 143 SIGTERM, 130 SIGINT, 129 SIGHUP


def _write_json(path: Path, report: DumpReport, force: bool, inputs: list[Path],
                ui: _Messages) -> None:
    """The JSON report, created like the dump: 0600, O_EXCL, never through a symlink."""
    import json  # only with --report-json

    data = (json.dumps(report.as_json(), indent=2) + "\n").encode()
    try:
        write_small_output(path, data, force, inputs=inputs)
    except CdbdumpError as exc:
        ui.error(f"cannot write the JSON report: {exc}")
        sys.exit(EXIT_FAILED)


def _run_mem_usage(vmcore: Path, ui: _Messages, debug: bool) -> None:
    try:
        with _ProgressBar(ui) as progress:
            usage, page_size = mem_usage(vmcore, progress)
    except CdbdumpError as exc:
        if debug:
            traceback.print_exc()
        ui.error(str(exc))
        sys.exit(EXIT_FAILED)
    print_mem_usage(usage, page_size, click.echo)


def _run_dump_dmesg(options: DmesgOptions, ui: _Messages, debug: bool) -> None:
    try:
        result = dump_dmesg(options, sys.stdout.buffer)
    except CdbdumpError as exc:
        if debug:
            traceback.print_exc()
        ui.error(str(exc))
        sys.exit(EXIT_FAILED)
    for warning in result.log.warnings:
        ui.warning(warning)
    ui.common(f"The dmesg log is saved to {options.logfile or 'STDOUT'}.")
    ui.common("cdbdump Completed.")


class _Messages:
    """makedumpfile's message classes, gated by --message-level."""

    def __init__(self, level: int) -> None:
        self.level = level  # every message goes to stderr: stdout carries only data

    def common(self, text: str) -> None:
        if self.level & ML_COMMON:
            click.echo(text, err=True)

    def error(self, text: str) -> None:
        # errors are always shown: the exit code alone does not say what went wrong
        click.echo(f"cdbdump: error: {text}", err=True)

    def warning(self, text: str) -> None:
        if self.level & ML_ERROR:
            click.echo(f"cdbdump: warning: {text}", err=True)

    def notice(self, text: str) -> None:
        if self.level & ML_ERROR:
            click.echo(f"cdbdump: {text}", err=True)

    def report(self, text: str) -> None:
        if self.level & ML_REPORT:
            click.echo(text, err=True)

    @property
    def progress(self) -> bool:
        return bool(self.level & ML_PROGRESS) and sys.stderr.isatty()


class _ProgressBar:
    """tqdm on stderr when it is a terminal; nothing at all otherwise."""

    def __init__(self, ui: _Messages) -> None:
        self.ui = ui
        self.bars: dict[str, Any] = {}

    def __enter__(self) -> Callable[[str, int, int], None] | None:
        if not self.ui.progress:
            return None
        from tqdm import tqdm  # only the CLI imports tqdm

        style = _bar_style()

        def update(step: str, done: int, total: int) -> None:
            bar = self.bars.get(step)
            if bar is None:
                bar = self.bars[step] = tqdm(total=total, desc=f"{step:<28}", unit="page",
                                             unit_scale=True, leave=False, file=sys.stderr,
                                             mininterval=0.1, **style)
            bar.update(done - bar.n)  # tqdm redraws at most every mininterval

        return update

    def __exit__(self, *exc: object) -> None:
        for bar in self.bars.values():
            bar.close()


def _bar_style() -> dict[str, Any]:
    """ASCII bars where the console cannot show tqdm's blocks (a Linux VT, a non-UTF-8
    locale), and a sane width where the terminal reports 0 columns (serial consoles)."""
    encoding = (getattr(sys.stderr, "encoding", None) or "").lower().replace("-", "")
    plain = encoding != "utf8" or os.environ.get("TERM", "") in ("linux", "vt100", "vt220", "dumb")
    import shutil  # only when the bar is drawn

    columns = shutil.get_terminal_size((0, 0)).columns
    return {"ascii": plain, "ncols": columns if columns >= 40 else 80}


def _render(report: DumpReport, ui: _Messages) -> None:
    for warning in report.warnings:
        ui.warning(warning)
    if report.path_taken is PathTaken.FALLBACK:
        ui.notice(f"kernel crash dump bitmap not used: {report.fallback_reason}; "
                  "falling back to the mem_map scan")
    elif report.path_taken is PathTaken.BITMAP and report.kernel_bitmap is not None:
        kb = report.kernel_bitmap
        ui.common(
            f"crash_dump_bitmap: bitmap={kb['bitmap']:#x}, bitmap_size={kb['bitmap_size']}, "
            f"cache_pages={kb['cache_pages']:#x}, cache_private_pages="
            f"{kb['cache_private_pages']:#x}, user_pages={kb['user_pages']:#x}, "
            f"free_pages={kb['free_pages']:#x}, hwpoison_pages={kb['hwpoison_pages']:#x}"
        )
    if report.levels_not_applied:
        ui.warning(report.levels_not_applied)
    for lost in report.unreadable_pages:
        ui.warning(f"pfn {lost['pfn']:#x} not dumped: input unreadable at file offset "
                   f"{lost['file_offset']:#x}: {lost['error']}")
    if report.pages_unreadable > len(report.unreadable_pages):
        ui.warning(f"... {report.pages_unreadable - len(report.unreadable_pages)} more "
                   "unreadable pages not listed")

    for step, seconds in report.timings.items():
        ui.report(f"STEP [{step:<27}] : {seconds:.6f} seconds")
    print_report(report, ui.report)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the cdbdump command.

    Under the name ``makedumpfile`` (a link the administrator makes) or with
    ``--as-makedumpfile`` first, the command line is makedumpfile's;
    ``cdbdump verify|info ...`` run the subcommands.
    """
    args = sys.argv[1:] if argv is None else argv
    if Path(sys.argv[0]).name == "makedumpfile" or args[:1] == ["--as-makedumpfile"]:
        from cdbdump.mdcli import main as makedumpfile_main

        sys.exit(makedumpfile_main(args[1:] if args[:1] == ["--as-makedumpfile"] else args))
    if args[:1] in (["verify"], ["info"]):  # a vmcore named verify or info: ./verify
        from cdbdump.subcommands import SUBCOMMANDS

        SUBCOMMANDS[args[0]].main(args=args[1:], prog_name=f"cdbdump {args[0]}",
                                  standalone_mode=True)
        return
    if args[:1] == ["batch"]:  # `cdbdump batch ...`; a vmcore named batch: ./batch
        from cdbdump.batch.cli import main as batch_main

        batch_main(args[1:])
        return
    command.main(args=args, prog_name="cdbdump", standalone_mode=True)
