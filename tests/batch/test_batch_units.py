"""The batch's parts, in-process: naming, publishing, the lock, the manifest, the
existing-output check and run_one's decisions on stale or foreign outputs."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

from cdbdump.batch import hooks
from cdbdump.batch.discover import Job, discover
from cdbdump.batch.existing import output_problem
from cdbdump.batch.manifest import finished_by_output, read_records
from cdbdump.batch.publish import BatchLock, partial_name, publish, sweep_partials
from cdbdump.batch.shards import Assembler
from cdbdump.batch.tasks import Task
from cdbdump.batch.work import BatchOptions, Outcome, Piece, run_one
from cdbdump.codecs import Codec
from cdbdump.errors import OutputError
from cdbdump.fileio import MappedFile
from cdbdump.formats.kdump import DISK_DUMP_HEADER_STATUS_OFFSET, DUMP_DH_COMPRESSED_INCOMPLETE
from cdbdump.vmcore.kdumpfile import KdumpFile
from tests.batch.conftest import MakeVmcore, cdbdump, make_dump

ELF_HEAD = b"\x7fELF\x02\x01\x01" + bytes(9)


def _touch(path: Path, data: bytes = ELF_HEAD) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_discover_names_outputs_after_the_inputs_below_their_root(tmp_path: Path) -> None:
    crash = tmp_path / "crash"
    a = _touch(crash / "host-1" / "vmcore")
    b = _touch(crash / "host-2" / "vmcore")
    _touch(crash / "host-1" / "vmcore-dmesg.txt", b"[ 0.000] Linux\n")
    out = crash / "out"  # inside the walked tree: never walked
    _touch(out / "old" / "vmcore.kdump", b"KDUMP   " + bytes(8))
    found = discover([str(crash)], out)
    assert [(j.input, j.output) for j in found.jobs] == [
        (a, out / "host-1" / "vmcore.kdump"),
        (b, out / "host-2" / "vmcore.kdump"),
    ]
    assert found.passed_over == 1 and not found.problems
    by_glob = discover([f"{crash}/*/vmcore"], out)
    assert [j.output for j in by_glob.jobs] == [j.output for j in found.jobs]


def test_discover_explicit_files_duplicates_collisions_and_missing(tmp_path: Path) -> None:
    a = _touch(tmp_path / "x" / "vmcore")
    b = _touch(tmp_path / "y" / "vmcore")
    text = _touch(tmp_path / "notes.txt", b"not a dump")
    (tmp_path / "link").symlink_to(a)
    out = tmp_path / "out"
    found = discover([str(a), str(tmp_path / "link"), str(b), str(text),
                      str(tmp_path / "nothing"), str(tmp_path / "none*")], out)
    assert [(j.input, j.output) for j in found.jobs] == [
        (a, out / "vmcore.kdump"), (text, out / "notes.txt.kdump")]  # named: always taken
    problems = dict(found.problems)
    assert f"is also the output of {a}" in problems[str(b)]
    assert problems[str(tmp_path / "nothing")] == "no such file or directory"
    assert problems[str(tmp_path / "none*")] == "no file matches this pattern"


def _pfn_range(path: Path) -> tuple[int, int]:
    with MappedFile(path) as f:  # the reader's view, independent of discovery's
        part = KdumpFile.open(f)
        return part.start_pfn, part.end_pfn


def test_discover_groups_split_sets_by_their_headers_not_their_names(
    tiny_vmcore: MakeVmcore, tmp_path: Path
) -> None:
    _k1, elf1 = tiny_vmcore("6.1", seed=21)
    _k2, elf2 = tiny_vmcore("6.1", seed=22)
    crash = tmp_path / "crash"
    # set 1: names sort against the pfn order; set 2 interleaved with it in one directory
    one = [crash / "z-first", crash / "m-second", crash / "a-third"]
    make_dump("-d", "1", "--split", elf1, *one)
    two = [crash / "b-1", crash / "n-2"]
    make_dump("-d", "31", "--split", elf2, *two)
    # set 3 lost its middle file; set 4 holds one file twice (a copy under another name)
    three = [crash / "lost" / f"p{i}" for i in range(3)]
    make_dump("-d", "1", "--split", elf2, *three)
    gap = _pfn_range(three[1])
    three[1].unlink()
    four = [crash / "dup" / f"q{i}" for i in range(2)]
    make_dump("-d", "0", "--split", elf1, *four)
    (crash / "dup" / "q0-copy").write_bytes(four[0].read_bytes())
    whole = _touch(crash / "elf" / "vmcore", elf1.read_bytes())
    out = tmp_path / "out"

    found = discover([str(crash)], out)
    jobs = {j.input: j for j in found.jobs}
    assert set(jobs) == {one[0], two[0], whole}
    assert jobs[one[0]].parts == tuple(one[1:])
    assert jobs[one[0]].output == out / "z-first.kdump"
    assert jobs[one[0]].size == sum(p.stat().st_size for p in one)
    assert jobs[two[0]].parts == (two[1],)
    assert jobs[whole].parts == ()
    problems = dict(found.problems)
    assert set(problems) == {str(three[0]), str(four[0])}
    assert f"the part holding pfns {gap[0]:#x}-{gap[1]:#x} is missing" in problems[str(three[0])]
    assert str(three[2]) in problems[str(three[0])]
    assert "overlaps another file of the set" in problems[str(four[0])]

    # the set named file by file, in any order, is still one input
    named = discover([str(one[2]), str(one[0]), str(one[1])], out)
    assert [(j.input, j.parts) for j in named.jobs] == [(one[0], tuple(one[1:]))]
    # one file of a set alone is an incomplete set, not a dump of part of the machine
    alone = discover([str(one[1])], out)
    assert not alone.jobs and "is missing" in dict(alone.problems)[str(one[1])]

    # run_one on the grouped set = the reader on the set (cdbdump --split-part)
    job = jobs[one[0]]
    reference = tmp_path / "reference.kdump"
    make_dump("-d", "31", *(a for p in one[1:] for a in ("--split-part", p)), one[0], reference)
    outcome = run_one(job.input, job.output, BatchOptions(), None, None, job.parts)
    assert outcome.status == "done", outcome.error
    assert outcome.parts == [str(p) for p in one[1:]]
    assert job.output.read_bytes() == reference.read_bytes()
    # --verify of a set: every dumpable page compared with the set it came from
    checked = run_one(job.input, tmp_path / "checked.kdump", BatchOptions(verify=True), None,
                      None, job.parts)
    assert checked.status == "done" and checked.verified, checked.error
    assert not any("verify" in w for w in checked.warnings)


def test_publish_never_clobbers_and_replaces_a_link_not_its_target(tmp_path: Path) -> None:
    out = _touch(tmp_path / "o.kdump", b"old")
    part = partial_name(out)
    part.write_bytes(b"new")
    with pytest.raises(OutputError, match="appeared while it was being written"):
        publish(part, out, replace=False)
    assert out.read_bytes() == b"old" and part.exists()
    target = _touch(tmp_path / "precious", b"keep")
    link = tmp_path / "l.kdump"
    link.symlink_to(target)
    publish(part, link, replace=True)
    assert not link.is_symlink() and link.read_bytes() == b"new"
    assert target.read_bytes() == b"keep"


def test_sweep_removes_only_temporary_files(tmp_path: Path) -> None:
    out = _touch(tmp_path / "d" / "vmcore.kdump", b"done")
    stale = partial_name(out)
    stale.write_bytes(b"half")
    other = _touch(tmp_path / "d" / ".hidden", b"x")
    assert sweep_partials(tmp_path) == [stale]
    assert out.exists() and other.exists() and not stale.exists()


def test_one_batch_per_output_directory(tmp_path: Path) -> None:
    with BatchLock(tmp_path):
        with pytest.raises(OutputError, match=f"another batch .* \\(pid {os.getpid()}\\)"):
            with BatchLock(tmp_path):
                pass
    with BatchLock(tmp_path):  # released
        pass


def test_manifest_reader_passes_over_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "batch.jsonl"
    lines = [
        {"input": "a", "output": "A", "status": "done", "size": 1},
        {"input": "b", "output": "B", "status": "error"},
        {"input": "a", "output": "A", "status": "skipped", "size": 2},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"input": "c", "out')
    records, bad = read_records(path)
    assert (len(records), bad) == (3, 1)
    assert finished_by_output(records) == {"A": lines[2]}


@pytest.fixture
def made_dump(tiny_vmcore: MakeVmcore, tmp_path: Path) -> tuple[Path, Path]:
    _, vmcore = tiny_vmcore("6.1", seed=21)
    out = tmp_path / "o.kdump"
    outcome = run_one(vmcore, out, BatchOptions(dump_level=31))
    assert outcome.status == "done", outcome.error
    return vmcore, out


def test_existing_output_check(made_dump: tuple[Path, Path], tmp_path: Path) -> None:
    _, out = made_dump
    assert output_problem(out, Codec.ZSTD, 31) is None
    assert "not lzo" in (output_problem(out, Codec.LZO, 31) or "")
    assert "dump level 31, not 1" in (output_problem(out, Codec.ZSTD, 1) or "")
    data = bytearray(out.read_bytes())
    cut = tmp_path / "cut.kdump"
    cut.write_bytes(data[: len(data) - 100])
    assert "past the end of the file" in (output_problem(cut, Codec.ZSTD, 31) or "")
    (status,) = struct.unpack_from("<I", data, DISK_DUMP_HEADER_STATUS_OFFSET)
    struct.pack_into("<I", data, DISK_DUMP_HEADER_STATUS_OFFSET,
                     status | DUMP_DH_COMPRESSED_INCOMPLETE)
    flagged = tmp_path / "flagged.kdump"
    flagged.write_bytes(data)
    assert "incomplete" in (output_problem(flagged, Codec.ZSTD, 31) or "")


@pytest.mark.parametrize(("dialect", "kwargs", "options"), [
    ("6.1", {}, BatchOptions(dump_level=31)),  # kexec's kernel-text PT_LOAD over RAM
    ("6.1", {}, BatchOptions(dump_level=1, codec=Codec.LZO)),  # zero pages keep their bit
    ("5.10", {"layout": "qemu"}, BatchOptions(dump_level=17)),
    ("6.12", {}, BatchOptions(dump_level=31, codec=Codec.ZLIB)),
    ("6.1", {}, BatchOptions(dump_level=0)),
])
def test_a_skip_without_a_record_reads_the_counts_back(
    tiny_vmcore: MakeVmcore, tmp_path: Path, dialect: str, kwargs: dict[str, object],
    options: BatchOptions,
) -> None:
    """A worker killed after publishing its output, before reporting, leaves no record:
    the rerun skips the output with the page counts the lost record had."""
    _, vmcore = tiny_vmcore(dialect, seed=23, **kwargs)
    out = tmp_path / "o.kdump"
    done = run_one(vmcore, out, options)
    assert done.status == "done", done.error
    assert done.original_pages is not None and done.remaining_pages is not None
    skipped = run_one(vmcore, out, options)  # no previous record
    assert skipped.status == "skipped", skipped.error
    assert skipped.skip_reason == "the output exists and verifies"
    assert (skipped.original_pages, skipped.remaining_pages, skipped.dump_level_applied) == (
        done.original_pages, done.remaining_pages, done.dump_level_applied)
    assert skipped.bytes_out == done.bytes_out


def test_run_one_skips_refuses_and_replaces(made_dump: tuple[Path, Path]) -> None:
    vmcore, out = made_dump
    first = out.read_bytes()
    options = BatchOptions(dump_level=31)
    skipped = run_one(vmcore, out, options)
    assert skipped.status == "skipped"
    record = {"size": skipped.size, "sha256_1mib": skipped.sha256_1mib, "dump_level": 31,
              "codec": "zstd", "use_kernel_bitmap": False, "dump_level_applied": 31,
              "path_taken": "legacy"}
    assert run_one(vmcore, out, options, record).path_taken == "legacy"
    stale = dict(record, sha256_1mib="0" * 64)  # the manifest says: another input made it
    refused = run_one(vmcore, out, options, stale)
    assert refused.status == "error"
    assert "was made from a different input" in (refused.error or "")
    assert "-f replaces it" in (refused.error or "")
    assert out.read_bytes() == first
    lzo = run_one(vmcore, out, BatchOptions(dump_level=31, codec=Codec.LZO, force=True))
    assert lzo.status == "done" and lzo.replaced == "is compressed with zstd, not lzo"
    assert out.read_bytes() != first
    assert not list(out.parent.glob(".*.part"))


def test_options_whose_hook_is_missing_are_refused_in_one_line(
    tiny_vmcore: MakeVmcore, tmp_path: Path
) -> None:
    _, vmcore = tiny_vmcore("6.1", seed=21)
    for option, hook in (("--verify", hooks.VERIFY), ("--dmesg", hooks.DMESG)):
        if hooks.find(hook) is not None:
            continue  # built: exercised by the tests of that feature's batch hook
        proc = cdbdump("batch", str(vmcore), "--out", str(tmp_path / "o"), option)
        assert proc.returncode == 1
        assert proc.stderr.splitlines() == [f"cdbdump batch: error: {hooks.missing(hook)}"]
        assert not (tmp_path / "o").exists()


def test_batch_subcommand_leaves_the_makedumpfile_form_alone(
    tiny_vmcore: MakeVmcore, tmp_path: Path
) -> None:
    _, vmcore = tiny_vmcore("6.1", seed=21)
    batch_named = tmp_path / "batch"  # a vmcore that happens to be called batch
    batch_named.symlink_to(vmcore)
    proc = cdbdump("-d", "31", "--message-level", "0", f"./{batch_named.name}", "o.kdump",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "o.kdump").exists()
    helped = cdbdump("batch", "--help")
    assert helped.returncode == 0 and "--local-cluster" in helped.stdout


def _piece_outcome(job_output: Path, number: int, data: bytes | None) -> Outcome:
    """What run_one returns for a piece: its temporary file, or an error (and no file)."""
    if data is None:
        return Outcome(input="in", output=str(job_output), error=f"piece {number} broke")
    piece = partial_name(job_output.with_name(f"{job_output.name}.piece{number + 1}of2"))
    piece.write_bytes(data)
    return Outcome(input="in", output=str(piece), status="done", size=1,
                   pages={"free": 1}, original_pages=10, remaining_pages=9, seconds=1.0,
                   worker=f"w{number}")


def test_shard_assembler_reassembles_pieces_in_pfn_order(tmp_path: Path) -> None:
    def concatenate(pieces: list[Path], dumpfile: Path) -> None:  # pieces in order, one file
        dumpfile.write_bytes(b"".join(p.read_bytes() for p in pieces))

    out = tmp_path / "vmcore.kdump"
    job = Job(tmp_path / "vmcore", out, 1)
    options = BatchOptions(shards=2)
    assembler = Assembler(options, concatenate)
    tasks = [Task(i, job, None, Piece(i, 2)) for i in range(2)]
    late = _piece_outcome(out, 1, b"second")
    assert assembler.add(tasks[1], late) is None  # the last range finished first
    whole = assembler.add(tasks[0], _piece_outcome(out, 0, b"first-"))
    assert whole is not None and whole.status == "done"
    assert out.read_bytes() == b"first-second"
    assert whole.pages == {"free": 1}  # every piece classified the whole input
    assert whole.worker == "w0,w1" and whole.seconds == 2.0
    assert not list(tmp_path.glob(".*.part"))

    broken = Assembler(options, concatenate)
    other = Job(tmp_path / "v2", tmp_path / "v2.kdump", 1)
    assert broken.add(Task(0, other, None, Piece(0, 2)),
                      _piece_outcome(other.output, 0, b"a")) is None
    failed = broken.add(Task(1, other, None, Piece(1, 2)),
                        _piece_outcome(other.output, 1, None))
    assert failed is not None and failed.status == "error"
    assert "piece 1 broke" in (failed.error or "")
    assert not other.output.exists() and not list(tmp_path.glob(".*.part"))


def test_dmesg_failure_is_noted_and_the_dump_stays_done(made_dump: tuple[Path, Path]) -> None:
    assert hooks.find(hooks.DMESG) is not None  # --dump-dmesg is part of cdbdump now
    vmcore, out = made_dump  # a synthetic machine without a printk ringbuffer
    outcome = run_one(vmcore, out, BatchOptions(dump_level=31, dmesg=True))
    assert outcome.status == "skipped"  # the dump was there; only the log was missing
    assert "cannot read the kernel log" in (outcome.dmesg_error or "")
    assert outcome.dmesg is None
    assert not list(out.parent.glob("*.dmesg.txt")) and not list(out.parent.glob(".*.part"))
