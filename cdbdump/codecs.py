"""Page codecs of the kdump-compressed format: one row per codec, for reader and writer.

reference: makedumpfile write_kdump_page (compression) and
readpage_kdump_compressed (decompression). Each page is compressed on its own:

* zlib: ``compress2(level Z_BEST_SPEED)``: zlib wrapper, window 15, memLevel 8
  (= ``zlib.compress(page, 1)``; identical bytes need the same zlib build).
* LZO: ``lzo1x_1_compress``, no header (backend choice: :mod:`cdbdump._lzo`).
* snappy: ``snappy_compress``, the raw (unframed) format.
* zstd: ``ZSTD_compressCCtx(level 1)``: content size in the frame header, no
  checksum, no dictionary id.

The third-party decompressors' exceptions are translated to CorruptDumpError in
:func:`decompress_page` and nowhere else.
"""

from __future__ import annotations

import enum
import functools
import importlib
import sys
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeAlias

from cdbdump.errors import CorruptDumpError, UnsupportedError
from cdbdump.formats.kdump import (
    DUMP_DH_COMPRESSED_LZO,
    DUMP_DH_COMPRESSED_SNAPPY,
    DUMP_DH_COMPRESSED_ZLIB,
    DUMP_DH_COMPRESSED_ZSTD,
)

__all__ = ("BufferLike", "Codec", "CodecSpec", "codec_for_flags", "decompress_page")

# Anything with the buffer protocol (bytes, memoryview over an mmap, numpy array).
BufferLike: TypeAlias = Any
PageFunction = Callable[[BufferLike], BufferLike]


class Codec(enum.Enum):
    """A page compression algorithm; the value is its disk_dump_header status bit."""

    NONE = 0
    ZLIB = DUMP_DH_COMPRESSED_ZLIB
    LZO = DUMP_DH_COMPRESSED_LZO
    SNAPPY = DUMP_DH_COMPRESSED_SNAPPY
    ZSTD = DUMP_DH_COMPRESSED_ZSTD

    @property
    def spec(self) -> CodecSpec:
        return _SPECS[self]

    @property
    def flag(self) -> int:
        """The header status bit and page_desc flags value (0 for NONE)."""
        return int(self.value)

    @property
    def label(self) -> str:
        """Lower-case name as makedumpfile -v prints it (zlib, lzo, snappy, zstd; none)."""
        return self.name.lower()

    @property
    def makedumpfile_option(self) -> str:
        return self.spec.option

    @property
    def pypi_package(self) -> str | None:
        """The optional PyPI package this codec needs (None: always available)."""
        return self.spec.pypi_package

    @property
    def available(self) -> bool:
        """False when the optional PyPI package this codec needs is not installed."""
        try:
            self.check_available()
        except UnsupportedError:
            return False
        return True

    def check_available(self) -> ModuleType | None:
        """The codec's optional module (None if it needs none).

        Raises:
            UnsupportedError: naming the PyPI package to install.
        """
        spec = self.spec
        if spec.module is None:
            return None
        try:
            module = importlib.import_module(spec.module)
        except ImportError as exc:
            raise UnsupportedError(
                f"{self.name} compression ({spec.option}) needs the PyPI package "
                f"{spec.pypi_package} (pip install 'cdbdump[{self.label}]')"
            ) from exc
        if spec.ready is not None:
            spec.ready(module)
        return module

    def page_function(self) -> PageFunction:
        """A compressor of one page (thread-safe: zstd keeps a context per thread)."""
        make = self.spec.compressor
        if make is None:
            raise UnsupportedError(f"{self.name} does not compress")
        return make(self.check_available())


@dataclass(frozen=True, slots=True)
class CodecSpec:
    """Everything cdbdump knows about one codec."""

    option: str  # makedumpfile's command-line option
    module: str | None  # optional module to import (None: part of the base install)
    pypi_package: str | None  # what to pip install for it
    ready: Callable[[ModuleType], object] | None  # raises UnsupportedError if unusable
    pooled: bool  # worth a thread pool (see PageCompressor)
    compressor: Callable[[ModuleType | None], PageFunction] | None
    decompressor: Callable[[ModuleType | None, BufferLike, int], bytes] | None


def codec_for_flags(flags: int) -> Codec:
    """The codec a page_desc ``flags`` value names (0 = raw); CorruptDumpError if none."""
    for codec in Codec:
        if codec.flag == flags:
            return codec
    raise CorruptDumpError(f"page_desc flags {flags:#x} name no known compression")


# -- compression --------------------------------------------------------------------------


def _zlib_compressor(_module: ModuleType | None) -> PageFunction:
    # Z_BEST_SPEED, like makedumpfile's compress2(); a partial: no Python frame per page
    return functools.partial(zlib.compress, level=1)


def _lzo_compressor(module: ModuleType | None) -> PageFunction:
    return module.page_compressor()  # type: ignore[union-attr,no-any-return]  # cdbdump._lzo


def _snappy_compressor(module: ModuleType | None) -> PageFunction:
    return module.snappy.compress_raw  # type: ignore[union-attr,no-any-return]


_ZSTD_LOCAL = threading.local()


def new_zstd_compressor() -> Any:
    import zstandard  # imported by the runs that use zstd only (start-up time)

    # ZSTD_compressCCtx(ctx, ..., 1): level 1, content size written, no checksum
    return zstandard.ZstdCompressor(
        level=1, write_content_size=True, write_checksum=False, write_dict_id=False
    )


