"""Per-class page counters, as makedumpfile's report prints them."""

from __future__ import annotations

from dataclasses import dataclass, fields

__all__ = ("PageCounts",)


@dataclass(slots=True)
class PageCounts:
    """Pages excluded per class (makedumpfile pfn_zero, pfn_cache, ... counters).

    Like makedumpfile, a counter grows for every bit cleared, whether or not it
    was set (reference: makedumpfile exclude_range / clear_bit_on_2nd_bitmap_for_kernel).
    """

    zero: int = 0  # "Pages filled with zero"
    cache: int = 0  # "Non-private cache pages"
    cache_private: int = 0  # "Private cache pages"
    user: int = 0  # "User process data pages"
    free: int = 0  # "Free pages"
    hwpoison: int = 0  # "Hwpoison pages"
    offline: int = 0  # "Offline pages"

    @property
    def total(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self))

    def add(self, other: PageCounts) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
