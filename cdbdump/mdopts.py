"""makedumpfile's command line, parsed as makedumpfile parses it.

Distribution kdump scripts call the collector by the name ``makedumpfile`` and
build its command line themselves (kdump-utils ``kdump.sh``, kdump-tools
``kdump-config``, SUSE ``kdump-save``). This module turns such a command line
into an :class:`Invocation`: getopt_long with makedumpfile's option string and
``longopts`` table (GNU permutation, ``--opt=value``, unique prefixes), atoi
for numbers, and the arity rules of makedumpfile's ``check_param_for_*``
functions. It does no I/O, so ``--check-params`` is this module alone.

Every option of makedumpfile 1.7.x is in :data:`OPTIONS` with what cdbdump does
with it; the README's option table is checked against it.
"""

from __future__ import annotations

import enum
import getopt
import re
from dataclasses import dataclass, field

from cdbdump.codecs import Codec
from cdbdump.mm.levels import MAX_DUMP_LEVEL

__all__ = (
    "OPTIONS",
    "Effect",
    "Invocation",
    "Mode",
    "OptionSpec",
    "ParamError",
    "atoi",
    "options_table",
    "parse",
)

# print_info.h: ML_PRINT_*; makedumpfile.h DEFAULT_MSG_LEVEL, MAX_MSG_LEVEL
ML_PROGRESS = 0x01
ML_COMMON = 0x02
ML_ERROR = 0x04
ML_DEBUG = 0x08
ML_REPORT = 0x10
DEFAULT_MSG_LEVEL = ML_PROGRESS | ML_COMMON | ML_ERROR
MAX_MSG_LEVEL = 31
NUM_ARRAY_DUMP_LEVEL = 32  # makedumpfile.h: how many -d retry levels it keeps

INVALID = "Commandline parameter is invalid."
TRY_HELP = "Try `makedumpfile --help' for more information."


class Effect(enum.Enum):
    """What cdbdump does with a makedumpfile option."""

    IMPLEMENTED = "implemented"
    NO_EFFECT = "accepted, no effect"  # one notice on stderr says why
    REFUSED = "refused"  # one line naming the option, exit 1


@dataclass(frozen=True, slots=True)
class OptionSpec:
    """One row of makedumpfile's option table (getopt string + ``longopts``)."""

    short: str | None  # "d" for -d
    long: str | None  # "message-level" for --message-level
    takes_arg: bool
    effect: Effect
    why: str  # README text; for NO_EFFECT and REFUSED also the notice

    @property
    def name(self) -> str:
        return f"--{self.long}" if self.long else f"-{self.short}"


def _opt(short: str | None, long: str | None, arg: bool, effect: Effect, why: str) -> OptionSpec:
    return OptionSpec(short, long, arg, effect, why)


_I, _N, _R = Effect.IMPLEMENTED, Effect.NO_EFFECT, Effect.REFUSED

