#!/usr/bin/env bash
# build.sh - build cdbdump as ONE self-contained executable for a kdump capture
# environment (busybox or dracut initramfs, no Python there). Only glibc and the
# dynamic loader are taken from the target system, as for any Debian/RHEL binary.
#
#   packaging/capture/build.sh [-p pyinstaller|nuitka] [-o OUT] [-w WORKDIR]
#
#   -p PACKAGER  pyinstaller (default: faster start, smaller, see README) or nuitka
#   -o OUT       the one-file executable; default .cache/capture/PACKAGER/cdbdump.
#                Beside it, OUT.bundle/ holds the same program unpacked (OUT.bundle/cdbdump
#                and its libraries): the form for an initramfs, where the one file's
#                unpack into $TMPDIR would cost RAM twice (README, "In the capture kernel").
#   -w WORKDIR   build directory; default .cache/capture/PACKAGER
# Environment: PYTHON (default .venv/bin/python, with cdbdump and its extras
#   installed; the packager is pip-installed into it when missing).
# The build is skipped when OUT is newer than every file of the package.
# Exit status: 0 built (or up to date), 1 failure, 2 usage.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PACKAGER=pyinstaller OUT="" WORKDIR=""
while getopts "p:o:w:h" opt; do
  case $opt in
    p) PACKAGER=$OPTARG ;; o) OUT=$OPTARG ;; w) WORKDIR=$OPTARG ;;
    h) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
    *) exit 2 ;;
  esac
done
[[ $PACKAGER == pyinstaller || $PACKAGER == nuitka ]] || { echo "bad -p $PACKAGER" >&2; exit 2; }
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
WORKDIR=${WORKDIR:-$REPO/.cache/capture/$PACKAGER}
OUT=${OUT:-$WORKDIR/cdbdump}
ENTRY=$REPO/packaging/capture/cdbdump_main.py
mkdir -p "$WORKDIR" "$(dirname "$OUT")"
WORKDIR=$(cd "$WORKDIR" && pwd)

newest_source=$(find "$REPO/cdbdump" "$REPO/packaging/capture" "$REPO/pyproject.toml" -type f \
                  -newer "$OUT" -print -quit 2>/dev/null || true)
if [[ -x $OUT && -z $newest_source ]]; then
  echo "up to date: $OUT" >&2; exit 0
fi

# The same lists as in cdbdump.spec (PyInstaller's side).
EXCLUDE=(tkinter unittest pydoc doctest zstandard._cffi _ssl ssl _hashlib pytest
         hypothesis numpy.testing numpy.f2py cdbdump.batch dask distributed)
# Imported by name at run time (cdbdump/writers/compress.py), so declared here.
CODECS=(lzo cramjam)

export PYTHONPATH=$REPO   # the venv's install is editable; packagers want the tree
case $PACKAGER in
  pyinstaller)
    "$PYTHON" -c 'import PyInstaller' 2>/dev/null ||
      "$PYTHON" -m pip install -q 'pyinstaller>=6.10'
    "$PYTHON" -m PyInstaller --noconfirm --clean --log-level WARN \
      --distpath "$WORKDIR/dist" --workpath "$WORKDIR/work" "$REPO/packaging/capture/cdbdump.spec"
    built=$WORKDIR/dist/cdbdump-onefile
    rm -rf "$OUT.bundle" && cp -a "$WORKDIR/dist/cdbdump-bundle" "$OUT.bundle"
    ;;
  nuitka)
    "$PYTHON" -c 'import nuitka' 2>/dev/null ||
      "$PYTHON" -m pip install -q 'nuitka>=2.4' ordered-set
    command -v patchelf >/dev/null || { echo "nuitka needs patchelf (apt-get install patchelf)" >&2; exit 1; }
    args=(--onefile --output-dir="$WORKDIR/out" --output-filename=cdbdump --quiet
          --assume-yes-for-downloads --include-package=cdbdump --python-flag=no_site)
    for m in "${CODECS[@]}"; do args+=(--include-module="$m"); done
    for m in "${EXCLUDE[@]}"; do args+=(--nofollow-import-to="$m"); done
    "$PYTHON" -m nuitka "${args[@]}" "$ENTRY"
    built=$WORKDIR/out/cdbdump
    rm -rf "$OUT.bundle" && cp -a "$WORKDIR/out/cdbdump_main.dist" "$OUT.bundle"
    mv "$OUT.bundle/cdbdump_main.bin" "$OUT.bundle/cdbdump" 2>/dev/null || true
    ;;
esac
[[ $built -ef $OUT ]] || cp "$built" "$OUT"
# proved here, not in the initramfs: it starts and every codec is there
for exe in "$OUT" "$OUT.bundle/cdbdump"; do
  "$exe" --version | grep -q "zstd.*enabled" || { echo "$exe does not start" >&2; exit 1; }
  if "$exe" --version | grep -q disabled; then
    echo "$exe lacks a codec: $("$exe" --version | grep disabled)" >&2; exit 1
  fi
  # the venv's C page compressor (cdbdump._pagebatch) must have come along, every codec
  # it was built with (lzo, snappy, zstd need their libraries in the bundle)
  for codec in $("$PYTHON" -c 'import cdbdump._pagebatch as m; print(*m.CODECS)' 2>/dev/null); do
    if ! grep -q "^  $codec"$'\t'".*(native)" <<<"$("$exe" --version)"; then
      echo "$exe lacks cdbdump._pagebatch's $codec" >&2; exit 1
    fi
  done
done
echo "$OUT"