def zstd_compressor() -> Any:
    """This thread's reusable zstd context (makedumpfile reuses one ZSTD_CCtx)."""
    cctx = getattr(_ZSTD_LOCAL, "cctx", None)
    if cctx is None:
        cctx = _ZSTD_LOCAL.cctx = new_zstd_compressor()
    return cctx


def _zstd_compressor(_module: ModuleType | None) -> PageFunction:
    return lambda page: zstd_compressor().compress(page)


# -- decompression (the reader's one choke point for codec errors) -----------------------


def decompress_page(
    flags: int, data: BufferLike, page_size: int, *, file_offset: int | None = None
) -> bytes:
    """Decompress one stored page, never producing more than ``page_size`` bytes.

    Any codec failure, or output that is not exactly ``page_size`` bytes, is
    a CorruptDumpError at ``file_offset`` (the page data's offset in the dump).
    """
    codec = codec_for_flags(flags)
    decompress = codec.spec.decompressor
    if decompress is None:
        if len(data) != page_size:
            raise CorruptDumpError(
                f"raw page has size {len(data):#x}, page size is {page_size:#x}",
                file_offset=file_offset,
                field="page data",
            )
        return bytes(data)
    module = codec.check_available()
    try:
        out = decompress(module, data, page_size)
    except _codec_errors(module) as exc:
        raise _bad_page(codec, file_offset, str(exc)) from exc
    if len(out) != page_size:
        raise _bad_page(codec, file_offset, f"decompressed to {len(out):#x} bytes")
    return out


def _codec_errors(module: ModuleType | None) -> tuple[type[BaseException], ...]:
    """What the decompressors raise on bad input: python-lzo's ``lzo.error`` and
    cramjam's ``DecompressionError`` come from the optional modules themselves."""
    errors: list[type[BaseException]] = [zlib.error, ValueError, OverflowError]
    zstandard = sys.modules.get("zstandard")  # imported by _zstd_decompress when it ran
    if zstandard is not None:
        errors.append(zstandard.ZstdError)
    for name in ("error", "DecompressionError"):
        exc_type = getattr(module, name, None)
        if isinstance(exc_type, type) and issubclass(exc_type, BaseException):
            errors.append(exc_type)
    return tuple(errors)


def _bad_page(codec: Codec, file_offset: int | None, detail: str) -> CorruptDumpError:
    return CorruptDumpError(
        f"{codec.name} page does not decompress to one page: {detail}",
        file_offset=file_offset,
        field="page data",
    )


def _zlib_decompress(_module: ModuleType | None, data: BufferLike, page_size: int) -> bytes:
    dobj = zlib.decompressobj()
    out = dobj.decompress(data, page_size)
    if not dobj.eof or dobj.unconsumed_tail:
        raise ValueError("zlib stream longer than a page or truncated")
    return out


def _lzo_decompress(module: ModuleType | None, data: BufferLike, page_size: int) -> bytes:
    out: bytes = module.decompress(bytes(data), page_size)  # type: ignore[union-attr]
    return out  # cdbdump._lzo: its LzoError is module.error


def _snappy_decompress(module: ModuleType | None, data: BufferLike, page_size: int) -> bytes:
    # The raw format starts with the uncompressed length as a varint: check it
    # before letting the library allocate anything.
    length = _snappy_length(bytes(data[:10]))
    if length != page_size:
        raise ValueError(f"snappy header says {length:#x} bytes")
    return bytes(module.snappy.decompress_raw(bytes(data)))  # type: ignore[union-attr]


def _snappy_length(head: bytes) -> int:
    value = 0
    for shift, byte in zip(range(0, 35, 7), head, strict=False):
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value
    raise ValueError("bad snappy length varint")


def _zstd_decompress(_module: ModuleType | None, data: BufferLike, page_size: int) -> bytes:
    import zstandard

    size = zstandard.frame_content_size(data)
    if size > page_size:
        # python-zstandard sizes its output by the frame header and ignores
        # max_output_size when the header has a content size.
        raise ValueError(f"zstd frame declares {size:#x} bytes")
    dctx = getattr(_ZSTD_LOCAL, "dctx", None)
    if dctx is None:
        dctx = _ZSTD_LOCAL.dctx = zstandard.ZstdDecompressor()
    out: bytes = dctx.decompress(data, max_output_size=page_size)
    return out


# zlib, python-lzo, cramjam and python-zstandard release the GIL around the
# compression call (checked: a Python thread keeps running while another
# compresses a large buffer; lzallright, cdbdump._lzo's other backend, was not
# checked: if it holds the GIL, threads only do not help), so every
# codec runs on the thread pool; LZO and snappy compress a 4 KiB page in ~1-3 us,
# close to the cost of the Python call around it, which holds the GIL between
# pages: that is why the writer prefers cdbdump._pagebatch (C, 128 pages a call)
# for every codec it was built with, and these per-page functions are its fallback.
_SPECS: dict[Codec, CodecSpec] = {
    Codec.NONE: CodecSpec("", None, None, None, False, None, None),
    Codec.ZLIB: CodecSpec("-c", None, None, None, True, _zlib_compressor, _zlib_decompress),
    # cdbdump._lzo picks python-lzo (makedumpfile's bytes) or the wheel-only lzallright;
    # its backend() raises UnsupportedError naming what to install
    Codec.LZO: CodecSpec("-l", "cdbdump._lzo", "python-lzo or lzallright",
                         lambda m: m.backend(), True, _lzo_compressor, _lzo_decompress),
    Codec.SNAPPY: CodecSpec("-p", "cramjam", "cramjam", None, True, _snappy_compressor,
                            _snappy_decompress),
    Codec.ZSTD: CodecSpec("-z", None, None, None, True, _zstd_compressor, _zstd_decompress),
}
