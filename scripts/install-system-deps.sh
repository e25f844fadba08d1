#!/usr/bin/env bash
# install-system-deps.sh - the Debian packages `make test` needs, installed when missing.
# The one list: `make test`, .ci/run (through make test) and fixtures/make-real-vmcore.sh
# all use it. `make demo` needs none of them.
#
#   scripts/install-system-deps.sh            install what is missing (root + apt-get)
#   scripts/install-system-deps.sh --check    only say what is missing
#   scripts/install-system-deps.sh --list     print the list, one package a line
#   scripts/install-system-deps.sh PKG...     the same for these packages only
#
# Exit status: 0 everything present (or installed), 1 missing and not installable
# here (not root, no apt-get, or apt-get failed): the missing packages are printed.
set -euo pipefail

PACKAGES=(
  # venv with every extra: python-lzo builds against liblzo2 (liblzo2-dev, a C compiler);
  # cdbdump's own C page compressor (setup.py) against zlib, liblzo2, libsnappy, libzstd
  python3 python3-venv python3-dev build-essential liblzo2-dev zlib1g-dev libsnappy-dev
  libzstd-dev git
  # independent readers used as oracles
  makedumpfile crash python3-libkdumpfile
  # real vmcores: Debian kernels under QEMU, packages fetched from other suites
  qemu-system-x86 qemu-utils busybox-static kexec-tools cpio e2fsprogs kmod
  util-linux zstd xz-utils binutils time debian-archive-keyring
  # the crash-dump-bitmap kernel (fixtures/make-real-bitmap-vmcore.sh)
  bc bison flex libelf-dev libssl-dev perl
  # fault injection (tests/faults): fusermount3 and libfuse3 for the EIO file
  fuse3
)

CHECK=0
case ${1:-} in
  --list) printf '%s\n' "${PACKAGES[@]}"; exit 0 ;;
  --check) CHECK=1; shift ;;
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
esac
(($#)) && PACKAGES=("$@")

say() { echo "install-system-deps: $*" >&2; }
if ! command -v dpkg-query >/dev/null; then
  say "not a Debian system (no dpkg-query); these Debian packages are needed: ${PACKAGES[*]}"
  exit 1
fi
missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
    missing+=("$pkg")
done
((${#missing[@]})) || exit 0

if ((CHECK)) || [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
  why="not root"; ((CHECK)) && why="--check"
  command -v apt-get >/dev/null || why="no apt-get"
  say "missing Debian packages (${why}): ${missing[*]}"
  say "install them as root: apt-get install --no-install-recommends ${missing[*]}"
  exit 1
fi
say "apt-get install ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
    </dev/null; then
  say "apt-get could not install: ${missing[*]}"
  exit 1
fi
