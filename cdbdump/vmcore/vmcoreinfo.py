"""VMCOREINFO: the kernel's "KEY=VALUE" lines, with typed accessors.

reference: makedumpfile read_vmcoreinfo_symbol / read_vmcoreinfo_long
(makedumpfile.c); linux kernel/vmcore_info.c. SYMBOL values are hex without
0x; SIZE/OFFSET/LENGTH/NUMBER are decimal, re-parsed as hex when that fails
(the kernel writes NUMBER(VMALLOC_START)=0x...). The first line with a key wins.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cdbdump.errors import BadVmcoreInfoValue, MissingVmcoreInfoKey

__all__ = ("VmcoreInfo",)


def _parse_long(key: str, raw: str) -> int:
    try:
        return int(raw, 10)
    except ValueError:
        pass
    try:
        return int(raw, 16)
    except ValueError:
        raise BadVmcoreInfoValue(key, raw) from None


@dataclass(frozen=True, slots=True)
class VmcoreInfo:
    """Parsed VMCOREINFO text. ``raw`` keeps the exact note bytes."""

    raw: bytes
    entries: dict[str, str] = field(repr=False)

    @classmethod
    def parse(cls, raw: bytes) -> VmcoreInfo:
        entries: dict[str, str] = {}
        text = raw.split(b"\0", 1)[0].decode("ascii", "replace")
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep and key and key not in entries:
                entries[key] = value.strip()
        return cls(raw=raw, entries=entries)

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def text(self, key: str) -> str:
        try:
            return self.entries[key]
        except KeyError:
            raise MissingVmcoreInfoKey(key) from None

    # -- typed accessors; get_* return None when the key is absent --------------

    def get_symbol(self, name: str) -> int | None:
        key = f"SYMBOL({name})"
        raw = self.entries.get(key)
        if raw is None:
            return None
        try:
            return int(raw, 16)
        except ValueError:
            raise BadVmcoreInfoValue(key, raw, "expected hex") from None

    def symbol(self, name: str) -> int:
        value = self.get_symbol(name)
        if value is None:
            raise MissingVmcoreInfoKey(f"SYMBOL({name})")
        return value

    def _get_long(self, kind: str, name: str) -> int | None:
        key = f"{kind}({name})"
        raw = self.entries.get(key)
        return None if raw is None else _parse_long(key, raw)

    def _long(self, kind: str, name: str) -> int:
        value = self._get_long(kind, name)
        if value is None:
            raise MissingVmcoreInfoKey(f"{kind}({name})")
        return value

    def get_number(self, name: str) -> int | None:
        return self._get_long("NUMBER", name)

    def number(self, name: str) -> int:
        return self._long("NUMBER", name)

    def get_offset(self, name: str) -> int | None:
        return self._get_long("OFFSET", name)

    def offset(self, name: str) -> int:
        return self._long("OFFSET", name)

    def get_size(self, name: str) -> int | None:
        return self._get_long("SIZE", name)

    def size(self, name: str) -> int:
        return self._long("SIZE", name)

    def get_length(self, name: str) -> int | None:
        return self._get_long("LENGTH", name)

    def length(self, name: str) -> int:
        return self._long("LENGTH", name)

    # -- plain keys -------------------------------------------------------------

    @property
    def osrelease(self) -> str | None:
        return self.entries.get("OSRELEASE")

    @property
    def page_size(self) -> int | None:
        raw = self.entries.get("PAGESIZE")
        if raw is None:
            return None
        size = _parse_long("PAGESIZE", raw)
        if size <= 0 or size & (size - 1) or size > 1 << 20:
            raise BadVmcoreInfoValue("PAGESIZE", raw, "not a power of two page size")
        return size

    @property
    def crashtime(self) -> int | None:
        raw = self.entries.get("CRASHTIME")
        return None if raw is None else _parse_long("CRASHTIME", raw)

    @property
    def kerneloffset(self) -> int | None:
        raw = self.entries.get("KERNELOFFSET")
        if raw is None:
            return None
        try:
            return int(raw, 16)
        except ValueError:
            raise BadVmcoreInfoValue("KERNELOFFSET", raw, "expected hex") from None

    @property
    def phys_base(self) -> int | None:
        # NUMBER(phys_base) is a signed decimal, often negative under KASLR
        return self.get_number("phys_base")
