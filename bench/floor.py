#!/usr/bin/env python3
"""The floor of one dump: compress exactly the pages a dump kept, on all cores.

    python bench/floor.py VMCORE DUMP

DUMP is a kdump-compressed file written from VMCORE (an ELF vmcore). The pages
it stores (its 2nd bitmap, less the pages sharing the zero-page descriptor)
are gathered from VMCORE window by window outside the clock, then compressed
with DUMP's codec by cdbdump's PageCompressor on every core, on the clock: the
fastest compressor cdbdump has (the C batch compressor cdbdump._pagebatch for
every codec it was built with; else python-zstandard's multi-call API for zstd).
Prints one JSON object: pages, bytes, compress_s (wall), compress_cpu_s, native.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cdbdump.fileio import MappedFile  # noqa: E402
from cdbdump.memory.physical import fill  # noqa: E402
from cdbdump.pipeline import open_input  # noqa: E402
from cdbdump.vmcore.kdumpfile import KdumpFile  # noqa: E402
from cdbdump.writers.compress import PageCompressor, default_threads  # noqa: E402

WINDOW_PAGES = 8192  # 32 MiB gathered at a time


def cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def main() -> None:
    vmcore, dump_path = Path(sys.argv[1]), Path(sys.argv[2])
    with MappedFile(vmcore) as vf, MappedFile(dump_path) as df:
        image = open_input([vf])
        dump = KdumpFile.open(df)
        ps = image.page_size
        shift = ps.bit_length() - 1
        buf = np.empty(WINDOW_PAGES * ps, dtype=np.uint8)
        wall = cpu = 0.0
        nr_pages = nr_bytes = 0
        zero_offset = None
        with PageCompressor(dump.codec, ps, threads=default_threads()) as pc:
            native = pc.native
            for pfns in dump.iter_dumpable_pfns(WINDOW_PAGES):
                descs = dump.page_descs(pfns)
                if zero_offset is None and dump.dump_level and dump.dump_level & 1:
                    zero_offset = int(descs["offset"].min())  # the shared zero page comes first
                kept = pfns if zero_offset is None else pfns[descs["offset"] != zero_offset]
                if not kept.size:
                    continue
                breaks = np.flatnonzero(np.diff(kept) != 1) + 1
                starts = np.concatenate(([0], breaks)).tolist()
                ends = np.concatenate((breaks, [kept.size])).tolist()
                for lo, hi in zip(starts, ends, strict=True):
                    fill(image.phys, int(kept[lo]) << shift, buf[lo * ps : hi * ps])
                data = buf[: kept.size * ps]
                t0, c0 = time.perf_counter(), cpu_s()
                packed = pc.compress_pages(data)
                wall += time.perf_counter() - t0
                cpu += cpu_s() - c0
                nr_pages += int(kept.size)
                nr_bytes += len(packed.payload)
    print(json.dumps({"pages": nr_pages, "bytes": nr_bytes, "compress_s": wall,
                      "compress_cpu_s": cpu, "native": native}))


if __name__ == "__main__":
    main()
