#!/usr/bin/env bash
# One prepared GPU session (most important first, ~7 minutes on an H100/H200). Run it on the
# device machine from the repository root; outputs go to ${OUT:-bench/results/gpu}.
set -uo pipefail
out="${OUT:-bench/results/gpu}"
mkdir -p "$out"
pip install -q --no-deps -e . >/dev/null 2>&1 || pip install -q -e . >/dev/null
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv | tee "$out/gpu.txt"
# 1. real-GPU unit tests (NVML sensor against the driver)
timeout 120 python -m pytest -q -m gpu -p no:cacheprovider 2>&1 | tail -5 | tee "$out/pytest-gpu.txt"
# 2. this GPU's half of cross-GPU pairs for the estimator (issue 7): the same Lightning MLP at
#    three widths; run the script on a second GPU kind too, then
#    `python bench/record_pair.py join A.json B.json --out tests/fixtures/nvml/`
timeout 150 python bench/record_pair.py record --out "$out/pair-half.json" \
  --widths 1024,4096,8192 --epochs 4 --steps 100 2>&1 | grep -E "^(width|wrote)" \
  | tee "$out/record_pair.txt"
# 3. counter vs power over a ~20 s load, and replay of the recorded trace vs the live counter
timeout 120 python bench/gpu_check.py --load-s 20 --out "$out" 2>&1 | tee "$out/gpu_check.txt"
# 4. overhead of EnergyCallback vs no tracker on the GPU
timeout 240 python bench/overhead.py --device cuda --rounds 3 --steps 3000 --epochs 2 \
  --trackers none,energy,energy100 2>&1 | tail -15 | tee "$out/overhead-gpu.txt"
# 5. the demo on the GPU
timeout 120 wattwise demo --quick --ledger "$out/demo.db" --out "$out/demo" 2>&1 | tail -15 \
  | tee "$out/demo-gpu.txt"
