"""makedumpfile's command line as the distro kdump scripts build it."""

from __future__ import annotations

import pytest

from cdbdump.codecs import Codec
from cdbdump.mdopts import (
    DEFAULT_MSG_LEVEL,
    OPTIONS,
    Effect,
    Mode,
    ParamError,
    atoi,
    parse,
)


@pytest.mark.parametrize(
    ("text", "value"),
    [("7", 7), ("1+2+4", 1), ("  31", 31), ("-3", -3), ("abc", 0), ("", 0), ("0x10", 0)],
)
def test_atoi_is_c_atoi(text: str, value: int) -> None:
    assert atoi(text) == value


def test_rhel_file_target_line() -> None:
    inv = parse("-l --message-level 7 -d 31 --num-threads=2 /proc/vmcore /d/vmcore-incomplete"
                .split())
    assert inv.mode is Mode.DUMP
    assert (inv.vmcore, inv.dumpfile) == ("/proc/vmcore", "/d/vmcore-incomplete")
    assert inv.codec is Codec.LZO and inv.dump_levels == [31]
    assert inv.message_level == 7 and inv.num_threads == 2
    assert not inv.flatten and not inv.to_stderr


def test_debian_line_with_flatten_twice() -> None:
    inv = parse("-F -c -d 31 -F /proc/vmcore".split())
    assert inv.flatten and inv.to_stderr
    assert inv.vmcore == "/proc/vmcore" and inv.dumpfile is None
    assert inv.codec is Codec.ZLIB


def test_suse_dmesg_line_to_stdout() -> None:
    inv = parse("-F --message-level 8 --dump-dmesg /proc/vmcore".split())
    assert inv.mode is Mode.DMESG and inv.flatten
    assert inv.vmcore == "/proc/vmcore" and inv.dumpfile is None
    assert inv.message_level == 8


def test_no_codec_means_uncompressed_and_last_codec_wins() -> None:
    assert parse(["v", "d"]).codec is Codec.NONE
    assert parse("-c -z -l v d".split()).codec is Codec.LZO


def test_gnu_permutation_prefixes_and_attached_values() -> None:
    inv = parse("/proc/vmcore -d31 out --mess=1+2+4 --show".split())
    assert (inv.vmcore, inv.dumpfile) == ("/proc/vmcore", "out")
    assert inv.dump_levels == [31]
    assert inv.message_level == 1 | 16  # atoi("1+2+4") == 1, --show-stats adds the report bit


def test_retry_level_list() -> None:
    assert parse("-d 31,11,1 v d".split()).dump_levels == [31, 11, 1]
    with pytest.raises(ParamError, match=r"Dump_level\(32\) is invalid"):
        parse("-d 31,32 v d".split())


def test_rearrange_and_reassemble_arity() -> None:
    inv = parse(["-R", "vmcore"])
    assert inv.mode is Mode.REARRANGE and inv.dumpfile == "vmcore"
    inv = parse("--reassemble a b c out".split())
    assert inv.mode is Mode.REASSEMBLE and inv.dumpfiles == ["a", "b", "c"]
    assert inv.dumpfile == "out"
    for bad in (["-R"], ["-R", "a", "b"], ["-R", "-c", "x"], ["-R", "-d", "31", "x"],
                ["--reassemble", "only"], ["--reassemble", "--split", "a", "b"]):
        with pytest.raises(ParamError) as err:
            parse(bad)
        assert err.value.lines[-2:] == ("Commandline parameter is invalid.",
                                        "Try `makedumpfile --help' for more information.")


def test_split_arity_and_conflicts() -> None:
    inv = parse("--split -d 31 vmcore a b c".split())
    assert inv.split and inv.vmcore == "vmcore" and inv.dumpfiles == ["a", "b", "c"]
    for bad in ("--split vmcore a", "--split -F vmcore a b", "--split -E vmcore a b",
                "--split --num-threads 2 vmcore a b", "-E -c vmcore out", "vmcore",
                "-F vmcore out", "a b c", "--dry-run --dump-dmesg vmcore log"):
        with pytest.raises(ParamError):
            parse(bad.split())


