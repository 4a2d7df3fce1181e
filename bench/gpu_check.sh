#!/usr/bin/env bash
# The one prepared check for a lent GPU machine (an H200: torch, pytorch-lightning, nvidia-ml-py,
# psutil, pandas, pytest there; no internet; no codecarbon or zeus). Most important first, each
# step under its own timeout and all of them inside BUDGET_S (470 s: under 8 minutes). Results:
# "$OUT/summary.json" (each step's status, seconds and numbers), "$OUT/log.txt" (every step's
# output), "$OUT/gpu-check-trace.csv" (the counter and power trace of step 3: a new fixture).
#
#   bash bench/gpu_check.sh              # on the GPU machine, from the repository root
#   bash bench/gpu_check.sh --dry-run    # here, without a GPU: NVML is the stand-in
#                                        # libnvidia-ml.so.1 (tests/nvml_standin) replaying the
#                                        # real H200 recording, the fits run on the CPU
#
# Steps: 1. the `gpu` tests against the driver; 2. EnergyCallback vs no tracker (fit-time ratio,
# 3 interleaved rounds) and its GPU energy vs NVML's raw counter (CodeCarbon and Zeus where
# importable, else skipped and said so); 3. per-phase energy vs the counter (bench/gpu_check.py);
# 4. `wattwise demo --task images --quick` where `--task` exists; 5. `wattwise demo --task digits --quick`.
set -uo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
dry=0
if [ "${1:-}" = "--dry-run" ]; then dry=1; fi
out="${OUT:-bench/results/gpu}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
log="$out/log.txt"
steps="$out/.steps.jsonl"
: >"$log"
: >"$steps"
py="${PYTHON:-python3}"
budget_s="${BUDGET_S:-470}"
t_start=$SECONDS
# wattwise from this checkout, without installing it (nothing is fetched on the GPU machine)
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
for var in $(env | grep -o '^WATTWISE_[A-Z_]*'); do unset "$var"; done
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

if [ "$dry" = 1 ]; then
  bash tests/nvml_standin/build.sh "$work/standin" >>"$log" 2>&1 || {
    echo "dry run: building the NVML stand-in failed (see $log)" >&2
    exit 1
  }
  export LD_LIBRARY_PATH="$work/standin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export NVML_STANDIN_TRACE="$repo/tests/fixtures/nvml/h200-lightning-fit-50hz.csv"
  export WATTWISE_NVML_STANDIN_DIR="$work/standin"
  # a small CPU fit; CodeCarbon left out (installed here, its 15 s tracker too slow for 2 cores)
  fit=(--device cpu --steps 90 --width 128 --batch 32 --trackers none,energy,zeus)
else
  fit=(--device cuda --steps 1500 --width 1024 --batch 256 --trackers none,energy,codecarbon15,zeus)
fi

