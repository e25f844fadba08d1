#!/usr/bin/env python3
"""Print the README's performance table (Markdown) from `make bench`'s JSON.

    python bench/readme_table.py [.cache/bench/bench.json]
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _num(value: object, fmt: str) -> str:
    if not isinstance(value, int | float) or math.isnan(value):
        return "—"
    return format(value, fmt)


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / ".cache" / "bench" / "bench.json"
    data = json.loads(path.read_text())
    load = data.get("load_average", [0.0])[0]
    print(f"Measured with `make bench` on {data.get('cores')} cores at load average {load:.1f} "
          "(wall medians of A/B alternated runs; CPU = user+sys medians).\n")
    print("| run | cdbdump s (CPU s) | makedumpfile s (CPU s) | ratio wall (CPU) | RSS MiB "
          "(makedumpfile) | floor s | of floor |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in data["rows"]:
        print(f"| {r['run']} | {_num(r['ours_s'], '.2f')} ({_num(r['ours_cpu_s'], '.2f')}) | "
              f"{_num(r['theirs_s'], '.2f')} ({_num(r['theirs_cpu_s'], '.2f')}) | "
              f"{_num(r['ratio'], '.2f')}x ({_num(r['cpu_ratio'], '.2f')}x) | "
              f"{_num(r['ours_rss_mib'], '.0f')} ({_num(r['theirs_rss_mib'], '.0f')}) | "
              f"{_num(r.get('floor_s'), '.2f')} | {_num(r.get('of_floor'), '.2f')}x |")


if __name__ == "__main__":
    main()
