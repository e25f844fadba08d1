"""Which container an input is, from its first bytes."""

from __future__ import annotations

import enum

from cdbdump.fileio import FileView
from cdbdump.formats.elf import ELFMAG
from cdbdump.formats.flattened import MAKEDUMPFILE_SIGNATURE
from cdbdump.formats.kdump import DISKDUMP_SIGNATURE, KDUMP_SIGNATURE

__all__ = ("DumpFormat", "sniff")


class DumpFormat(enum.Enum):
    ELF = "elf"
    KDUMP = "kdump-compressed"
    FLATTENED = "flattened"
    UNKNOWN = "unknown"


def sniff(file: FileView) -> DumpFormat:
    head = bytes(file.view(0, min(16, file.size), "signature"))
    if head.startswith(ELFMAG):
        return DumpFormat.ELF
    if head[:8] in (KDUMP_SIGNATURE, DISKDUMP_SIGNATURE):
        return DumpFormat.KDUMP
    if head == MAKEDUMPFILE_SIGNATURE:
        return DumpFormat.FLATTENED
    return DumpFormat.UNKNOWN
