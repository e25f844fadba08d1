"""Sizes and key offsets of every on-disk layout, against the C compiler's numbers
(x86_64: makedumpfile diskdump_mod.h, linux elf.h)."""

from __future__ import annotations

import struct

from cdbdump.formats import crash_dump_bitmap, elf, flattened, kdump


def test_disk_dump_header_size_and_offsets() -> None:
    assert kdump.DISK_DUMP_HEADER.size == 464
    fields = dict.fromkeys(kdump.DiskDumpHeader._fields, 0)
    fields.update(signature=b"KDUMP   ", utsname=b"", timestamp_sec=0x1122334455667788,
                  status=0xAABBCCDD, nr_cpus=0x0EADBEEF)
    raw = kdump.DISK_DUMP_HEADER.pack(*kdump.DiskDumpHeader(**fields))
    assert raw[408:416] == struct.pack("<q", 0x1122334455667788)  # timestamp after 6 pad bytes
    assert raw[402:408] == b"\0" * 6
    assert raw[424:428] == struct.pack("<I", 0xAABBCCDD)  # status
    assert raw[460:464] == struct.pack("<i", 0x0EADBEEF)  # nr_cpus
    assert kdump.DISK_DUMP_HEADER_TIMESTAMP_OFFSET == 408
    assert kdump.DISK_DUMP_HEADER_STATUS_OFFSET == 424


def test_sub_header_and_page_desc() -> None:
    assert kdump.KDUMP_SUB_HEADER.size == 104
    values = list(range(1, 15))
    raw = kdump.KDUMP_SUB_HEADER.pack(*values)
    assert struct.unpack_from("<Q", raw, 96)[0] == 14  # max_mapnr_64 at 96
    assert struct.unpack_from("<q", raw, 32)[0] == 6  # offset_vmcoreinfo at 32
    assert kdump.PAGE_DESC.size == 24
    assert kdump.PAGE_DESC_DTYPE.itemsize == 24
    assert kdump.PAGE_DESC_DTYPE.fields is not None
    assert kdump.PAGE_DESC_DTYPE.fields["flags"][1] == 12
    assert kdump.PAGE_DESC_DTYPE.fields["page_flags"][1] == 16


def test_bitmap_bytes_rounds_to_blocks() -> None:
    # write_kdump_header's arithmetic: max_mapnr 4,456,448 → 136 blocks per bitmap
    assert kdump.bitmap_bytes(4_456_448, 4096) == 136 * 4096
    assert kdump.bitmap_bytes(1, 4096) == 4096
    assert kdump.bitmap_bytes(4096 * 8 + 1, 4096) == 2 * 4096


def test_elf_and_flattened_sizes() -> None:
    assert elf.ELF64_EHDR.size == 64
    assert elf.ELF64_PHDR.size == 56
    assert elf.ELF64_SHDR.size == 64
    assert elf.ELF64_NHDR.size == 12
    assert flattened.MAKEDUMPFILE_HEADER.size == 32
    assert flattened.MAKEDUMPFILE_DATA_HEADER.size == 16
    assert len(flattened.MAKEDUMPFILE_SIGNATURE) == 16


def test_crash_dump_bitmap_info_layout() -> None:
    s = crash_dump_bitmap.CRASH_DUMP_BITMAP_INFO
    assert s.size == 64
    raw = s.pack(1, 0x1000, 0x2000, 3, 4, 5, 6, 7)
    assert struct.unpack_from("<Q", raw, 8)[0] == 0x1000  # bitmap at 8
    assert struct.unpack_from("<Q", raw, 16)[0] == 0x2000  # bitmap_size at 16
    assert struct.unpack_from("<Q", raw, 56)[0] == 7  # hwpoison_pages at 56
