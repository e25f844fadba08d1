# Stub of the optional C extension cdbdump/_pagebatch.c (built by setup.py).
from __future__ import annotations

from typing import Any

CODECS: tuple[str, ...]  # of "zlib", "lzo", "snappy", "zstd": what was compiled in
MAX_PAGE_SIZE: int

class error(Exception): ...  # a codec library reported a failure

def compress_into(flag: int, data: Any, index: Any | None, page_size: int, sizes: Any,
                  flags: Any, out: Any, skip_zero: bool = False, /) -> int: ...
def compress_slack(flag: int, page_size: int, /) -> int: ...
def compress_pages(flag: int, data: Any, index: Any | None, page_size: int, sizes: Any,
                   flags: Any, /) -> bytes: ...

def decompress_pages(data: Any, offsets: Any, sizes: Any, flags: Any, page_size: int,
                     out: Any, /) -> int: ...
