#!/usr/bin/env bash
# fresh-demo.sh - `make demo` in a fresh copy of this repository with no C compiler:
# gcc, cc, c++, g++ and x86_64-linux-gnu-gcc come first in PATH and fail (and log
# that they were called). Proves that the demo needs only Python >= 3.11 and make
# (pip may use its wheel cache and PyPI); the optional C extension's build may call the
# compiler, fails, and cdbdump uses its Python path. Then `cdbdump -l` runs on the demo
# vmcore: LZO without building anything.
#
#   scripts/fresh-demo.sh [WORKDIR]     (default: a temporary directory, removed after)
#
# The copy is `git clone` of HEAD when the work tree is clean, else the work tree's
# tracked and untracked-not-ignored files (so uncommitted work is what gets tested).
# Environment: PYTHON (default python3), DEMO_TIMEOUT (seconds, default 900).
# Exit status: 0 the demo ran without a compiler, 1 otherwise.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${1:-}
if [[ -z $WORK ]]; then
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/cdbdump-fresh-demo.XXXXXX")
  trap 'rm -rf "$WORK"' EXIT
fi
say() { echo "fresh-demo: $*" >&2; }
fail() { say "FAIL: $*"; exit 1; }

CLONE=$WORK/cdbdump
rm -rf "$CLONE"
if [[ -z $(git -C "$REPO" status --porcelain) ]]; then
  git clone -q "$REPO" "$CLONE"
else
  mkdir -p "$CLONE"
  git -C "$REPO" ls-files -z --cached --others --exclude-standard |
    (cd "$REPO" && xargs -0 cp --parents -t "$CLONE" 2>/dev/null || true)
  say "work tree has uncommitted changes: copied its files instead of cloning"
fi
[[ ! -e $CLONE/.venv && ! -e $CLONE/.cache ]] || fail "the copy is not fresh"

NOCC=$WORK/no-compiler
mkdir -p "$NOCC"
: > "$WORK/compiler-calls.log"
for cc in gcc cc c++ g++ x86_64-linux-gnu-gcc x86_64-linux-gnu-g++; do
  printf '#!/bin/sh\necho "%s $*" >> "%s"\necho "%s: no compiler on this machine" >&2\nexit 1\n' \
    "$cc" "$WORK/compiler-calls.log" "$cc" > "$NOCC/$cc"
  chmod +x "$NOCC/$cc"
done
export PATH=$NOCC:$PATH
for cc in gcc cc x86_64-linux-gnu-gcc; do
  ! "$cc" --version >/dev/null 2>&1 || fail "$cc still works"
done
: > "$WORK/compiler-calls.log"

start=$(date +%s.%N)
( cd "$CLONE" && timeout "${DEMO_TIMEOUT:-900}" make demo PYTHON="${PYTHON:-python3}" ) \
  > "$WORK/demo.log" 2>&1 || { tail -30 "$WORK/demo.log" >&2; fail "make demo failed"; }
secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
# The optional native compressor (setup.py) may try the compiler and go on without it;
# nothing else may need one.
others=$(grep -v -e '_pagebatch' -e '/probe\.' "$WORK/compiler-calls.log" || true)
[[ -z $others ]] || fail "a compiler was called: $(head -3 <<< "$others")"
"$CLONE/.venv/bin/python" -P -c 'import cdbdump._pagebatch' 2>/dev/null &&
  fail "cdbdump._pagebatch exists although no compiler ran"
DEMO=$CLONE/.cache/demo
[[ -s $DEMO/demo.kdump ]] || fail "make demo wrote no $DEMO/demo.kdump"
grep -q "Excluded pages" "$WORK/demo.log" || fail "no report in the demo's output"

# LZO from the wheel: python-lzo is not there, lzallright is.
"$CLONE/.venv/bin/python" -c 'import lzo' 2>/dev/null && fail "python-lzo got installed"
"$CLONE/.venv/bin/cdbdump" -l -d 31 "$DEMO/demo.vmcore" "$DEMO/demo.lzo.kdump" \
  > "$WORK/lzo.log" 2>&1 || { cat "$WORK/lzo.log" >&2; fail "cdbdump -l failed"; }
[[ -s $DEMO/demo.lzo.kdump ]] || fail "cdbdump -l wrote nothing"
echo "fresh-demo: make demo passed without a C compiler in ${secs} s (then cdbdump -l)"
