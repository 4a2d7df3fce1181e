#!/usr/bin/env bash
# The README's test command with one CPU-bound process per core beside it, N times in a row
# (issue 14: the tests must not depend on a quiet machine). Prints each run's summary line and
# wall time. Usage: bash tests/scripts/suite_under_load.sh [RUNS] [PYTEST ARGS ...]
set -uo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-2}
shift || true
python=${PYTHON:-python}
logs=$(mktemp -d)
hogs=()
cleanup() { [ ${#hogs[@]} -gt 0 ] && kill "${hogs[@]}" 2>/dev/null; }
trap cleanup EXIT
for _ in $(seq "$(nproc)"); do
  "$python" -c 'while True: pass' &
  hogs+=($!)
done
status=0
for run in $(seq "$runs"); do
  start=$(date +%s)
  "$python" -m pytest -q -p no:cacheprovider "$@" > "$logs/run-$run.log" 2>&1 || status=1
  echo "run $run: $(tail -n 1 "$logs/run-$run.log") ($(( $(date +%s) - start )) s wall," \
    "$(nproc) CPU-bound processes beside it; log: $logs/run-$run.log)"
done
exit $status
