"""LZO1X page codec behind one interface: python-lzo when installed, else lzallright.

* python-lzo wraps liblzo2's ``lzo1x_1_compress``, the compressor makedumpfile's
  ``-l`` calls (write_kdump_page: ``lzo1x_1_compress(..., wrkmem)``), so its pages are
  byte-identical to makedumpfile's. It has no wheels: pip builds it against liblzo2's
  headers with a C compiler (Debian: liblzo2-dev, python3-dev, build-essential).
* lzallright is a wheel (safe Rust, no compiler). It decodes any LZO1X stream, but it
  compresses with lzokay's own match finder: a valid LZO1X stream that makedumpfile,
  crash and libkdumpfile decode, not the bytes lzo1x_1 writes for most pages, and about
  20x slower than liblzo.

``CDBDUMP_LZO=python-lzo|lzallright`` forces one backend (the tests run both).
Errors of either library reach callers as :class:`LzoError` (``error``), never with the
library's own payload (lzallright puts the partial output in its exception).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any, NamedTuple

from cdbdump.errors import UnsupportedError

__all__ = ("BACKENDS", "Backend", "LzoError", "backend", "compress", "decompress", "error")

ENV_BACKEND = "CDBDUMP_LZO"
INSTALL_HINT = (
    "LZO compression (-l) needs python-lzo (byte-identical to makedumpfile; "
    "pip install 'cdbdump[lzo-exact]', builds against liblzo2-dev with a C compiler) "
    "or the wheel-only lzallright (pip install 'cdbdump[lzo]')"
)


class LzoError(Exception):
    """A stored page that is not a valid LZO1X stream of the expected size."""


error = LzoError  # the name compress._codec_errors looks for


class Backend(NamedTuple):
    name: str  # the PyPI package
    byte_identical: bool  # compress() writes exactly liblzo lzo1x_1_compress's bytes
    compress: Callable[[bytes], bytes]
    compress_buffer: Callable[[Any], bytes]  # any page buffer (a view too): the hot path
    decompress: Callable[[bytes, int], bytes]  # (stored, page_size) -> page


def _python_lzo(module: Any) -> Backend:
    lzo_error = module.error

    def compress_page(page: bytes) -> bytes:
        out: bytes = module.compress(page, 1, False)  # level 1 = lzo1x_1, no header
        return out

    def compress_buffer(page: Any, _compress: Any = module.compress,
                        _bytes: type[bytes] = bytes) -> bytes:
        # python-lzo takes bytes only; one Python frame per page (locals bound early)
        out: bytes = _compress(_bytes(page), 1, False)
        return out

    def decompress_page(data: bytes, page_size: int) -> bytes:
        try:
            out: bytes = module.decompress(data, False, page_size)  # bounded by page_size
        except lzo_error as exc:
            raise LzoError(str(exc)) from None
        return out

    return Backend("python-lzo", True, compress_page, compress_buffer, decompress_page)


def _lzallright(module: Any) -> Backend:
    compressor = module.LZOCompressor()
    lzo_error = module.LZOError

    def compress_page(page: bytes) -> bytes:
        out: bytes = compressor.compress(page)
        return out

    def compress_buffer(page: Any) -> bytes:
        out: bytes = compressor.compress(bytes(page))
        return out

    def decompress_page(data: bytes, page_size: int) -> bytes:
        # The output grows past the hint; the reader never hands over more than one
        # page of input, so a stream can expand to at most ~255 times that.
        try:
            out: bytes = module.LZOCompressor.decompress(data, page_size)
        except lzo_error as exc:
            raise LzoError(f"lzallright: {exc.args[0] if exc.args else exc}") from None
        return out

    return Backend("lzallright", False, compress_page, compress_buffer, decompress_page)


# In order of preference: (PyPI package, importable module, adapter).
BACKENDS: tuple[tuple[str, str, Callable[[Any], Backend]], ...] = (
    ("python-lzo", "lzo", _python_lzo),
    ("lzallright", "lzallright", _lzallright),
)
_chosen: dict[str, Backend] = {}  # by the value of $CDBDUMP_LZO ("" when unset)


def backend() -> Backend:
    """The LZO backend to use; UnsupportedError naming what to install if none is."""
    wanted = os.environ.get(ENV_BACKEND, "")
    if wanted in _chosen:
        return _chosen[wanted]
    names = [name for name, _, _ in BACKENDS]
    if wanted and wanted not in names:
        raise UnsupportedError(f"{ENV_BACKEND}={wanted!r}: expected one of {', '.join(names)}")
    for name, module_name, adapt in BACKENDS:
        if wanted and name != wanted:
            continue
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        _chosen[wanted] = adapt(module)
        return _chosen[wanted]
    if wanted:
        raise UnsupportedError(f"{ENV_BACKEND}={wanted} but {wanted} is not installed")
    raise UnsupportedError(INSTALL_HINT)


def page_compressor() -> Callable[[Any], bytes]:
    """The chosen backend's compressor of one page buffer, bound once (no per-page
    backend lookup): what the page writer calls."""
    return backend().compress_buffer


def compress(page: bytes) -> bytes:
    """One page as LZO1X (see the module docstring for which bytes)."""
    return backend().compress(bytes(page))


def decompress(data: bytes, page_size: int) -> bytes:
    """One stored page; LzoError if it is not LZO1X (the size is the caller's check)."""
    return backend().decompress(bytes(data), page_size)
