"""cdbdump against Debian's makedumpfile 1.7.2 on real kernel vmcores.

makedumpfile reads the normalised copy (it ignores e_phoff), cdbdump reads the
ELF exactly as QEMU wrote it. Both write lzo kdump files (1.7.2 has no zstd).
For each dump level the two dumps must have the same dumpable pages, every one
byte-equal between them and to the source, and the same report counts.

Known makedumpfile 1.7.2 quirks are xfailed, but
only after the test has checked that the difference is exactly that quirk:
  * a PT_LOAD that ends inside a page (real /proc/vmcore e820 ranges) on a machine
    makedumpfile does in one cycle: 1.7.2 drops that page from the 2nd bitmap
    (exclude_nodata_pages before upstream commit f2c5f76), cdbdump keeps it as 1.7.6
    does (see _partial_page_quirk). In cyclic mode (max_mapnr not a multiple of 4,
    as on debian12-6.1-1g-kdump, or above 64 GiB) both drop it and the files are
    identical (tests/differential/test_partial_last_page.py);
  * kernels 6.12+ at levels with bit 8: 1.7.2 misclassifies hugetlb, large
    folios and slab pages (see _kernel_612_quirk).
test_counts_match_guest checks the -d 31 classes against the guest's own
counters, the only reference where makedumpfile 1.7.2 is wrong.
"""

from __future__ import annotations

import filecmp
import struct
from typing import Any

import pytest

from cdbdump import _lzo
from cdbdump.errors import UnsupportedError
from cdbdump.fileio import MappedFile
from cdbdump.pipeline import open_input

# Fixtures (tests/real/conftest.py): `vmcore` is a RealVmcore (name, raw, norm,
# vmcoreinfo, guest, kernel), one per catalogue vmcore; `tier` runs the tools.
pytestmark = pytest.mark.real

LEVELS = [0, 1, 2, 4, 8, 16, 31]
USER, ZERO = "User process data pages", "Pages filled with zero"


def _count_diffs(lines: tuple[str, ...], ref: dict[str, int],
                 ours: dict[str, int]) -> dict[str, tuple[int, int]]:
    return {k: (ref.get(k, -1), ours.get(k, -1)) for k in lines
            if ref.get(k, -1) != ours.get(k, -1)}


def _partial_page_quirk(cmp: dict[str, Any], diffs: dict[str, tuple[int, int]]) -> str:
    """Reason text if the only difference is 1.7.2 dropping mid-page PT_LOAD ends."""
    extra = set(cmp["only_ours_all"])
    if (not extra or cmp["only_ref"] or cmp["only_ours"] != len(extra)
            or not extra <= set(cmp["partial_end_pfns"])):
        return ""
    n = len(extra)
    if not set(diffs) <= {"Original pages", "Memory Hole", "Remaining pages", ZERO,
                          "Excluded pages"}:
        return ""
    r, o = diffs.get("Original pages", (0, 0))
    h_r, h_o = diffs.get("Memory Hole", (0, 0))
    if o - r != n or h_r - h_o != n:  # the kept pages count as RAM instead of a hole
        return ""
    if any(abs(theirs - ours) > n for theirs, ours in diffs.values()):
        return ""
    return (f"makedumpfile 1.7.2 drops the {n} page(s) where a PT_LOAD ends mid-page "
            f"(pfns {sorted(extra)[:8]}) from the 2nd bitmap in one-cycle mode; cdbdump "
            f"keeps them with the tail zero-filled, as 1.7.6 does")


