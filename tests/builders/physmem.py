"""PhysImage: the physical memory of a synthetic machine, generated on demand.

Each pfn's data is one of: all zero, a *pattern* page, or produced by a *provider* (page
tables, mem_map backing, kernel data, the crash dump bitmap). A pattern page's 8-byte words
are ``pfn << 16 | tag << 9 | word_index`` (tag = the PageKind of the page), so a wrong
offset or a wrong translation shows up as a readable diff (``describe_word``).

Nothing is materialised up front: ``pages(pfns)`` builds any set of pages with numpy and
``iter_nonzero(paddr, size)`` streams the non-zero parts of a range, which is what
ElfCoreBuilder.write() needs to write a 64 GiB machine sparse.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

__all__ = ("PAGE_SIZE", "PhysImage", "Provider", "describe_word", "pattern_pages")

PAGE_SIZE = 4096
PAGE_SHIFT = 12
WORDS_PER_PAGE = PAGE_SIZE // 8
CONTENT_ZERO = 0
CONTENT_PATTERN = 1
CONTENT_PROVIDER = 2
_BLOCK_PAGES = 4096  # 16 MiB per generation step


def pattern_pages(pfns: np.ndarray, tags: np.ndarray) -> np.ndarray:
    """Pattern pages for pfns: uint8 array (len(pfns), 4096)."""
    pfns = np.asarray(pfns, dtype=np.uint64)
    words = (
        (pfns[:, None] << np.uint64(16))
        | (np.asarray(tags, dtype=np.uint64)[:, None] << np.uint64(9))
        | np.arange(WORDS_PER_PAGE, dtype=np.uint64)[None, :]
    )
    return words.astype("<u8").view(np.uint8).reshape(len(pfns), PAGE_SIZE)


def describe_word(word: int) -> str:
    """Decode a pattern word: 'pfn 0x1234 tag 8 word 17'."""
    return f"pfn {word >> 16:#x} tag {(word >> 9) & 0x7F} word {word & 0x1FF}"


@dataclass
class Provider:
    """Pages [start_pfn, end_pfn) whose data comes from a function.

    make(pfns) -> uint8 (len(pfns), 4096). never_zero: the oracle may skip generating
    these pages to decide whether they are all zero.
    """

    start_pfn: int
    end_pfn: int
    make: Callable[[np.ndarray], np.ndarray]
    never_zero: bool = False
    name: str = ""


class PhysImage:
    """Sparse physical memory: content kind and tag per pfn plus providers."""

    def __init__(self, nr_pfns: int) -> None:
        self.nr_pfns = nr_pfns
        self.content = np.zeros(nr_pfns, dtype=np.uint8)
        self.tags = np.zeros(nr_pfns, dtype=np.uint8)
        self.providers: list[Provider] = []
        self.explicit: dict[int, bytes] = {}  # pfn -> 4096 bytes (small structures)

    # -- setup -------------------------------------------------------------------------
    def add_provider(self, provider: Provider) -> None:
        self.providers.append(provider)
        self.content[provider.start_pfn : provider.end_pfn] = CONTENT_PROVIDER

    def set_page(self, pfn: int, data: bytes) -> None:
        """Fix one page's data (padded with zeros to a page)."""
        if len(data) > PAGE_SIZE:
            raise ValueError("more than a page")
        self.explicit[pfn] = bytes(data).ljust(PAGE_SIZE, b"\0")
        self.content[pfn] = CONTENT_PROVIDER

    # -- reading -----------------------------------------------------------------------
    def pages(self, pfns: np.ndarray) -> np.ndarray:
        """Page data for the given pfns (uint8 (n, 4096)); pfns beyond nr_pfns are zero."""
        pfns = np.asarray(pfns, dtype=np.int64)
        out = np.zeros((len(pfns), PAGE_SIZE), dtype=np.uint8)
        inside = pfns < self.nr_pfns
        idx = np.flatnonzero(inside)
        content = self.content[pfns[idx]]
        pat = idx[content == CONTENT_PATTERN]
        if len(pat):
            out[pat] = pattern_pages(pfns[pat], self.tags[pfns[pat]])
        prov = idx[content == CONTENT_PROVIDER]
        if len(prov):
            self._fill_providers(out, pfns, prov)
        return out

    def _fill_providers(self, out: np.ndarray, pfns: np.ndarray, idx: np.ndarray) -> None:
        wanted = pfns[idx]
        done = np.zeros(len(idx), dtype=bool)
        for provider in self.providers:
            sel = (wanted >= provider.start_pfn) & (wanted < provider.end_pfn) & ~done
            if sel.any():
                out[idx[sel]] = provider.make(wanted[sel])
                done |= sel
        if not done.all():
            for j in np.flatnonzero(~done).tolist():
                page = self.explicit.get(int(wanted[j]))
                if page is not None:
                    out[idx[j]] = np.frombuffer(page, dtype=np.uint8)

    def page(self, pfn: int) -> bytes:
        return self.pages(np.array([pfn])).tobytes()

    def read(self, paddr: int, size: int) -> bytes:
        """Raw machine bytes (no notion of PT_LOADs)."""
        first = paddr >> PAGE_SHIFT
        last = (paddr + size + PAGE_SIZE - 1) >> PAGE_SHIFT
        data = self.pages(np.arange(first, last)).tobytes()
        start = paddr - (first << PAGE_SHIFT)
        return data[start : start + size]

    def may_be_nonzero(self, first_pfn: int, last_pfn: int) -> np.ndarray:
        """Per pfn of [first, last): True unless the page is known to be all zero."""
        end = min(last_pfn, self.nr_pfns)
        out = np.zeros(last_pfn - first_pfn, dtype=bool)
        if end > first_pfn:
            out[: end - first_pfn] = self.content[first_pfn:end] != CONTENT_ZERO
        return out

    def iter_nonzero(self, paddr: int, size: int) -> Iterator[tuple[int, bytes]]:
        """(offset from paddr, bytes) for runs of pages that may be non-zero, clipped to range."""
        end = paddr + size
        first = paddr >> PAGE_SHIFT
        last = (end + PAGE_SIZE - 1) >> PAGE_SHIFT
        for block in range(first, last, _BLOCK_PAGES):
            block_end = min(block + _BLOCK_PAGES, last)
            nonzero = self.may_be_nonzero(block, block_end)
            if not nonzero.any():
                continue
            pfns = np.arange(block, block_end)[nonzero]
            data = self.pages(pfns)
            written = data.any(axis=1)  # a provider's all-zero pages stay holes too
            pfns, data = pfns[written], data[written]
            if not len(pfns):
                continue
            # split into runs of consecutive pfns
            breaks = np.flatnonzero(np.diff(pfns) != 1) + 1
            for run_pfns, run_data in zip(
                np.split(pfns, breaks), np.split(data, breaks), strict=True
            ):
                run_start = int(run_pfns[0]) << PAGE_SHIFT
                run_end = (int(run_pfns[-1]) + 1) << PAGE_SHIFT
                lo = max(run_start, paddr)
                hi = min(run_end, end)
                if lo >= hi:
                    continue
                raw = run_data.reshape(-1)[lo - run_start : hi - run_start]
                yield lo - paddr, raw.tobytes()
