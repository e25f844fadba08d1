"""The kdump-compressed ("diskdump") format.

Transcribed from makedumpfile diskdump_mod.h (struct disk_dump_header,
struct kdump_sub_header, page_desc_t) and makedumpfile.h, for x86_64 (LP64,
little endian). Byte order is always explicit and C padding is spelled out.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import numpy as np

KDUMP_SIGNATURE = b"KDUMP   "  # SIG_LEN = 8, no NUL
DISKDUMP_SIGNATURE = b"DISKDUMP"  # the old diskdump signature; readers accept both
HEADER_VERSION = 6  # header_version makedumpfile writes (max_mapnr_64 in the sub header)

UTS_FIELD_LEN = 65  # __NEW_UTS_LEN + 1
UTS_FIELDS = ("sysname", "nodename", "release", "version", "machine", "domainname")

# status (header) and page_desc.flags
DUMP_DH_COMPRESSED_ZLIB = 0x01
DUMP_DH_COMPRESSED_LZO = 0x02
DUMP_DH_COMPRESSED_SNAPPY = 0x04
DUMP_DH_COMPRESSED_INCOMPLETE = 0x08  # header only: dump was cut short
DUMP_DH_EXCLUDED_VMEMMAP = 0x10  # header only: -e
DUMP_DH_COMPRESSED_ZSTD = 0x20
DUMP_DH_COMPRESSED_MASK = (
    DUMP_DH_COMPRESSED_ZLIB
    | DUMP_DH_COMPRESSED_LZO
    | DUMP_DH_COMPRESSED_SNAPPY
    | DUMP_DH_COMPRESSED_ZSTD
)


class DiskDumpHeader(NamedTuple):
    """struct disk_dump_header (464 bytes)."""

    signature: bytes  # char[8]
    header_version: int  # int
    utsname: bytes  # struct new_utsname: 6 x char[65]
    # 6 bytes of padding before the 8-aligned timeval
    timestamp_sec: int  # struct timeval tv_sec
    timestamp_usec: int  # struct timeval tv_usec
    status: int  # unsigned int
    block_size: int  # int
    sub_hdr_size: int  # int, in blocks
    bitmap_blocks: int  # unsigned int, both bitmaps
    max_mapnr: int  # unsigned int, obsolete: min(max_mapnr, 0xffffffff)
    total_ram_blocks: int  # unsigned int, never set
    device_blocks: int  # unsigned int, never set
    written_blocks: int  # unsigned int, never set
    current_cpu: int  # unsigned int, never set
    nr_cpus: int  # int


DISK_DUMP_HEADER = struct.Struct("<8si390s6xqqIiiIIIIIIi")
DISK_DUMP_HEADER_TIMESTAMP_OFFSET = 408
DISK_DUMP_HEADER_STATUS_OFFSET = 424


class KdumpSubHeader(NamedTuple):
    """struct kdump_sub_header (104 bytes), at file offset block_size."""

    phys_base: int  # unsigned long (written from a signed value: stored two's complement)
    dump_level: int  # int, header_version >= 1
    split: int  # int, >= 2
    start_pfn: int  # unsigned long, >= 2, split only
    end_pfn: int  # unsigned long, >= 2, split only
    offset_vmcoreinfo: int  # off_t, >= 3: file offset of the VMCOREINFO note text
    size_vmcoreinfo: int  # unsigned long, >= 3
    offset_note: int  # off_t, >= 4
    size_note: int  # unsigned long, >= 4
    offset_eraseinfo: int  # off_t, >= 5
    size_eraseinfo: int  # unsigned long, >= 5
    start_pfn_64: int  # unsigned long long, >= 6
    end_pfn_64: int  # unsigned long long, >= 6
    max_mapnr_64: int  # unsigned long long, >= 6


KDUMP_SUB_HEADER = struct.Struct("<qiiQQqQqQqQQQQ")

# page_desc_t (24 bytes): one per set bit of the 2nd bitmap, ascending pfn
PAGE_DESC_DTYPE = np.dtype(
    [
        ("offset", "<i8"),  # off_t: file offset of the page data
        ("size", "<u4"),  # unsigned int: stored length
        ("flags", "<u4"),  # unsigned int: DUMP_DH_COMPRESSED_* or 0 (raw)
        ("page_flags", "<u8"),  # unsigned long long: always 0
    ]
)
PAGE_DESC = struct.Struct("<qIIQ")


def split_utsname(raw: bytes) -> dict[str, str]:
    """Decode struct new_utsname into its six NUL-terminated fields."""
    fields = {}
    for i, name in enumerate(UTS_FIELDS):
        chunk = raw[i * UTS_FIELD_LEN : (i + 1) * UTS_FIELD_LEN]
        fields[name] = chunk.split(b"\0", 1)[0].decode("utf-8", "replace")
    return fields


def bitmap_bytes(max_mapnr: int, block_size: int) -> int:
    """Length of one bitmap: ceil(max_mapnr / 8) rounded up to whole blocks."""
    nbytes = (max_mapnr + 7) // 8
    return (nbytes + block_size - 1) // block_size * block_size
