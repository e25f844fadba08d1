"""The kernel patch (kernel/crash_dump_bitmap/) declares the struct our format reads.

The real tier boots the patched kernel; this checks the patch text itself, so a
change on either side shows without building a kernel.
"""

from __future__ import annotations

import re
from pathlib import Path

from cdbdump.formats.crash_dump_bitmap import (
    CRASH_DUMP_BITMAP_INFO,
    CURRENT_BITMAP_INFO_VERSION,
    CrashDumpBitmapInfo,
)
from cdbdump.mm.crash_bitmap import SYMBOL_NAME

PATCH_DIR = Path(__file__).resolve().parents[2] / "kernel" / "crash_dump_bitmap"
C_TYPES = {"unsigned int": 4, "unsigned long long": 8, "unsigned long": 8}  # x86_64 LP64


def _patch() -> str:
    patches = sorted(PATCH_DIR.glob("0*.patch"))
    assert patches, f"no patch in {PATCH_DIR}"
    return "\n".join(p.read_text() for p in patches)


def _added_struct(text: str) -> list[tuple[str, str]]:
    added = "\n".join(line[1:] for line in text.splitlines() if line.startswith("+"))
    body = re.search(r"struct crash_dump_bitmap_info \{\n(.*?)\n\};", added, re.S)
    assert body, "the patch declares no struct crash_dump_bitmap_info"
    fields = []
    for line in body.group(1).splitlines():
        m = re.match(r"\s*((?:unsigned )?(?:int|long long|long))\s+(\w+);", line)
        assert m, f"unexpected struct line {line!r}"
        fields.append((m.group(1), m.group(2)))
    return fields


def test_patch_struct_has_our_fields_in_our_order() -> None:
    fields = _added_struct(_patch())
    assert [name for _, name in fields] == list(CrashDumpBitmapInfo._fields)


def test_patch_struct_has_our_layout() -> None:
    offset, layout = 0, []
    for ctype, _ in _added_struct(_patch()):
        size = C_TYPES[ctype]
        offset = -(-offset // size) * size  # natural alignment
        layout.append((offset, size))
        offset += size
    total = -(-offset // 8) * 8
    assert total == CRASH_DUMP_BITMAP_INFO.size
    # our struct format, field by field: '<I4xQQQQQQQ'
    ours = [(0, 4)] + [(8 + 8 * i, 8) for i in range(len(layout) - 1)]
    assert layout == ours


def test_patch_exports_symbol_and_version() -> None:
    text = _patch()
    assert f"+\tVMCOREINFO_SYMBOL({SYMBOL_NAME});" in text
    m = re.search(r"#define CRASH_DUMP_BITMAP_INFO_VERSION\s+(\d+)", text)
    assert m and int(m.group(1)) == CURRENT_BITMAP_INFO_VERSION
