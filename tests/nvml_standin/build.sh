#!/usr/bin/env bash
# Build the stand-in NVML library: bash tests/nvml_standin/build.sh OUTDIR -> OUTDIR/libnvidia-ml.so.1
# (gcc only). STANDIN_DRIVER=r470 builds an R470 driver instead (no _v3 process calls). See
# README.md in this folder.
set -euo pipefail
if [ $# -ne 1 ]; then
  echo "usage: bash $0 OUTDIR" >&2
  exit 2
fi
here="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$1"
tmp="$(mktemp "$1/.libnvidia-ml.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
defines=()
case "${STANDIN_DRIVER:-}" in
  "") ;;
  r470) defines=(-DSTANDIN_R470) ;;
  *) echo "STANDIN_DRIVER=${STANDIN_DRIVER} is not known; use r470 or leave it unset" >&2; exit 2 ;;
esac
gcc "${defines[@]}" -std=gnu11 -O2 -Wall -Wextra -fPIC -shared -fvisibility=hidden \
  -Wl,-soname,libnvidia-ml.so.1 -o "$tmp" "$here/nvml_standin.c" -lm -pthread
mv -f "$tmp" "$1/libnvidia-ml.so.1"  # atomic: a concurrent build never leaves half a library
trap - EXIT