# makedumpfile.c main(): getopt string "b:cDd:eEFfg:hi:lL:pRvXx:z" and longopts[]
# (1.7.9), plus --num-buffers, which older kdump configurations still pass.
OPTIONS: tuple[OptionSpec, ...] = (
    _opt("c", None, False, _I, "zlib per page"),
    _opt("l", None, False, _I, "LZO per page"),
    _opt("p", None, False, _I, "snappy per page"),
    _opt("z", None, False, _I, "zstd per page"),
    _opt("d", None, True, _I,
         "dump level; a list (`-d 31,11`) retries at the next level on ENOSPC"),
    _opt("E", None, False, _I, "ELF output"),
    _opt("F", None, False, _I, "flattened output on stdout, all text on stderr; may be repeated"),
    _opt("R", None, False, _I, "rebuild a dump file from a flattened stream on stdin"),
    _opt("f", None, False, _I, "overwrite an existing output"),
    _opt("D", None, False, _I, "debug messages (message level bit 8)"),
    _opt("h", "help", False, _I, "usage"),
    _opt("v", None, False, _I, "version line and codecs, as makedumpfile prints them"),
    _opt(None, "split", False, _I, "several dump files by pfn ranges of equal kept pages"),
    _opt(None, "reassemble", False, _I, "join split dump files"),
    _opt(None, "dump-dmesg", False, _I, "the kernel log (lockless ring buffer and log_buf)"),
    _opt(None, "message-level", True, _I, "bits 1 progress, 2 common, 4 error, 8 debug, 16 report"),
    _opt(None, "show-stats", False, _I, "report (message level bit 16)"),
    _opt(None, "mem-usage", False, _I, "pages per class of a vmcore or /proc/kcore"),
    _opt(None, "check-params", False, _I, "validate the command line only, no I/O"),
    _opt(None, "num-threads", True, _I, "compression threads (without it: every core; "
         "the output is the same bytes whatever the number)"),
    _opt(None, "cyclic-buffer", True, _I, "KiB of bitmap per window of the scan and the writer"),
    _opt("L", None, True, _I, "output size limit (K, M, G suffixes); reached, it is ENOSPC"),
    _opt(None, "splitblock-size", True, _I, "KiB per block that --split balances (default 1 GiB)"),
    _opt("b", None, True, _N, "page cache order; cdbdump sizes its own windows"),
    _opt(None, "work-dir", True, _I, "no bitmap files are kept, but the dump is done as "
         "makedumpfile's one cycle: a PT_LOAD's partial last page is kept"),
    _opt(None, "non-mmap", False, _N, "cdbdump falls back to read(2) by itself"),
    _opt(None, "num-buffers", True, _N,
         "an option of older makedumpfile; cdbdump has no such buffers"),
    _opt("e", None, False, _N,
         "struct pages of excluded frames are kept; the dump is complete without them"),
    _opt(None, "partial-dmesg", False, _R, "not implemented: the whole log is always written"),
    _opt("x", None, True, _R, "no DWARF reader: cdbdump uses VMCOREINFO only"),
    _opt("g", None, True, _R, "generating VMCOREINFO needs DWARF from vmlinux"),
    _opt("i", None, True, _R, "cdbdump reads VMCOREINFO from the dump itself"),
    _opt(None, "config", True, _R, "erase filtering needs DWARF from vmlinux"),
    _opt(None, "eppic", True, _R, "eppic erase scripts need DWARF from vmlinux"),
    _opt(None, "extension", True, _R, "no extension plugins"),
    _opt(None, "vtop", True, _R, "not implemented"),
    _opt(None, "dry-run", False, _R, "not implemented: cdbdump always writes its output"),
    _opt(None, "diskset", True, _R, "sadump inputs are not supported"),
    _opt("X", None, False, _R, "Xen dumps are not supported"),
    _opt(None, "xen-syms", True, _R, "Xen dumps are not supported"),
    _opt(None, "xen-vmcoreinfo", True, _R, "Xen dumps are not supported"),
    _opt(None, "xen_phys_start", True, _R, "Xen dumps are not supported"),
)

# cdbdump's own -q (the kernel's crash dump bitmap) is accepted by the personality
# too: it is the one thing makedumpfile cannot do, and it falls back by itself.
_Q = _opt("q", None, False, _I, "cdbdump: use the kernel's crash dump bitmap")

_BY_SHORT = {o.short: o for o in (*OPTIONS, _Q) if o.short}
_BY_LONG = {o.long: o for o in OPTIONS if o.long}
_SHORTS = "".join(o.short + (":" if o.takes_arg else "") for o in (*OPTIONS, _Q) if o.short)
_LONGS = [o.long + ("=" if o.takes_arg else "") for o in OPTIONS if o.long]

_CODECS = {"c": Codec.ZLIB, "l": Codec.LZO, "p": Codec.SNAPPY, "z": Codec.ZSTD}


class Mode(enum.Enum):
    """makedumpfile main()'s branches, in the order it tests them."""

    HELP = "help"
    VERSION = "version"
    REARRANGE = "rearrange"  # -R
    REASSEMBLE = "reassemble"
    DMESG = "dmesg"
    MEM_USAGE = "mem-usage"
    DUMP = "dump"  # one file, flattened to stdout with -F, several with --split


class ParamError(ValueError):
    """The command line is invalid; ``lines`` are what makedumpfile prints."""

    def __init__(self, *lines: str) -> None:
        super().__init__(lines[0] if lines else INVALID)
        self.lines = lines
        self.invocation: Invocation | None = None  # what parse() had parsed, if it got there


