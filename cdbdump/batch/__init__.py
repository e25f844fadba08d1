"""cdbdump batch: many saved dumps, one work function, a local pool or a Dask cluster.

Layout (each module has one job):
  work.py      run_one(input, output, options): the one work function every executor calls
  discover.py  SRC arguments (files, directories, globs) -> (input, output) jobs
  splitsets.py the files of a --split set, found by their headers, as one input
  existing.py  does an existing output verify (header complete, sizes consistent)?
  publish.py   temporary names, atomic no-clobber rename, stale temporary files
  manifest.py  DIR/batch.jsonl: append records, read the previous runs, merged summary
  limits.py    a worker's memory bound and per-input peak RSS
  tasks.py     Task, the Executor protocol, and what a finished task yields (settle)
  local.py     the default executor: a process pool sized to the machine
  cluster.py   the Dask executor (`cdbdump[dask]`): LocalCluster or a scheduler address
  bounded.py   a Dask task: run_one in a child process under the worker memory bound
  shards.py    one huge dump across workers by pfn ranges (--split), reassembled
  hooks.py     where verify and --dump-dmesg plug in
  runner.py    composes the above; silent, reports through a callback
  cli.py       `cdbdump batch`, a thin click layer
"""

from __future__ import annotations

from cdbdump.batch.runner import BatchResult, run_batch
from cdbdump.batch.work import BatchOptions, Outcome, run_one

__all__ = ("BatchOptions", "BatchResult", "Outcome", "run_batch", "run_one")
