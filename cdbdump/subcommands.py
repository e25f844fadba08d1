"""``cdbdump verify`` and ``cdbdump info``: subcommands beside the makedumpfile-style form.

cli.main dispatches here when the first argument names one of them, so
``cdbdump [OPTIONS] VMCORE DUMPFILE`` keeps working unchanged.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import NoReturn

import click

from cdbdump.dumpfile import open_dump
from cdbdump.errors import CdbdumpError
from cdbdump.memory.kdump import KdumpMemory
from cdbdump.verify import verify
from cdbdump.writers.sink import check_output, write_small_output

__all__ = ("SUBCOMMANDS",)

_PATH = click.Path(path_type=Path, dir_okay=False)


@click.command("verify", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("dumpfile", type=_PATH)
@click.argument("split_parts", nargs=-1, type=_PATH)
@click.option("--source", type=_PATH, help="The vmcore the dump was made from: every dumpable "
              "page must be byte-equal to it.")
@click.option("--source-part", "source_parts", type=_PATH, multiple=True,
              help="The other files of a split set given as --source (repeatable).")
@click.option("--report-json", type=_PATH, help="Also write the result as JSON to this file "
              "(created 0600, never through a symlink; an existing one needs -f).")
@click.option("-f", "--force", is_flag=True, help="Overwrite an existing --report-json file.")
def verify_command(dumpfile: Path, split_parts: tuple[Path, ...], source: Path | None,
                   source_parts: tuple[Path, ...], report_json: Path | None,
                   force: bool) -> None:
    """Check a kdump-compressed DUMPFILE (and the rest of its split set); exit 0 if sound."""
    if source_parts and source is None:
        _fail("--source-part needs --source")
    inputs = [dumpfile, *split_parts, *([source] if source else []), *source_parts]
    try:
        if report_json is not None:  # refused before the pages are read
            check_output(report_json, force, inputs=inputs)
    except CdbdumpError as exc:
        _fail(str(exc))
    result = verify(dumpfile, *split_parts, source=source, source_parts=source_parts)
    click.echo(f"cdbdump verify: {result.verdict()}")
    if report_json is not None:
        data = (json.dumps(result.as_json(), indent=2) + "\n").encode()
        try:
            write_small_output(report_json, data, force, inputs=inputs)
        except CdbdumpError as exc:
            _fail(f"cannot write the JSON report: {exc}")
    sys.exit(0 if result.ok else 1)


def _fail(message: str) -> NoReturn:
    click.echo(f"cdbdump: error: {message}", err=True)
    sys.exit(1)


@click.command("info", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("dumpfile", type=_PATH)
@click.argument("split_parts", nargs=-1, type=_PATH)
def info_command(dumpfile: Path, split_parts: tuple[Path, ...]) -> None:
    """Print what the headers of DUMPFILE say and its pages per class."""
    try:
        with open_dump(dumpfile, *split_parts) as dump:
            facts = dump.facts
            for name in ("format", "nr_files", "page_size", "max_mapnr", "dump_level", "codec",
                         "incomplete", "header_version", "timestamp_sec", "phys_base"):
                value = getattr(facts, name)
                if value is not None:
                    click.echo(f"{name:<16}: {value:#x}" if name in ("max_mapnr", "phys_base")
                               else f"{name:<16}: {value}")
            for key, value in (facts.utsname or {}).items():
                click.echo(f"utsname.{key:<8}: {value}")
            info = dump.vmcoreinfo
            if info is not None:
                click.echo(f"{'OSRELEASE':<16}: {info.osrelease}")
                click.echo(f"{'PAGESIZE':<16}: {info.page_size}")
                click.echo(f"{'CRASHTIME':<16}: {info.crashtime}")
            present = sum(hi - lo for lo, hi in dump.present_pfn_runs())
            dumpable = sum(hi - lo for lo, hi in dump.dumpable_pfn_runs())
            click.echo(f"{'present pages':<16}: {present}")
            click.echo(f"{'dumpable pages':<16}: {dumpable}")
            click.echo(f"{'excluded pages':<16}: {present - dumpable}")
            click.echo(f"{'memory holes':<16}: {facts.max_mapnr - present}")
            if isinstance(dump.memory, KdumpMemory):
                zero = sum(p.nr_zero_descs() for p in dump.memory.parts)
                click.echo(f"{'zero pages kept':<16}: {zero}")
    except CdbdumpError as exc:
        click.echo(f"cdbdump: error: {exc}", err=True)
        sys.exit(1)


SUBCOMMANDS = {"verify": verify_command, "info": info_command}