# step NAME TIMEOUT_S COMMAND...: run it under timeout (capped by what is left of the budget),
# append its output to the log and a line to the step list
step() {
  local name="$1" limit="$2"
  shift 2
  local left=$((budget_s - (SECONDS - t_start)))
  if [ "$left" -lt 20 ]; then
    printf '{"step": "%s", "status": "not run", "why": "out of time"}\n' "$name" >>"$steps"
    return
  fi
  [ "$limit" -gt "$left" ] && limit="$left"
  local t0=$SECONDS
  printf '\n===== %s (timeout %s s): %s\n' "$name" "$limit" "$*" >>"$log"
  timeout -k 5 "$limit" "$@" >"$work/$name.out" 2>&1
  local rc=$?
  cat "$work/$name.out" >>"$log"
  local status=ok
  [ "$rc" -ne 0 ] && status=failed
  [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && status=timeout
  printf '{"step": "%s", "status": "%s", "rc": %d, "seconds": %d, "timeout_s": %d}\n' \
    "$name" "$status" "$rc" $((SECONDS - t0)) "$limit" >>"$steps"
}

{
  echo "dry_run=$dry python=$($py -c 'import sys; print(sys.version.split()[0])')"
  nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv 2>&1 || true
  command -v gcc >/dev/null && echo "gcc: yes" || echo "gcc: no"
} >>"$log" 2>&1

# 1. the gpu tests against the driver (conftest.py: the real one where there is a GPU)
step gpu_tests 150 "$py" -m pytest -q -p no:cacheprovider -m gpu \
  tests/test_gpu.py tests/test_sensor_nvml.py tests/test_callback_settings.py

# 2. EnergyCallback vs no tracker, 3 interleaved rounds, and its GPU energy vs the raw counter
step overhead 150 "$py" bench/overhead.py "${fit[@]}" --rounds 3 --epochs 3 \
  --json "$work/overhead.json"

# 3. per-phase energy of a live Meter vs the counter it recorded
step per_phase 90 "$py" bench/gpu_check.py --load-s 15 --out "$work/gpu_check" \
  --json "$work/gpu_check.json"
cp "$work/gpu_check/gpu-check-trace.csv" "$out/" 2>/dev/null

# 4. the images demo (issue 17): on CUDA the ResNets in bf16 and channels_last
if "$py" -m wattwise demo --help 2>/dev/null | grep -q -- "--task"; then
  step demo_images 200 "$py" -m wattwise demo --task images --quick \
    --ledger "$work/demo-images.db" --out "$work/demo-images"
else
  echo '{"step": "demo_images", "status": "skipped", "why": "demo has no --task here"}' \
    >>"$steps"
fi

# 5. the digits demo (the CPU default; on CUDA `demo` alone now means the images task)
step demo 80 "$py" -m wattwise demo --task digits --quick --ledger "$work/demo.db" \
  --out "$work/demo"

# the images demo's per-run figures and page, and the overhead rounds, for a look afterwards
cp "$work/demo-images/runs.csv" "$out/images-runs.csv" 2>/dev/null
cp "$work/demo-images/report.html" "$out/images-report.html" 2>/dev/null
cp "$work/overhead.json" "$out/overhead.json" 2>/dev/null

"$py" - "$out" "$work" "$dry" "$((SECONDS - t_start))" <<'EOF'
import json, pathlib, re, sys

out, work, dry, seconds = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3], sys.argv[4]
steps = [json.loads(line) for line in (out / ".steps.jsonl").read_text().splitlines()]
text = lambda name: (work / f"{name}.out").read_text() if (work / f"{name}.out").exists() else ""
for s in steps:
    tail = text(s["step"]).strip().splitlines()
    s["tail"] = tail[-3:]
    if s["step"] == "gpu_tests":
        s["result"] = next((l for l in reversed(tail) if re.search(r"passed|failed|error", l)), None)
    if s["step"] == "overhead" and (work / "overhead.json").exists():
        runs = json.loads((work / "overhead.json").read_text())
        base = {r["round"]: r["steps_per_s"] for r in runs["runs"] if r["tracker"] == "none"}
        s["fit_time_ratio"] = {}  # tracker fit time / no-tracker fit time, same round
        for r in runs["runs"]:
            if r["tracker"] != "none" and r["round"] in base:
                s["fit_time_ratio"].setdefault(r["tracker"], []).append(
                    round(base[r["round"]] / r["steps_per_s"], 4))
        s["gpu_wh_vs_nvml_counter"] = [  # inner <= gpu <= outer expected
            {k: r[k] for k in ("round", "gpu_wh", "nvml_inner_wh", "nvml_outer_wh", "nvml_outer_s")}
            for r in runs["runs"] if r.get("gpu_wh") and r.get("nvml_outer_wh")]
        s["skipped_trackers"] = runs["skipped"]
    if s["step"] == "per_phase" and (work / "gpu_check.json").exists():
        s.update(json.loads((work / "gpu_check.json").read_text()))
    if s["step"].startswith("demo"):
        s["tail"] = tail[-8:]
summary = {"dry_run": dry == "1", "seconds": int(seconds), "steps": steps}
(out / "summary.json").write_text(json.dumps(summary, indent=1))
(out / ".steps.jsonl").unlink()
for s in steps:
    print(f"{s['step']:12} {s['status']:8} {s.get('seconds', '-')} s")
EOF