@dataclass(slots=True)
class Invocation:
    """A parsed makedumpfile command line."""

    mode: Mode = Mode.DUMP
    vmcore: str | None = None
    dumpfile: str | None = None  # also LOGFILE for --dump-dmesg, the target of -R
    dumpfiles: list[str] = field(default_factory=list)  # --split outputs, --reassemble inputs
    codec: Codec = Codec.NONE  # makedumpfile writes pages uncompressed without -c/-l/-p/-z
    dump_levels: list[int] = field(default_factory=lambda: [0])
    message_level: int = DEFAULT_MSG_LEVEL
    flatten: bool = False
    elf: bool = False
    force: bool = False
    split: bool = False
    check_params: bool = False
    dry_run: bool = False
    use_kernel_bitmap: bool = False
    num_threads: int = 0
    size_limit: int | None = None  # -L
    cyclic_buffer_kib: int | None = None  # --cyclic-buffer
    one_cycle: bool = False  # --work-dir: makedumpfile's bitmaps in a file, in one cycle
    splitblock_kib: int | None = None  # --splitblock-size
    notices: list[str] = field(default_factory=list)  # options accepted with no effect
    argv: list[str] = field(default_factory=list)

    @property
    def dump_level(self) -> int:
        return self.dump_levels[0]

    @property
    def to_stderr(self) -> bool:
        """makedumpfile's flag_strerr_message: with -F, stdout carries only data."""
        return self.flatten


def options_table() -> list[str]:
    """The README's table: every makedumpfile option and what cdbdump does with it."""
    rows = ["| option | cdbdump |", "| --- | --- |"]
    for spec in OPTIONS:
        names = " ".join(f"`{n}`" for n in (
            f"-{spec.short}" if spec.short else None, f"--{spec.long}" if spec.long else None)
            if n)
        what = spec.why if spec.effect is Effect.IMPLEMENTED else f"{spec.effect.value}: {spec.why}"
        rows.append(f"| {names} | {what} |")
    return rows


def atoi(text: str) -> int:
    """C atoi: leading blanks, a sign, digits; anything else ends the number."""
    match = re.match(r"\s*([+-]?\d+)", text)
    return int(match.group(1)) if match else 0


def parse(argv: list[str]) -> Invocation:
    """Parse ``argv`` (without the program name) as makedumpfile's main() does.

    Raises ParamError with makedumpfile's lines for anything it rejects, and what was
    parsed up to there (its ``invocation``).
    """
    try:
        opts, args = getopt.gnu_getopt(argv, _SHORTS, _LONGS)
    except getopt.GetoptError as exc:
        raise ParamError(f"makedumpfile: {exc.msg}", INVALID, TRY_HELP) from None
    inv = Invocation(argv=list(argv))
    try:
        _apply(inv, opts, args)
    except ParamError as exc:
        exc.invocation = inv
        raise
    return inv


def _apply(inv: Invocation, opts: list[tuple[str, str]], args: list[str]) -> None:
    flags: set[str] = set()
    debug = show_stats = False
    for name, value in opts:
        spec = _BY_LONG[name[2:]] if name.startswith("--") else _BY_SHORT[name[1:]]
        flags.add(spec.name)
        if spec.effect is Effect.REFUSED:
            raise ParamError(f"makedumpfile: {spec.name} is not supported by cdbdump: {spec.why}.")
        if spec.effect is Effect.NO_EFFECT:
            notice = f"{spec.name} has no effect here: {spec.why}."
            if notice not in inv.notices:
                inv.notices.append(notice)
            continue
        key = spec.short or spec.long or ""
        if key in _CODECS:
            inv.codec = _CODECS[key]  # the last one given wins
        elif key == "d":
            inv.dump_levels = _dump_levels(value)
        elif key == "message-level":
            level = atoi(value)
            if not 0 <= level <= MAX_MSG_LEVEL:
                raise ParamError(f"Message_level({level}) is invalid.")
            inv.message_level = level
        elif key == "L":
            inv.size_limit = _memparse(value)
        elif key == "cyclic-buffer":
            inv.cyclic_buffer_kib = atoi(value) or None  # 0: makedumpfile's own choice
        elif key == "work-dir":
            inv.one_cycle = True
        elif key == "splitblock-size":
            inv.splitblock_kib = atoi(value) or None  # 0: the 1 GiB default
        elif key == "num-threads":
            inv.num_threads = max(atoi(value), 0)
        elif key == "D":
            debug = True
        elif key == "show-stats":
            show_stats = True
        else:
            _set_flag(inv, key)
    if debug:
        inv.message_level |= ML_DEBUG
    if show_stats:
        inv.message_level |= ML_REPORT
    if inv.check_params:
        inv.message_level = DEFAULT_MSG_LEVEL  # main(): suppress debugging messages
    _check_arity(inv, flags, args)


