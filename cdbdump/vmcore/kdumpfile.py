"""Reader for kdump-compressed ("diskdump") files: headers, bitmaps, pages.

Read as physical memory through cdbdump.memory.kdump; also used by verify,
open_dump and as the round-trip oracle of the writer's tests. Layout and reader rules:
makedumpfile diskdump_mod.h; crash diskdump.c (read_dump_header,
dump_is_partial, pfn_to_pos, cache_page); libkdumpfile diskdump.c.

Every structure is bounds-checked against the file, and every problem is a
typed error carrying the file offset of the offending field.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from cdbdump.bitmap import Bitmap
from cdbdump.codecs import Codec, codec_for_flags, decompress_page
from cdbdump.errors import (
    CorruptDumpError,
    NotInDumpError,
    TruncatedDumpError,
    UnknownFormatError,
)
from cdbdump.fileio import FileView
from cdbdump.formats.kdump import (
    DISK_DUMP_HEADER,
    DISKDUMP_SIGNATURE,
    DUMP_DH_COMPRESSED_INCOMPLETE,
    DUMP_DH_COMPRESSED_MASK,
    KDUMP_SIGNATURE,
    KDUMP_SUB_HEADER,
    PAGE_DESC_DTYPE,
    DiskDumpHeader,
    KdumpSubHeader,
    bitmap_bytes,
    split_utsname,
)
from cdbdump.vmcore.pagedecode import DecodeFailed, decode_pages, read_stored
from cdbdump.vmcore.vmcoreinfo import VmcoreInfo

__all__ = ("KdumpFile", "PageDesc")

_DESC_SIZE = PAGE_DESC_DTYPE.itemsize
_CODEC_FLAGS = frozenset(c.flag for c in Codec)
_ALL_CODEC_BITS = sum(_CODEC_FLAGS)  # a page's flags: one of these bits, or 0 (raw)
# page_desc entries read and kept at a time (1.5 MiB): neighbouring lookups (a
# refilter's windows, the mem_map scan's reads) cost no pread each
_DESC_CHUNK = 1 << 16
# pfns whose descriptors lie further apart than this are looked up with a read each
# (a sparse window over a large dump: never the whole table between them)
_DESC_GAP = 1 << 9
# runs of lost descriptors remembered from one pass over the table; a dump with more
# (only a damaged one) has its descriptors read wherever "is it stored" is asked
_MAX_LOST_RUNS = 1 << 16
_MIN_BLOCK_SIZE = 512
_MAX_BLOCK_SIZE = 1 << 18  # 256 KiB pages: well above any Linux page size
# header offsets, for error messages
_OFF_HEADER_VERSION = 8
_OFF_BLOCK_SIZE = 428
_OFF_SUB_HDR_SIZE = 432
_OFF_BITMAP_BLOCKS = 436


class PageDesc(NamedTuple):
    """page_desc_t: where and how one page's data is stored."""

    offset: int  # file offset of the data; 0 = lost (incomplete dump)
    size: int
    flags: int  # DUMP_DH_COMPRESSED_* or 0 (raw)
    page_flags: int


