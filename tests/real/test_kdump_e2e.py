"""cdbdump as the collector inside a real kdump capture kernel (fixtures/kdump_e2e.py).

One boot of Debian 12's 6.1 kernel (1 GiB guest, crashkernel=256M) panics; its
capture kernel runs the self-contained executable (no Python in the initramfs) on
/proc/vmcore and saves an unfiltered copy in the same boot. Here every saved dump
is read back by libkdumpfile, drgn and crash and compared page by page with that
copy. The run is cached in .cache/kdump-e2e/ until the executable changes
(`make kdump-e2e` forces a fresh one).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from fixtures import kdump_e2e
from tests.oracles import crash_header, drgn_check, libkdumpfile_check, rearrange_flattened
from tests.real.conftest import unavailable

pytestmark = [pytest.mark.real, pytest.mark.oracle, pytest.mark.slow]
# The capture kernel's memory is measured with `fixtures/kdump_e2e.py --sweep`.

MEM, CRASHKERNEL = "1G", "256M"
NAMES = kdump_e2e.default_case_names()
CDBDUMP_CASES = [c for c in kdump_e2e.cases(NAMES) if c.command.startswith(("cdbdump", "sh"))
                 and "dmesg" not in c.name and c.name not in kdump_e2e.EXPECTED_RC]


@pytest.fixture(scope="module")
def capture() -> tuple[Path, dict[str, str]]:
    try:
        result = kdump_e2e.run(MEM, CRASHKERNEL, NAMES)
    except kdump_e2e.E2eUnavailable as exc:
        unavailable(f"kdump end-to-end run: {exc}")
    except kdump_e2e.E2eError as exc:
        pytest.fail(str(exc), pytrace=False)
    return result, kdump_e2e.parse_results(result)


def test_every_collector_succeeded_in_the_capture_kernel(capture) -> None:  # type: ignore[no-untyped-def]
    result, facts = capture
    for case in kdump_e2e.cases(NAMES):
        log = (result / f"{case.output}.log").read_text(errors="replace")
        if case.name in kdump_e2e.EXPECTED_RC:
            continue
        assert facts.get(f"{case.output}: rc") == "0", f"{case.command}:\n{log[-2000:]}"
        assert (result / case.output).is_file()
        assert not (result / f"{case.output}-incomplete").exists()
    assert facts["copy: rc"] == "0"
    # the copy really is the capture kernel's /proc/vmcore: it has the crash time
    head = (result / "vmcore.elf").open("rb").read(1 << 16)
    assert b"CRASHTIME=" in head and b"VMCOREINFO" in head
    assert len(facts["startup_s"].split()) == 3


@pytest.mark.parametrize("case", CDBDUMP_CASES, ids=lambda c: c.name)
def test_readers_see_every_dumpable_page_of_the_copy(capture, case, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result, _facts = capture
    dump = result / case.output
    if case.name == "flat":
        rearrange_flattened(dump, tmp_path / "flat.kdump")
        dump = tmp_path / "flat.kdump"
    source = result / "vmcore.elf"
    lib = libkdumpfile_check(dump, source)
    assert lib.ok, lib.summary()
    assert lib.nr_dumpable > 10_000  # a 1 GiB guest's kernel memory, not an empty bitmap
    assert lib.vmcoreinfo_raw is not None and b"CRASHTIME=" in lib.vmcoreinfo_raw
    dr = drgn_check(dump, source)
    assert dr.ok, dr.summary()
    assert dr.dumpable_pfns.tolist() == lib.dumpable_pfns.tolist()
    header = crash_header(dump)
    assert header["total_valid_pages"].split()[0] in (str(lib.nr_dumpable),
                                                       hex(lib.nr_dumpable))


def test_same_pages_as_makedumpfile_in_the_same_capture_kernel(capture) -> None:  # type: ignore[no-untyped-def]
    """The RHEL line against Debian's makedumpfile run on the same /proc/vmcore.

    makedumpfile 1.7.2 leaves out the last page of a PT_LOAD that ends inside a page
    (the e820 ranges of /proc/vmcore), which the source does hold; those may differ.
    """
    result, _facts = capture
    ours = libkdumpfile_check(result / "rhel.vmcore", result / "vmcore.elf")
    ref = libkdumpfile_check(result / "makedumpfile.vmcore", result / "vmcore.elf")
    assert ref.ok, ref.summary()
    only_ours = set(ours.dumpable_pfns.tolist()) - set(ref.dumpable_pfns.tolist())
    only_ref = set(ref.dumpable_pfns.tolist()) - set(ours.dumpable_pfns.tolist())
    assert not only_ref, sorted(only_ref)[:20]
    assert len(only_ours) <= 8, sorted(only_ours)[:20]


def test_too_little_memory_one_line_exit_1_and_the_fallback_copy_works(capture) -> None:  # type: ignore[no-untyped-def]
    """The `starved` case: the capture kernel's memory but 32 MiB is taken (a tmpfs), so
    the OOM killer stops cdbdump. RHEL keeps NAME-incomplete when the collector fails;
    Debian's kdump-tools then copies /proc/vmcore with cp, which run.sh does next."""
    result, facts = capture
    log = (result / "starved.vmcore.log").read_text(errors="replace")
    assert facts["starved.vmcore: rc"] == "1", log
    errors = [line for line in log.splitlines() if line.startswith("cdbdump: error:")]
    assert len(errors) == 1, log
    assert "Traceback" not in log
    assert not (result / "starved.vmcore").exists()  # never renamed: not passed off as a dump
    assert facts["copy: rc"] == "0"
    head = (result / "vmcore.elf").open("rb").read(1 << 16)
    assert b"CRASHTIME=" in head


def test_dmesg_holds_the_panic_as_makedumpfile_writes_it(capture, makedumpfile_new: Path,  # type: ignore[no-untyped-def]
                                                         tmp_path: Path) -> None:
    """kdump-tools' dmesg.<stamp>: cdbdump --dump-dmesg in the capture kernel, byte for byte
    what makedumpfile >= 1.7.6 writes from the copy (1.7.2, run in the capture kernel
    too, predates the caller id column)."""
    result, _facts = capture
    ours = (result / "dmesg.txt").read_bytes()
    assert b"sysrq: Trigger a crash" in ours
    ref = tmp_path / "dmesg.ref.txt"
    proc = subprocess.run([str(makedumpfile_new), "--dump-dmesg", str(result / "vmcore.elf"),
                           str(ref)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert ours == ref.read_bytes()
