"""--mem-usage: makedumpfile's table of pages per class, on vmcores and kcore-like inputs."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from cdbdump.pipeline import mem_usage
from tests.builders import SyntheticKernel

MakeVmcore = Callable[..., tuple[SyntheticKernel, Path]]
NO_PADDR = 0xFFFF_FFFF_FFFF_FFFF


def test_table_matches_the_oracle_at_level_31(tiny_vmcore: MakeVmcore) -> None:
    kernel, vmcore = tiny_vmcore("6.12", seed=4)
    usage, page_size = mem_usage(vmcore)
    expected = kernel.expected_counts(31)
    assert page_size == 4096
    assert usage.zero == expected.zero
    assert usage.non_pri_cache == expected.cache
    assert usage.pri_cache == expected.cache_private
    assert usage.user == expected.user
    assert usage.free == expected.free
    assert usage.original_pages == int(kernel.first_bitmap().sum())
    assert usage.kern_data == usage.original_pages - expected.total


def test_cli_prints_makedumpfile_columns(tiny_vmcore: MakeVmcore) -> None:
    kernel, vmcore = tiny_vmcore("6.1", seed=4)
    proc = subprocess.run([sys.executable, "-m", "cdbdump", "--mem-usage", str(vmcore)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "TYPE\t\tPAGES\t\t\tEXCLUDABLE\tDESCRIPTION" in lines
    free = kernel.expected_counts(31).free
    assert f"FREE\t\t{free:<16}\tyes\t\tFree pages" in lines
    assert any(line.startswith("KERN_DATA\t") and line.endswith("Dumpable kernel data ")
               for line in lines)
    assert "page size:\t\t4096            " in lines


def test_kcore_segments_without_physical_address_are_ignored(
    tiny_kernel: Callable[..., SyntheticKernel], tmp_path: Path
) -> None:
    # /proc/kcore also maps vmalloc, modules and vmemmap, with p_paddr = -1
    kernel = tiny_kernel("6.1", seed=4)
    builder = kernel.elf_builder()
    builder.add_load(NO_PADDR, data=bytes(4096), vaddr=0xFFFF_C900_0000_0000)
    vmcore = tmp_path / "kcore-like.elf"
    builder.write(vmcore)
    usage, _ = mem_usage(vmcore)
    assert usage.free == kernel.expected_counts(31).free
