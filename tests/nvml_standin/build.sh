#!/usr/bin/env bash
# Build the stand-in NVML library: bash tests/nvml_standin/build.sh OUTDIR -> OUTDIR/libnvidia-ml.so.1
# (gcc only). See README.md in this folder.
set -euo pipefail
if [ $# -ne 1 ]; then
  echo "usage: bash $0 OUTDIR" >&2
  exit 2
fi
here="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$1"
tmp="$(mktemp "$1/.libnvidia-ml.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
gcc -std=gnu11 -O2 -Wall -Wextra -fPIC -shared -fvisibility=hidden \
  -Wl,-soname,libnvidia-ml.so.1 -o "$tmp" "$here/nvml_standin.c" -lm -pthread
mv -f "$tmp" "$1/libnvidia-ml.so.1"  # atomic: a concurrent build never leaves half a library
trap - EXIT