class KdumpFile:
    """An opened kdump-compressed file. Build it with :meth:`open`."""

    def __init__(
        self,
        file: FileView,
        header: DiskDumpHeader,
        sub_header: KdumpSubHeader | None,
        *,
        max_mapnr: int,
        bitmap1: Bitmap,
        bitmap2: Bitmap,
        offset_bitmap1: int,
        offset_bitmap2: int,
        notes_raw: bytes,
        vmcoreinfo_raw: bytes | None,
    ) -> None:
        self.file = file
        self.header = header
        self.sub_header = sub_header
        self.page_size = header.block_size
        self.max_mapnr = max_mapnr
        self.bitmap1 = bitmap1
        self.bitmap2 = bitmap2
        self.offset_bitmap1 = offset_bitmap1
        self.offset_bitmap2 = offset_bitmap2
        self.notes_raw = notes_raw
        self.vmcoreinfo_raw = vmcoreinfo_raw
        self.offset_page_desc = (
            1 + header.sub_hdr_size + header.bitmap_blocks
        ) * header.block_size
        self._shift = header.block_size.bit_length() - 1
        self._word_rank, self._words = _rank_table(bitmap2)
        self.nr_dumpable = bitmap2.count()
        split = sub_header is not None and sub_header.split and header.header_version >= 6
        self.start_pfn = sub_header.start_pfn_64 if split and sub_header else 0
        self.end_pfn = sub_header.end_pfn_64 if split and sub_header else max_mapnr
        self._rank_base = int(self._ranks(np.array([self.start_pfn], dtype=np.int64))[0])
        self.nr_descs = int(self._ranks(np.array([self.end_pfn], dtype=np.int64))[0]) - (
            self._rank_base
        )
        self.offset_data = self.offset_page_desc + self.nr_dumpable * _DESC_SIZE
        # descriptors the file holds (a dump cut short holds fewer: the rest are "lost")
        self._nr_descs_in_file = max(0, (file.size - self.offset_page_desc) // _DESC_SIZE)
        self._desc_chunk_lo = 0
        self._desc_chunk = np.zeros(0, dtype=PAGE_DESC_DTYPE)
        self._lost: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]] | None = None
        self._lost_known = False
        self._vmcoreinfo: VmcoreInfo | None = None

    # -- opening ------------------------------------------------------------------------

    @classmethod
    def open(cls, file: FileView) -> KdumpFile:
        """Parse and validate the headers and both bitmaps of ``file``."""
        if file.size < DISK_DUMP_HEADER.size:
            first = bytes(file.view(0, min(file.size, 16), "header")) if file.size else b""
            if first[:8] in (KDUMP_SIGNATURE, DISKDUMP_SIGNATURE):
                raise TruncatedDumpError(
                    "disk_dump_header", file_offset=0, needed=DISK_DUMP_HEADER.size,
                    available=file.size,
                )
            raise UnknownFormatError(file.path, first)
        raw = bytes(file.view(0, DISK_DUMP_HEADER.size, "disk_dump_header"))
        if raw[:8] not in (KDUMP_SIGNATURE, DISKDUMP_SIGNATURE):
            raise UnknownFormatError(file.path, raw[:16])
        header = DiskDumpHeader(*DISK_DUMP_HEADER.unpack(raw))
        _check_header(header)
        bs = header.block_size

        sub_header: KdumpSubHeader | None = None
        if header.signature == KDUMP_SIGNATURE and header.header_version >= 1:
            sub_raw = bytes(file.view(bs, KDUMP_SUB_HEADER.size, "kdump_sub_header"))
            sub_header = KdumpSubHeader(*KDUMP_SUB_HEADER.unpack(sub_raw))
        version = header.header_version

        max_mapnr = header.max_mapnr
        if sub_header is not None and version >= 6:
            max_mapnr = sub_header.max_mapnr_64
        notes_raw = b""
        vmcoreinfo_raw: bytes | None = None
        if sub_header is not None and version >= 4 and sub_header.size_note:
            notes_raw = bytes(
                _region(file, sub_header.offset_note, sub_header.size_note, "ELF notes",
                        field_offset=bs + 48)
            )
        if sub_header is not None and version >= 3 and sub_header.size_vmcoreinfo:
            vmcoreinfo_raw = bytes(
                _region(file, sub_header.offset_vmcoreinfo, sub_header.size_vmcoreinfo,
                        "VMCOREINFO", field_offset=bs + 32)
            )

        offset_bitmap1 = (1 + header.sub_hdr_size) * bs
        bitmap_area = header.bitmap_blocks * bs
        if bitmap_area * 8 < max_mapnr:
            # libkdumpfile diskdump.c: the bitmap must cover max_mapnr pages
            raise CorruptDumpError(
                f"{header.bitmap_blocks} bitmap blocks cannot cover max_mapnr {max_mapnr:#x}",
                file_offset=_OFF_BITMAP_BLOCKS,
                field="bitmap_blocks",
            )
        area = _region(file, offset_bitmap1, bitmap_area, "bitmaps")
        nbytes = (max_mapnr + 7) // 8
        if header.bitmap_blocks >= 2 * (bitmap_bytes(max_mapnr, bs) // bs):
            # crash dump_is_partial: 1st bitmap, then the dumpable one in the 2nd half
            offset_bitmap2 = offset_bitmap1 + bitmap_area // 2
            bits1 = _bitmap(area[:nbytes], max_mapnr)
            bits2 = _bitmap(area[bitmap_area // 2 : bitmap_area // 2 + nbytes], max_mapnr)
        else:  # one bitmap only: every present page is dumpable
            offset_bitmap2 = offset_bitmap1
            bits1 = bits2 = _bitmap(area[:nbytes], max_mapnr)
        return cls(
            file, header, sub_header, max_mapnr=max_mapnr, bitmap1=bits1, bitmap2=bits2,
            offset_bitmap1=offset_bitmap1, offset_bitmap2=offset_bitmap2,
            notes_raw=notes_raw, vmcoreinfo_raw=vmcoreinfo_raw,
        )

    # -- header facts -------------------------------------------------------------------

    @property
    def codec(self) -> Codec:
        """The compression the header announces (pages may still be raw)."""
        flag = self.header.status & DUMP_DH_COMPRESSED_MASK
        return codec_for_flags(flag) if flag in _CODEC_FLAGS else Codec.NONE

    @property
    def is_incomplete(self) -> bool:
        return bool(self.header.status & DUMP_DH_COMPRESSED_INCOMPLETE)

    @property
    def utsname(self) -> dict[str, str]:
        return split_utsname(self.header.utsname)

    @property
    def dump_level(self) -> int | None:
        return self.sub_header.dump_level if self.sub_header is not None else None

    @property
    def phys_base(self) -> int | None:
        return self.sub_header.phys_base if self.sub_header is not None else None

    @property
    def vmcoreinfo(self) -> VmcoreInfo | None:
        if self._vmcoreinfo is None and self.vmcoreinfo_raw is not None:
            self._vmcoreinfo = VmcoreInfo.parse(self.vmcoreinfo_raw)
        return self._vmcoreinfo

    # -- pfn -> page_desc ---------------------------------------------------------------

    def _ranks(self, pfns: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Number of set 2nd-bitmap bits below each pfn (popcount rank)."""
        word = pfns >> 6
        below = (np.uint64(1) << (pfns & 63).astype(np.uint64)) - np.uint64(1)
        partial = np.bitwise_count(self._words[word] & below).astype(np.int64)
        ranks: npt.NDArray[np.int64] = self._word_rank[word] + partial
        return ranks

    def is_dumpable(self, pfn: int) -> bool:
        return 0 <= pfn < self.max_mapnr and bool(self.bitmap2.bits[pfn >> 3] >> (pfn & 7) & 1)

    def page_descs(self, pfns: npt.NDArray[np.int64]) -> npt.NDArray[np.void]:
        """The page_desc entries of dumpable, ascending ``pfns`` (vectorised).

        Descriptors past the end of the file (a dump cut short) read as zero,
        i.e. "lost", as crash and makedumpfile treat them.
        """
        pfns = np.asarray(pfns, dtype=np.int64)
        out = np.zeros(pfns.size, dtype=PAGE_DESC_DTYPE)
        if not pfns.size:
            return out
        if pfns[0] < self.start_pfn or pfns[-1] >= self.end_pfn:
            bad = int(pfns[(pfns < self.start_pfn) | (pfns >= self.end_pfn)][0])
            raise NotInDumpError(bad << self._shift, self.page_size, "outside this dump's pfns")
        bits = (self.bitmap2.bits[pfns >> 3] >> (pfns & 7).astype(np.uint8)) & 1
        if not bits.all():
            bad = int(pfns[bits == 0][0])
            raise NotInDumpError(bad << self._shift, self.page_size, "excluded from the dump")
        ranks = self._ranks(pfns) - self._rank_base
        # as rows of three u64: numpy copies those far faster than structured items
        rows = out.view(np.uint64).reshape(pfns.size, 3)
        if int(ranks[-1]) - int(ranks[0]) < _DESC_CHUNK:  # ascending pfns: ascending ranks
            self._fill_descs(ranks, rows)
            return out
        breaks = (np.flatnonzero(np.diff(ranks) > _DESC_GAP) + 1).tolist()
        for a, b in zip([0, *breaks], [*breaks, pfns.size], strict=True):
            self._fill_descs(ranks[a:b], rows[a:b])
        return out

    def _fill_descs(self, ranks: npt.NDArray[np.int64], rows: npt.NDArray[np.uint64]) -> None:
        """rows[i] = descriptor ranks[i] (ascending), left zero past the end of the file."""
        lo = int(ranks[0])
        hi = int(ranks[-1]) + 1
        avail = max(0, min(hi, self._nr_descs_in_file) - lo)
        if avail <= 0:
            return
        table = self._desc_table(lo, lo + avail).view(np.uint64).reshape(avail, 3)
        if avail == ranks.size:  # consecutive descriptors, all in the file
            rows[:] = table
        elif avail == hi - lo:  # all in the file
            np.take(table, ranks - lo, axis=0, out=rows)
        else:
            inside = ranks - lo < avail
            rows[inside] = table[ranks[inside] - lo]

    def _desc_table(self, lo: int, hi: int) -> npt.NDArray[np.void]:
        """page_desc entries [lo, hi) of this file (all inside it), through a chunk cache."""
        chunk_lo = self._desc_chunk_lo
        if chunk_lo <= lo and hi <= chunk_lo + self._desc_chunk.size:
            return self._desc_chunk[lo - chunk_lo : hi - chunk_lo]
        if hi - lo > _DESC_CHUNK:  # a long range: read as is, not kept
            return np.frombuffer(self._read_descs(lo, hi), dtype=PAGE_DESC_DTYPE)
        end = max(hi, min(lo + _DESC_CHUNK, self._nr_descs_in_file))
        self._desc_chunk = np.frombuffer(self._read_descs(lo, end), dtype=PAGE_DESC_DTYPE)
        self._desc_chunk_lo = lo
        return self._desc_chunk[: hi - lo]

    def _read_descs(self, lo: int, hi: int) -> memoryview:
        return self.file.view(self.offset_page_desc + lo * _DESC_SIZE, (hi - lo) * _DESC_SIZE,
                              "page_desc table")

    def page_desc(self, pfn: int) -> PageDesc:
        self._check_pfn(pfn)
        d = self.page_descs(np.array([pfn], dtype=np.int64))[0]
        return PageDesc(int(d["offset"]), int(d["size"]), int(d["flags"]), int(d["page_flags"]))

    def desc_file_offset(self, pfn: int) -> int:
        """File offset of ``pfn``'s page_desc entry."""
        self._check_pfn(pfn)
        rank = int(self._ranks(np.array([pfn], dtype=np.int64))[0]) - self._rank_base
        return self.offset_page_desc + rank * _DESC_SIZE

    def _check_pfn(self, pfn: int) -> None:
        paddr = pfn << self._shift
        if not 0 <= pfn < self.max_mapnr:
            raise NotInDumpError(paddr, self.page_size, f"beyond max_mapnr {self.max_mapnr:#x}")
        if not self.is_dumpable(pfn):
            raise NotInDumpError(paddr, self.page_size, "excluded from the dump")

    # -- pages --------------------------------------------------------------------------

    @property
    def eraseinfo_raw(self) -> bytes:
        """The erase information makedumpfile --config recorded (header_version >= 5)."""
        sub = self.sub_header
        if sub is None or self.header.header_version < 5 or not sub.size_eraseinfo:
            return b""
        return bytes(_region(self.file, sub.offset_eraseinfo, sub.size_eraseinfo,
                             "eraseinfo", field_offset=self.page_size + 64))

    def read_page(self, pfn: int) -> bytes:
        """The page's content; NotInDumpError for excluded or lost pages."""
        return self.load_page(pfn, self.page_desc(pfn))

    def load_page(self, pfn: int, desc: PageDesc) -> bytes:
        """The page ``desc`` describes, decompressed; typed errors for bad or lost pages."""
        ps = self.page_size
        if desc.offset == 0:
            raise NotInDumpError(pfn << self._shift, ps, "lost: the dump is incomplete")
        problem = ""
        if desc.size == 0 or desc.size > ps:
            problem = f"has size {desc.size:#x} (block size {ps:#x})"
        elif desc.offset < self.offset_data:
            problem = (f"points at {desc.offset:#x}, before the page data area at "
                       f"{self.offset_data:#x}")
        elif desc.flags and desc.flags not in _CODEC_FLAGS:
            problem = f"has unknown flags {desc.flags:#x}"
        if problem:
            raise CorruptDumpError(
                f"page_desc of pfn {pfn:#x} {problem}",
                file_offset=self.desc_file_offset(pfn), field="page_desc",
            )
        data = self.file.view(desc.offset, desc.size, f"data of pfn {pfn:#x}")
        return decompress_page(desc.flags, data, ps, file_offset=desc.offset)

    def stored_bools(self, first: int, last: int) -> npt.NDArray[np.bool_]:
        """For pfns [first, last) inside [start_pfn, end_pfn): dumpable and not lost."""
        bools = self.bitmap2.get_bools(first, last)
        runs = self.lost_runs()
        if runs is None:
            pfns = np.flatnonzero(bools) + first
            bools[pfns - first] = self.page_descs(pfns)["offset"] != 0
            return bools
        starts, ends = runs
        if starts.size:
            idx = np.flatnonzero(bools)
            r0 = int(self._ranks(np.array([first], dtype=np.int64))[0]) - self._rank_base
            r1 = r0 + int(idx.size)
            a = int(np.searchsorted(ends, r0, side="right"))
            b = int(np.searchsorted(starts, r1, side="left"))
            for lo, hi in zip(starts[a:b].tolist(), ends[a:b].tolist(), strict=True):
                bools[idx[max(lo, r0) - r0 : min(hi, r1) - r0]] = False
        return bools

    def lost_runs(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]] | None:
        """(starts, ends) of the runs of this file's descriptors (0 = its first) whose
        page is lost: offset 0 (makedumpfile write_kdump_page, flag_nospace), or past
        the end of a file cut short. One pass over the table, remembered; None when
        there are too many runs to keep (then the descriptors are read when asked).
        """
        if self._lost_known:
            return self._lost
        self._lost_known = True
        starts: list[int] = []
        ends: list[int] = []
        nr_in_file = min(self.nr_descs, self._nr_descs_in_file)
        for lo in range(0, nr_in_file, _DESC_CHUNK):
            hi = min(nr_in_file, lo + _DESC_CHUNK)
            offsets = np.frombuffer(self._read_descs(lo, hi), dtype=np.int64)[::3]
            lost = offsets == 0
            if not lost.any():
                continue
            edges = np.flatnonzero(np.diff(lost, prepend=False, append=False)) + lo
            for start, end in zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True):
                if ends and ends[-1] == start:
                    ends[-1] = end
                else:
                    starts.append(start)
                    ends.append(end)
            if len(starts) > _MAX_LOST_RUNS:
                return None
        if nr_in_file < self.nr_descs:
            if ends and ends[-1] == nr_in_file:
                ends[-1] = self.nr_descs
            else:
                starts.append(nr_in_file)
                ends.append(self.nr_descs)
        self._lost = (np.array(starts, dtype=np.int64), np.array(ends, dtype=np.int64))
        return self._lost

    def pages_into(self, pfns: npt.NDArray[np.int64], out: npt.NDArray[np.uint8]) -> None:
        """Decode the pages of dumpable, ascending ``pfns`` into ``out`` (a page each).

        The bulk form of :meth:`read_page`: one page_desc lookup, a few preads, one
        native decode call. Fails as read_page would at the first bad page (lost,
        corrupt page_desc, data past the end, data that does not decode).
        """
        n = int(pfns.size)
        if not n:
            return
        descs = self.page_descs(pfns)
        offsets = descs["offset"]
        sizes = descs["size"]
        flags = descs["flags"]
        ps = self.page_size
        bad = ((sizes == 0) | (sizes > ps) | (offsets < self.offset_data)
               | (offsets > self.file.size - sizes.astype(np.int64))
               | ((flags & ~np.uint32(_ALL_CODEC_BITS)) != 0)
               | ((flags & (flags - np.uint32(1))) != 0))  # offset 0 (lost) is before the data
        stop = int(np.argmax(bad)) if bad.any() else n
        if stop:
            data, rel = read_stored(self.file, offsets[:stop], sizes[:stop], "page data")
            try:
                decode_pages(data, rel, sizes[:stop], flags[:stop], offsets[:stop], out, ps)
            except DecodeFailed as exc:
                self._raise_for(int(pfns[exc.index]), descs[exc.index])
        if stop < n:
            self._raise_for(int(pfns[stop]), descs[stop])

    def _raise_for(self, pfn: int, d: np.void) -> None:
        """The error of a page the bulk path rejected: the per-page path's own."""
        desc = PageDesc(int(d["offset"]), int(d["size"]), int(d["flags"]), int(d["page_flags"]))
        self.load_page(pfn, desc)  # raises
        raise CorruptDumpError(f"data of pfn {pfn:#x} does not decode to one page",
                               file_offset=desc.offset, field="page data")

    def nr_zero_descs(self) -> int:
        """Dumpable pages sharing the one zero page (dump level bit 1), from the descriptors."""
        first = self.offset_data  # makedumpfile writes the shared zero page first
        count = 0
        for pfns in self.iter_dumpable_pfns():
            descs = self.page_descs(pfns)
            count += int(np.count_nonzero((descs["offset"] == first) & (descs["flags"] == 0)))
        return count if self.dump_level is not None and self.dump_level & 1 else 0

    def iter_dumpable_pfns(self, window: int = 1 << 20) -> Iterator[npt.NDArray[np.int64]]:
        """Ascending dumpable pfns (set bits of the 2nd bitmap), a window at a time."""
        for pfns in self.bitmap2.iter_set_pfns(window):
            inside = pfns[(pfns >= self.start_pfn) & (pfns < self.end_pfn)]
            if inside.size:
                yield inside

    def iter_pages(self, window: int = 4096) -> Iterator[tuple[int, bytes]]:
        """(pfn, content) for every dumpable page that is not lost, in pfn order."""
        ps = self.page_size
        for pfns in self.iter_dumpable_pfns(window):
            stored = pfns[self.page_descs(pfns)["offset"] != 0]
            buf = np.empty(stored.size * ps, dtype=np.uint8)
            self.pages_into(stored, buf)
            for i, pfn in enumerate(stored.tolist()):
                yield pfn, buf[i * ps : (i + 1) * ps].tobytes()


# -- helpers ------------------------------------------------------------------------------


def _check_header(h: DiskDumpHeader) -> None:
    if h.header_version < 0:
        raise CorruptDumpError(
            f"header_version {h.header_version} is negative",
            file_offset=_OFF_HEADER_VERSION, field="header_version",
        )
    bs = h.block_size
    if not _MIN_BLOCK_SIZE <= bs <= _MAX_BLOCK_SIZE or bs & (bs - 1):
        raise CorruptDumpError(
            f"block_size {bs:#x} is not a power of two in [{_MIN_BLOCK_SIZE:#x}, "
            f"{_MAX_BLOCK_SIZE:#x}]",
            file_offset=_OFF_BLOCK_SIZE, field="block_size",
        )
    if h.sub_hdr_size < 0:
        raise CorruptDumpError(
            f"sub_hdr_size {h.sub_hdr_size} is negative",
            file_offset=_OFF_SUB_HDR_SIZE, field="sub_hdr_size",
        )


def _region(
    file: FileView, offset: int, size: int, what: str, *, field_offset: int | None = None
) -> memoryview:
    if offset < 0 or size < 0 or offset + size > file.size:
        if field_offset is not None and (offset < 0 or size < 0):
            raise CorruptDumpError(
                f"{what} at {offset:#x}+{size:#x} is impossible",
                file_offset=field_offset, field=what,
            )
        raise TruncatedDumpError(what, file_offset=offset, needed=offset + size,
                                 available=file.size)
    return file.view(offset, size, what)


def _bitmap(raw: memoryview, nr_bits: int) -> Bitmap:
    bits = np.frombuffer(raw, dtype=np.uint8).copy()
    if nr_bits & 7:  # bits past max_mapnr are ignored (and Bitmap wants them clear)
        bits[-1] &= (1 << (nr_bits & 7)) - 1
    return Bitmap(nr_bits, bits)


def _rank_table(bitmap: Bitmap) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint64]]:
    """(set bits before each 64-bit word, the words), with one spare zero word."""
    nbytes = bitmap.bits.size
    padded = np.zeros((nbytes + 7) // 8 * 8 + 8, dtype=np.uint8)
    padded[:nbytes] = bitmap.bits
    words = padded.view("<u8")
    counts = np.bitwise_count(words).astype(np.int64)
    rank = np.zeros(words.size, dtype=np.int64)
    np.cumsum(counts[:-1], out=rank[1:])
    return rank, words.astype(np.uint64, copy=False)