def struct_page_kinds(vm: Any, pfns: list[int]) -> dict[str, set[int]]:
    """Which of PFNS the guest's struct pages show as large-folio tails, hugetlb folio
    pages or slab pages (6.9+ page types).

    Read here from VMCOREINFO's offsets and page-type values; only the address of each
    struct page comes from cdbdump (its mem_map runs and page-table walk, which the
    byte-identity tests prove). A tail has bit 0 of page.compound_head set (the head's
    address + 1); the folio's type is the top byte of the head page's page_type
    (page._mapcount), PAGE_HUGETLB_MAPCOUNT_VALUE / PAGE_SLAB_MAPCOUNT_VALUE.
    """
    info = vm.vmcoreinfo
    size = int(info["SIZE(page)"])
    off_head = int(info["OFFSET(page.compound_head)"])
    off_type = int(info["OFFSET(page._mapcount)"])
    hugetlb_type = (int(info["NUMBER(PAGE_HUGETLB_MAPCOUNT_VALUE)"]) >> 24) & 0xFF
    slab_type = (int(info["NUMBER(PAGE_SLAB_MAPCOUNT_VALUE)"]) >> 24) & 0xFF
    out: dict[str, set[int]] = {"tail": set(), "hugetlb": set(), "slab": set()}
    with MappedFile(vm.raw) as f:
        image = open_input(f)
        assert image.kernel is not None and image.mem_map is not None, image.mem_map_error
        runs = image.mem_map.runs
        for pfn in pfns:
            run = next(r for r in runs if r.start_pfn <= pfn < r.end_pfn)
            page = image.kernel.read(run.mem_map_vaddr + (pfn - run.start_pfn) * size, size)
            compound_head, = struct.unpack_from("<Q", page, off_head)
            head = page
            if compound_head & 1:
                out["tail"].add(pfn)
                head = image.kernel.read(compound_head - 1, size)
            page_type, = struct.unpack_from("<I", head, off_type)
            if page_type >> 24 == hugetlb_type:
                out["hugetlb"].add(pfn)
            elif page_type >> 24 == slab_type:
                out["slab"].add(pfn)
    return out


def _kernel_612_quirk(vm: Any, level: int, cmp: dict[str, Any],
                      diffs: dict[str, tuple[int, int]]) -> str:
    """Reason text if the only difference is 1.7.2's known -d 8 errors on 6.12+.

    1.7.2 knows neither the hugetlb page type (6.9+) nor where the folio order is
    kept (6.6+), so it keeps hugetlb pages and large-folio tails; and it takes the
    slab pointer that overlays page.mapping since 6.2 for an anon mapping
    (fixed in 1.7.3), so it drops some slab pages as user data. Checked on
    debian13-6.12-1g with a struct-page scan: all pages only 1.7.2 drops there
    have the slab page type.
    """
    if vm.kernel < (6, 12) or not level & 8 or USER not in diffs:
        return ""
    if not set(diffs) <= {USER, ZERO, "Excluded pages", "Remaining pages"}:
        return ""
    ref_user, ours_user = diffs[USER]
    slab_pages = vm.guest["nr_slab_reclaimable"] + vm.guest["nr_slab_unreclaimable"]
    if ours_user <= ref_user or cmp["only_ours"] > slab_pages:
        return ""
    # Bounded by the struct pages: every page only 1.7.2 keeps is a large-folio tail
    # or a hugetlb page; every page only 1.7.2 drops is a slab page.
    only_ref, only_ours = set(cmp["only_ref_all"]), set(cmp["only_ours_all"])
    assert len(only_ref) == cmp["only_ref"] and len(only_ours) == cmp["only_ours"]
    kinds = struct_page_kinds(vm, sorted(only_ref | only_ours))
    if not only_ref <= kinds["tail"] | kinds["hugetlb"]:
        return ""
    if not only_ours <= kinds["slab"]:
        return ""
    return (f"makedumpfile 1.7.2 predates kernel 6.12's page types and folio layout: it "
            f"finds {ref_user} user pages, cdbdump {ours_user} (guest: "
            f"{vm.guest['nr_anon_pages']} anon + {vm.guest['HugePages_Total']} huge pages), "
            f"and it drops {cmp['only_ours']} slab pages as user data; the {len(only_ref)} "
            f"pages only it keeps are large-folio tails ({len(only_ref & kinds['tail'])}) "
            f"and hugetlb pages ({len(only_ref & kinds['hugetlb'])})")