def test_e_needs_work_dir_and_the_error_keeps_what_was_parsed() -> None:
    with pytest.raises(ParamError) as err:
        parse("-F -e --message-level 7 -d 31 v".split())
    assert err.value.lines[0] == "-e requires --work-dir"
    parsed = err.value.invocation  # what makedumpfile prints the refusal with
    assert parsed is not None and parsed.flatten and parsed.message_level == 7
    assert parse("-e --work-dir /tmp v d".split()).one_cycle


def test_check_params_resets_message_level() -> None:
    inv = parse("--check-params -l --message-level 31 -d 31 vmcore dumpfile".split())
    assert inv.check_params and inv.message_level == DEFAULT_MSG_LEVEL


def test_unknown_option_and_bad_message_level() -> None:
    with pytest.raises(ParamError) as err:
        parse("--no-such-thing v d".split())
    assert "no-such-thing" in err.value.lines[0]
    with pytest.raises(ParamError, match=r"Message_level\(32\) is invalid"):
        parse("--message-level 32 v d".split())


def test_splitblock_size_is_kib_and_zero_is_the_default() -> None:
    assert parse("--split --splitblock-size 256 v d1 d2".split()).splitblock_kib == 256
    assert parse("--split --splitblock-size 0 v d1 d2".split()).splitblock_kib is None
    assert not parse("--split --splitblock-size 256 v d1 d2".split()).notices


def test_tuning_knobs_are_accepted_with_one_notice_each() -> None:
    inv = parse("-b 8 --num-buffers=2 --work-dir /tmp --non-mmap -e "
                "--num-buffers 4 v d".split())
    assert (inv.vmcore, inv.dumpfile) == ("v", "d")
    names = [n.split()[0] for n in inv.notices]
    assert names == ["-b", "--num-buffers", "--non-mmap", "-e"]
    # --work-dir has an effect: makedumpfile does the dump in one cycle
    assert inv.one_cycle and not parse("v d".split()).one_cycle


@pytest.mark.parametrize("spec", [o for o in OPTIONS if o.effect is Effect.REFUSED],
                         ids=lambda o: o.name)
def test_refused_options_name_themselves(spec: object) -> None:
    from cdbdump.mdopts import OptionSpec

    assert isinstance(spec, OptionSpec)
    argv = [spec.name] + (["x"] if spec.takes_arg else []) + ["v", "d"]
    with pytest.raises(ParamError) as err:
        parse(argv)
    assert spec.name in err.value.lines[0]


def test_help_and_version_win_over_arity() -> None:
    assert parse(["-h"]).mode is Mode.HELP
    assert parse(["--help", "-v"]).mode is Mode.HELP
    assert parse(["-v"]).mode is Mode.VERSION


def test_every_long_option_of_makedumpfile_is_known() -> None:
    # makedumpfile.c longopts[] (1.7.9): none may reach getopt's "unrecognized option"
    longopts = ("split reassemble xen-syms xen-vmcoreinfo xen_phys_start message-level vtop "
                "dump-dmesg partial-dmesg config help diskset cyclic-buffer eppic non-mmap "
                "mem-usage splitblock-size work-dir num-threads check-params dry-run "
                "show-stats extension").split()
    shorts = "b c D d e E F f g h i l L p R v X x z".split()
    known_long = {o.long for o in OPTIONS if o.long}
    known_short = {o.short for o in OPTIONS if o.short}
    assert set(longopts) <= known_long
    assert set(shorts) <= known_short


def test_readme_table_is_the_option_table() -> None:
    from pathlib import Path

    from cdbdump.mdopts import options_table

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = readme.index("<!-- makedumpfile-options -->\n") + len("<!-- makedumpfile-options -->\n")
    end = readme.index("<!-- /makedumpfile-options -->")
    assert readme[start:end].splitlines() == options_table()


@pytest.mark.parametrize(("text", "limit"), [("4096", 4096), ("1K", 1024), ("2m", 2 << 20),
                                             ("1G", 1 << 30), ("0x10", 16), ("010", 8)])
def test_size_limit_is_memparse(text: str, limit: int) -> None:
    assert parse(["-L", text, "v", "d"]).size_limit == limit


@pytest.mark.parametrize("text", ["0", "1Q", "abc", "", "1K2"])
def test_bad_size_limit(text: str) -> None:
    with pytest.raises(ParamError, match="Limit size"):
        parse(["-L", text, "v", "d"])
