"""Overlapping PT_LOADs: kexec's kernel-text segment over the direct-map segment.

In /proc/vmcore both copies are the same memory. When they differ (a corrupt or
hand-made core), makedumpfile reads the first segment in program-header order
that stores the byte (paddr_to_offset, mappage_elf), and so does cdbdump; where
that copy has no file data, the copy that has it is read. Builder-made vmcores
with a kernel-text copy whose pages differ from the RAM copy's, checked against
makedumpfile 1.7.2 (Debian 12's) byte for byte.

makedumpfile is run with --non-mmap: its default mmap path caches a whole 4 MiB
mmap window as if it were linear in paddr (readmem: cached->paddr = pgaddr -
mapoff), so after a page of the RAM copy was read through a window, other pages
of that window come from the RAM copy too: which copy a page is read from then
depends on the order of reads, not on a rule (about half of the marked pages here).
"""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cdbdump.codecs import Codec
from cdbdump.fileio import MappedFile
from cdbdump.memory.physical import ElfMemory
from cdbdump.vmcore.elfcore import ElfCore
from cdbdump.vmcore.kdumpfile import KdumpFile
from cdbdump.writers.kdump import KdumpMetadata, write_kdump
from cdbdump.writers.sink import create_output
from tests.builders import SyntheticKernel
from tests.oracles import run_makedumpfile

PAGE = 4096
ROOT = Path(__file__).resolve().parents[2]
PHDR = struct.Struct("<IIQQQQQQ")
MARKED_EVERY = 7  # every 7th page of the kernel-text copy gets other contents


def _marker(pfn: int) -> bytes:
    return (b"kernel-text copy of pfn " + pfn.to_bytes(8, "little")).ljust(64, b"\xa5") * 64


def _phdrs(path: Path) -> list[tuple[int, tuple[int, ...]]]:
    """(file offset of the header, fields) of every program header."""
    with path.open("rb") as f:
        head = f.read(1 << 16)
    e_phoff, = struct.unpack_from("<Q", head, 0x20)
    e_phnum, = struct.unpack_from("<H", head, 0x38)
    at = [e_phoff + PHDR.size * i for i in range(e_phnum)]
    return [(off, PHDR.unpack_from(head, off)) for off in at]


def _text_and_ram(kernel: SyntheticKernel, path: Path) -> tuple[int, int]:
    """Program-header indexes of the kernel-text PT_LOAD and of the RAM PT_LOAD under it."""
    loads = [(i, f) for i, (_, f) in enumerate(_phdrs(path)) if f[0] == 1]
    text = next(i for i, f in loads if f[4] == kernel.image_paddr)
    ram = next(i for i, f in loads if i != text and f[4] <= kernel.image_paddr < f[4] + f[6])
    return text, ram