def _set_flag(inv: Invocation, key: str) -> None:
    if key == "h" or key == "help":
        inv.mode = Mode.HELP
    elif key == "v":
        if inv.mode is not Mode.HELP:
            inv.mode = Mode.VERSION
    else:
        attr = {
            "E": "elf", "F": "flatten", "f": "force", "split": "split",
            "check-params": "check_params", "dry-run": "dry_run", "q": "use_kernel_bitmap",
        }.get(key)
        if attr is not None:
            setattr(inv, attr, True)
        elif key == "R":
            inv.mode = Mode.REARRANGE
        elif key == "reassemble":
            inv.mode = Mode.REASSEMBLE
        elif key == "dump-dmesg":
            inv.mode = Mode.DMESG
        elif key == "mem-usage":
            inv.mode = Mode.MEM_USAGE


def _memparse(text: str) -> int:
    """The kernel's memparse, as makedumpfile -L uses it: a number with an optional
    K, M, G, T, P or E suffix; anything after it, or zero, is invalid."""
    match = re.fullmatch(r"\s*(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)([kKmMgGtTpPeE]?)", text)
    if match is None:
        raise ParamError(f"Limit size({text}) is invalid.")
    digits = match.group(1)  # strtoull base 0: 0x hex, leading 0 octal, else decimal
    value = int(digits, 16 if digits[:2] in ("0x", "0X") else 8 if digits[0] == "0" else 10)
    if value == 0:
        raise ParamError(f"Limit size({text}) is invalid.")
    shift = " KMGTPE".index(match.group(2).upper() or " ") * 10
    return value << shift


def _dump_levels(text: str) -> list[int]:
    """makedumpfile parse_dump_level: comma-separated atoi values, each 0..31."""
    levels: list[int] = []
    for part in (p for p in text.split(",") if p):
        level = atoi(part)
        if not 0 <= level <= MAX_DUMP_LEVEL:
            raise ParamError(f"Dump_level({level}) is invalid.")
        if len(levels) >= NUM_ARRAY_DUMP_LEVEL:
            raise ParamError("Dump_level is invalid.")
        levels.append(level)
    return levels or [0]


def _check_arity(inv: Invocation, flags: set[str], args: list[str]) -> None:
    """makedumpfile check_param_for_{rearranging_dumpdata,reassembling_dumpfile,
    creating_dumpfile}: which options go together and how many file names."""
    if inv.mode in (Mode.HELP, Mode.VERSION):
        return
    leveled = "-d" in flags and inv.dump_level != 0
    if inv.mode in (Mode.REARRANGE, Mode.REASSEMBLE):
        if inv.codec is not Codec.NONE or leveled or inv.elf or inv.flatten:
            raise ParamError(INVALID, TRY_HELP)
        if inv.mode is Mode.REARRANGE:
            if len(args) != 1:
                raise ParamError(INVALID, TRY_HELP)
            inv.dumpfile = args[0]
            return
        if inv.split:
            raise ParamError(INVALID, TRY_HELP)
        if inv.dry_run:
            raise ParamError("--dry-run cannot be used with --reassemble.", INVALID, TRY_HELP)
        if len(args) < 2:
            raise ParamError(INVALID, TRY_HELP)
        inv.dumpfiles, inv.dumpfile = args[:-1], args[-1]
        return
    if inv.codec is not Codec.NONE and inv.elf:
        raise ParamError(INVALID, TRY_HELP)
    if inv.dry_run and inv.mode is Mode.DMESG:
        raise ParamError("--dry-run cannot be used with --dump-dmesg.", INVALID, TRY_HELP)
    if inv.flatten and inv.split:
        raise ParamError(INVALID, TRY_HELP)
    if inv.num_threads and inv.split:
        raise ParamError("--num-threads cannot used with --split.", INVALID, TRY_HELP)
    if inv.num_threads and inv.elf:
        raise ParamError("--num-threads cannot used with ELF format.", INVALID, TRY_HELP)
    if "-e" in flags and not inv.one_cycle:
        raise ParamError("-e requires --work-dir", INVALID, TRY_HELP)
    if len(args) == 2 and not inv.flatten and not inv.split:
        inv.vmcore, inv.dumpfile = args
    elif inv.split and len(args) > 2:
        if inv.elf:
            raise ParamError("Options for splitting dumpfile cannot be used with Elf format.",
                             INVALID, TRY_HELP)
        inv.vmcore, inv.dumpfiles = args[0], args[1:]
    elif len(args) == 1 and (inv.flatten or inv.mode is Mode.MEM_USAGE):
        inv.vmcore = args[0]
    else:
        raise ParamError(INVALID, TRY_HELP)