@pytest.mark.parametrize("level", LEVELS, ids=[f"d{n}" for n in LEVELS])
def test_same_dump_as_makedumpfile(vmcore: Any, level: int, tier: Any) -> None:
    # (a skip fails under CI: tests/ci_gate.py)
    try:
        backend = _lzo.backend()
    except UnsupportedError as exc:
        pytest.skip(f"no LZO backend: {exc}")
    if not backend.byte_identical:
        pytest.skip(f"LZO backend {backend.name} does not write lzo1x_1's bytes "
                    "(pip install 'cdbdump[lzo-exact]')")
    ref, ours = tier.dump_both(vmcore, level)
    try:
        ref.check()
        ours.check()
        cmp = tier.compare(vmcore.raw, ref.out, ours.out)
        same_file = filecmp.cmp(ref.out, ours.out, shallow=False)
    finally:
        ref.out.unlink(missing_ok=True)
        ours.out.unlink(missing_ok=True)
    assert "ref_error" not in cmp, f"libkdumpfile cannot read makedumpfile's dump: {cmp}"
    assert "ours_error" not in cmp, f"libkdumpfile cannot read cdbdump's dump: {cmp}"
    assert not cmp["read_errors"], f"dumpable pages that cannot be read: {cmp['read_errors']}"
    # Whatever makedumpfile does: every page cdbdump keeps is the source's page.
    assert cmp["ours_vs_source"] == 0, (
        f"{cmp['ours_vs_source']} pages differ from the source, "
        f"first {cmp['ours_vs_source_first']}")
    assert cmp["ours_outside_source"] == 0, (
        f"pages outside every PT_LOAD: {cmp['ours_outside_source_first']}")
    assert cmp["ref_vs_source"] == 0, "makedumpfile's own dump differs from the source"
    assert cmp["ref_vs_ours"] == 0
    assert ref.counts, f"no report from makedumpfile:\n{ref.stdout[-2000:]}"
    assert ours.counts, f"no page-count report from cdbdump:\n{ours.stderr[-2000:]}"

    diffs = _count_diffs(tier.count_lines, ref.counts, ours.counts)
    same_pages = not cmp["only_ref"] and not cmp["only_ours"]
    if same_pages and not diffs and cmp["ref_max_pfn"] == cmp["ours_max_pfn"]:
        # no quirk applies: the whole files are byte-identical (header, bitmaps,
        # page descriptors, page data)
        assert same_file, f"same pages and counts, but the files differ at -l -d {level}"
        return
    reason = _partial_page_quirk(cmp, diffs) or _kernel_612_quirk(vmcore, level, cmp, diffs)
    if reason:
        pytest.xfail(reason)
    assert cmp["ref_max_pfn"] == cmp["ours_max_pfn"], "max_mapnr differs"
    assert same_pages, (
        f"dumpable pages differ: {cmp['only_ref']} only in makedumpfile's dump "
        f"(first {cmp['only_ref_first']}), {cmp['only_ours']} only in cdbdump's "
        f"(first {cmp['only_ours_first']})")
    assert not diffs, "report counts differ (makedumpfile, cdbdump): " + ", ".join(
        f"{k}: {r:#x} vs {o:#x}" for k, (r, o) in diffs.items())


# Guest truth, for kernels where makedumpfile 1.7.2 is no reference: the -d 31
# classes against the guest's own counters printed just before the dump. Only
# for QEMU dumps: in kdump mode, kexec -p and the panic come in between (about
# 2500 rootfs shmem pages of 6.1 are then no longer counted as cache).
def _near(got: int, want: int) -> bool:
    return abs(got - want) <= want // 200 + 64


@pytest.mark.parametrize("tool", ["makedumpfile", "cdbdump"])
def test_counts_match_guest(qemu_vmcore: Any, tool: str, tier: Any) -> None:
    vmcore = qemu_vmcore
    run = tier.report(vmcore, tool, 31)
    assert run.returncode == 0, f"{tool} failed:\n{run.stderr[-2000:]}"
    assert USER in run.counts, (f"no page-count report from {tool}:\n"
                                f"{(run.stdout + run.stderr)[-2000:]}")
    g = vmcore.guest
    cache = run.counts["Non-private cache pages"] + run.counts["Private cache pages"]
    user = run.counts[USER]
    want_user = g["nr_anon_pages"] + g["HugePages_Total"] * g["Hugepagesize"] // 4
    if tool == "makedumpfile" and vmcore.kernel >= (6, 12) and not _near(user, want_user):
        pytest.xfail(f"makedumpfile 1.7.2 on {vmcore.vmcoreinfo['OSRELEASE']}: {user} user "
                     f"pages, the guest had {want_user} (no 6.12 support)")
    assert _near(cache, g["nr_file_pages"]), (cache, g["nr_file_pages"])
    assert _near(user, want_user), (user, want_user)
    assert run.counts["Private cache pages"] > g["nr_file_pages"] // 20, "no private cache?"
