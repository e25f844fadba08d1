from __future__ import annotations

import pytest

from cdbdump.errors import BadVmcoreInfoValue, MissingVmcoreInfoKey
from cdbdump.vmcore.vmcoreinfo import VmcoreInfo

TEXT = (
    b"OSRELEASE=6.1.0-57-cloud-amd64\n"
    b"PAGESIZE=4096\n"
    b"SYMBOL(init_top_pgt)=ffffffffa1e0a000\n"
    b"SYMBOL(init_top_pgt)=0\n"  # the first line of a key wins
    b"NUMBER(phys_base)=-614465536\n"
    b"NUMBER(VMALLOC_START)=0xffffc90000000000\n"
    b"OFFSET(page.flags)=0\n"
    b"SIZE(page)=64\n"
    b"LENGTH(zone.free_area)=11\n"
    b"KERNELOFFSET=2ba00000\n"
    b"CRASHTIME=1764470000\n"
)


def test_typed_accessors() -> None:
    info = VmcoreInfo.parse(TEXT)
    assert info.osrelease == "6.1.0-57-cloud-amd64"
    assert info.page_size == 4096
    assert info.symbol("init_top_pgt") == 0xFFFFFFFFA1E0A000
    assert info.phys_base == -614465536
    assert info.number("VMALLOC_START") == 0xFFFFC90000000000  # hex fallback
    assert info.offset("page.flags") == 0
    assert info.size("page") == 64
    assert info.length("zone.free_area") == 11
    assert info.kerneloffset == 0x2BA00000
    assert info.crashtime == 1764470000
    assert "SIZE(page)" in info
    assert info.get_number("PG_slab") is None


def test_missing_and_bad_keys_are_typed() -> None:
    info = VmcoreInfo.parse(b"SYMBOL(mem_section)=zz\nPAGESIZE=4095\nNUMBER(x)=1g\n")
    with pytest.raises(MissingVmcoreInfoKey) as missing:
        info.number("PG_lru")
    assert missing.value.key == "NUMBER(PG_lru)"
    with pytest.raises(BadVmcoreInfoValue) as bad:
        info.symbol("mem_section")
    assert bad.value.key == "SYMBOL(mem_section)"
    with pytest.raises(BadVmcoreInfoValue):
        _ = info.page_size
    with pytest.raises(BadVmcoreInfoValue):
        info.number("x")


def test_text_stops_at_nul_and_keeps_raw() -> None:
    raw = b"PAGESIZE=4096\n\0OSRELEASE=ignored\n"
    info = VmcoreInfo.parse(raw)
    assert info.raw == raw
    assert info.osrelease is None