def _vmcore_with_other_text(tmp_path: Path) -> tuple[SyntheticKernel, Path, dict[int, bytes]]:
    kernel = SyntheticKernel("6.1", seed=3)
    path = tmp_path / "vmcore"
    kernel.write(path)
    text, _ = _text_and_ram(kernel, path)
    p_offset = _phdrs(path)[text][1][2]
    first = kernel.image_paddr // PAGE
    marked = {pfn: _marker(pfn)
              for pfn in range(first, first + kernel.image_size // PAGE, MARKED_EVERY)}
    with path.open("r+b") as f:
        for pfn, data in marked.items():
            f.seek(p_offset + (pfn - first) * PAGE)
            f.write(data)
    return kernel, path, marked


def _ram(kernel: SyntheticKernel, pfn: int) -> bytes:
    """The page as the builder made it (the RAM copy's contents)."""
    return bytes(kernel.phys.pages(np.array([pfn]))[0])


def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cdbdump", *map(str, args)], cwd=ROOT,
                          text=True, capture_output=True, timeout=300, check=False)


def _pages(dump: Path, pfns: list[int]) -> dict[int, bytes]:
    with MappedFile(dump) as f:
        kd = KdumpFile.open(f)
        return {pfn: kd.read_page(pfn) for pfn in pfns}


def test_the_kernel_text_copy_is_read_where_the_copies_differ(tmp_path: Path) -> None:
    kernel, vmcore, marked = _vmcore_with_other_text(tmp_path)
    out = tmp_path / "out.kdump"
    proc = _cli("-d", "31", vmcore, out)
    assert proc.returncode == 0, proc.stderr
    assert _pages(out, sorted(marked)) == marked
    # a page both copies hold alike is the same either way
    same = kernel.image_paddr // PAGE + 1
    assert _pages(out, [same])[same] == _ram(kernel, same)


def test_a_copy_cut_short_is_backed_by_the_other(tmp_path: Path) -> None:
    # the RAM segment first in program-header order, the text copy last (its data
    # still at the front of the file); the file ends inside the RAM copy, in the image
    kernel, vmcore, marked = _vmcore_with_other_text(tmp_path)
    text, ram = _text_and_ram(kernel, vmcore)
    headers = _phdrs(vmcore)
    with vmcore.open("r+b") as f:
        f.seek(headers[text][0])
        f.write(PHDR.pack(*headers[ram][1]))
        f.seek(headers[ram][0])
        f.write(PHDR.pack(*headers[text][1]))
        ram_fields = headers[ram][1]
        cut_paddr = kernel.image_paddr + kernel.image_size // 2
        f.truncate(ram_fields[2] + cut_paddr - ram_fields[4])
    first = kernel.image_paddr // PAGE
    cut = cut_paddr // PAGE
    out = tmp_path / "out.kdump"
    _cli("-d", "31", vmcore, out)
    with MappedFile(vmcore) as f:
        raw = {pfn: bytes(f.view(headers[text][1][2] + (pfn - first) * PAGE, PAGE))
               for pfn in range(first, first + kernel.image_size // PAGE)}
    got = _pages(out, sorted(raw))
    # before the cut the RAM copy (first in program-header order), after it the
    # text copy: no page of the image is lost or read as zeros
    for pfn in sorted(raw):
        if pfn < cut:
            assert got[pfn] == _ram(kernel, pfn), hex(pfn)
        else:
            assert got[pfn] == raw[pfn], hex(pfn)
    assert any(pfn >= cut for pfn in marked)


@pytest.mark.oracle
@pytest.mark.parametrize(("option", "codec"), [("", Codec.NONE), ("-c", Codec.ZLIB)])
def test_byte_identical_to_makedumpfile(tmp_path: Path, option: str, codec: Codec) -> None:
    kernel, vmcore, marked = _vmcore_with_other_text(tmp_path)
    ref = tmp_path / "ref.kdump"
    proc = run_makedumpfile(vmcore, ref, level=31, codec_option=option, extra=["--non-mmap"])
    assert proc.returncode == 0, proc.stderr
    assert _pages(ref, sorted(marked)) == marked  # makedumpfile reads the text copy too
    # our writer with makedumpfile's bitmaps and header facts over our reader:
    # the same bytes means every page was read from the same copy
    ours = tmp_path / "ours.kdump"
    with MappedFile(vmcore) as elf_file, MappedFile(ref) as ref_file:
        core = ElfCore.parse(elf_file)
        dump = KdumpFile.open(ref_file)
        note = core.vmcoreinfo_note
        assert dump.sub_header is not None and note is not None
        meta = KdumpMetadata(
            utsname=dump.header.utsname, timestamp_sec=dump.header.timestamp_sec,
            page_size=PAGE, max_mapnr=dump.max_mapnr, phys_base=dump.sub_header.phys_base,
            dump_level=dump.sub_header.dump_level, notes_raw=core.notes_raw,
            vmcoreinfo_desc_offset=core.vmcoreinfo_desc_offset,
            vmcoreinfo_size=note.desc_size, nr_cpus=core.nr_cpus,
        )
        with create_output(ours, force=True) as sink:
            write_kdump(sink, meta, dump.bitmap1, dump.bitmap2,
                        ElfMemory(elf_file, core.loads, PAGE), codec, True)
        ref_kept = dump.bitmap2.get_bools(0, dump.max_mapnr)
    assert ours.read_bytes() == ref.read_bytes()
    # and cdbdump's own run keeps the same frames (1.7.2 drops a frame a PT_LOAD
    # ends inside, which cdbdump keeps like makedumpfile >= 1.7.6)
    mine = tmp_path / "mine.kdump"
    proc2 = _cli(*([option] if option else []), "-d", "31", vmcore, mine)
    assert proc2.returncode == 0, proc2.stderr
    with MappedFile(mine) as f:
        kd = KdumpFile.open(f)
        kept = kd.bitmap2.get_bools(0, kd.max_mapnr)
    differ = np.flatnonzero(kept != ref_kept)
    partial = [load.paddr + load.memsz for load in kernel.loads()
               if (load.paddr + load.memsz) % PAGE]
    assert set(differ.tolist()) <= {end // PAGE for end in partial}, differ[:8]
    assert _pages(mine, sorted(marked)) == marked
