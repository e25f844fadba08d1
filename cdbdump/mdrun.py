"""What the ``makedumpfile`` personality runs: each of makedumpfile main()'s
branches over cdbdump's library, with makedumpfile's messages and exit codes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cdbdump.deliver import STDOUT_NAME
from cdbdump.errors import CdbdumpError, IncompleteDumpError
from cdbdump.mdopts import ML_DEBUG, Invocation, Mode
from cdbdump.mm.levels import DumpLevel
from cdbdump.pipeline import (
    DmesgOptions,
    DumpOptions,
    dump,
    dump_dmesg,
    mem_usage,
    rearrange_stream,
    reassemble_files,
)
from cdbdump.report import DumpReport, ProgressCallback, print_mem_usage, print_report

if TYPE_CHECKING:
    from cdbdump.mdcli import Messages

from cdbdump.mdcli import STEP_NAMES

__all__ = ("run",)

EXIT_COMPLETED = 0
EXIT_FAILED = 1


def run(inv: Invocation, messages: Messages, progress: ProgressCallback) -> int:
    """Run one parsed command line; return makedumpfile's exit code."""
    try:
        if messages.level & ML_DEBUG and inv.vmcore is not None:
            _debug_vmcoreinfo(Path(inv.vmcore), messages)
        if inv.mode is Mode.DMESG:
            return _dmesg(inv, messages)
        if inv.mode is Mode.MEM_USAGE:
            return _mem_usage(inv, messages, progress)
        if inv.mode is Mode.REARRANGE:
            return _rearrange(inv, messages)
        if inv.mode is Mode.REASSEMBLE:
            return _reassemble(inv, messages)
        return _dump(inv, messages, progress)
    except CdbdumpError as exc:
        messages.error(str(exc))
        return _failed(messages)


def _failed(messages: Messages) -> int:
    messages.msg("")
    messages.msg("makedumpfile Failed.")
    return EXIT_FAILED


def _dump(inv: Invocation, messages: Messages, progress: ProgressCallback) -> int:
    assert inv.vmcore is not None
    for attempt, level in enumerate(inv.dump_levels):
        options = DumpOptions(
            vmcore=Path(inv.vmcore),
            dumpfile=Path(inv.dumpfile) if inv.dumpfile is not None else None,
            dump_level=DumpLevel(level),
            codec=inv.codec,
            use_kernel_bitmap=inv.use_kernel_bitmap,
            force=inv.force or attempt > 0,  # a retry rewrites its own incomplete file
            elf=inv.elf,
            split_files=tuple(Path(name) for name in inv.dumpfiles),
            splitblock_bytes=None if inv.splitblock_kib is None else inv.splitblock_kib << 10,
            size_limit=inv.size_limit,
            threads=max(1, inv.num_threads) if inv.num_threads else None,
            cyclic_buffer_kib=inv.cyclic_buffer_kib,
            one_cycle=inv.one_cycle,
        )
        try:
            report = dump(options, progress)
        except IncompleteDumpError as exc:
            if isinstance(exc.report, DumpReport):
                _render(exc.report, messages)
            if attempt + 1 < len(inv.dump_levels):
                # makedumpfile create_dumpfile: "-d 31,11" deletes the incomplete
                # file and retries at the next level when the output fills up
                messages.msg(f"Retry to create a dumpfile by dump_level("
                             f"{inv.dump_levels[attempt + 1]}).")
                continue
            messages.error(str(exc))
            messages.msg("This is an incomplete dumpfile, but might analyzable.")
            return _failed(messages)
        _render(report, messages)
        messages.msg("")
        if inv.dumpfiles:
            messages.msg(f"The dumpfiles are saved to {', '.join(inv.dumpfiles[:-1])}, "
                         f"and {inv.dumpfiles[-1]}.")
        else:
            messages.msg(f"The dumpfile is saved to {inv.dumpfile or STDOUT_NAME}.")
        return _completed(messages)
    return _failed(messages)


def _completed(messages: Messages) -> int:
    messages.msg("")
    messages.msg("makedumpfile Completed.")
    return EXIT_COMPLETED


def _rearrange(inv: Invocation, messages: Messages) -> int:
    """makedumpfile -R: stdin's flattened stream into DUMPFILE."""
    assert inv.dumpfile is not None
    rearrange_stream(Path(inv.dumpfile), inv.force)
    messages.msg("")
    messages.msg(f"The dumpfile is saved to {inv.dumpfile}.")
    return _completed(messages)


def _reassemble(inv: Invocation, messages: Messages) -> int:
    """makedumpfile --reassemble: the split files into one DUMPFILE."""
    assert inv.dumpfile is not None
    result = reassemble_files([Path(name) for name in inv.dumpfiles], Path(inv.dumpfile),
                              inv.force)
    if result.incomplete:
        messages.error(f"a split file was incomplete ({result.nr_lost} pages lost)")
        messages.msg("This is an incomplete dumpfile, but might analyzable.")
        return _failed(messages)
    messages.msg("")
    messages.msg(f"The dumpfile is saved to {inv.dumpfile}.")
    return _completed(messages)


def _render(report: DumpReport, messages: Messages) -> None:
    for warning in report.warnings:
        messages.error(warning)
    if report.fallback_reason:
        messages.error(f"kernel crash dump bitmap not used: {report.fallback_reason}")
    for step, seconds in report.timings.items():
        if step in STEP_NAMES:
            messages.report(f"STEP [{STEP_NAMES[step]:<27}] : {seconds:.6f} seconds")
    print_report(report, messages.report)


def _mem_usage(inv: Invocation, messages: Messages, progress: ProgressCallback) -> int:
    assert inv.vmcore is not None
    usage, page_size = mem_usage(Path(inv.vmcore), progress)
    print_mem_usage(usage, page_size, messages.msg)
    return _completed(messages)


def _debug_vmcoreinfo(vmcore: Path, messages: Messages) -> None:
    """makedumpfile read_vmcoreinfo_from_vmcore's debug dump: "VMCOREINFO   :" and
    every line indented by two blanks (SUSE's kdump-save scrapes OSRELEASE= and
    CRASHTIME= from it)."""
    from cdbdump.fileio import MappedFile
    from cdbdump.vmcore.elfcore import ElfCore

    with MappedFile(vmcore) as file:
        info = ElfCore.parse(file).vmcoreinfo
    if info is None:
        return
    messages.debug("VMCOREINFO   :")
    text = info.raw.split(b"\0", 1)[0].decode("ascii", "replace")
    for line in text.splitlines():
        if line:
            messages.debug(f"  {line}")
    messages.debug("")


def _dmesg(inv: Invocation, messages: Messages) -> int:
    """makedumpfile dump_dmesg: LOGFILE, or stdout with -F (open_dump_file's STDOUT)."""
    assert inv.vmcore is not None
    logfile = Path(inv.dumpfile) if inv.dumpfile is not None else None
    result = dump_dmesg(DmesgOptions(Path(inv.vmcore), logfile, force=inv.force),
                        sys.stdout.buffer)
    for warning in result.log.warnings:
        messages.error(warning)
    messages.msg("")
    messages.msg(f"The dmesg log is saved to {inv.dumpfile or STDOUT_NAME}.")
    return _completed(messages)
