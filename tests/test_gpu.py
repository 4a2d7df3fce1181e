"""The GPU path end to end, against whatever NVML this machine has: the real driver on a GPU
machine (bench/gpu_check.sh runs these there), else the stand-in libnvidia-ml.so.1 replaying a
real H200 recording (conftest.py). So every assertion here holds for any NVIDIA GPU: energies
are bounded by the device's own power limit, never compared with a known trace (that is
tests/test_nvml_standin.py's job).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest
from test_callback import TinyModel, assert_tiled, loader, phase_rows, trainer

from lightning_callbacks import BudgetGuard, EnergyCallback
from wattwise.ledger import Ledger
from wattwise.sensors.discovery import discover

pytestmark = pytest.mark.gpu

REPO = pathlib.Path(__file__).resolve().parent.parent
FALLBACK_LIMIT_W = 1000.0  # a GPU that does not report its power limit
MIN_W = 5.0  # no NVIDIA datacenter GPU idles below this


def limits_w(devices) -> dict[str, float]:
    return {
        d.device_id: d.details.get("power_limit_w") or FALLBACK_LIMIT_W
        for d in devices
        if d.kind == "gpu"
    }


def assert_plausible(energy_j: float, seconds: float, limit_w: float) -> None:
    """Between an idle floor and 1.5 x the power limit over ``seconds`` (a counter updates every
    ~0.1 s: allow one update at the limit on top)."""
    assert MIN_W * seconds * 0.5 <= energy_j <= 1.5 * limit_w * (seconds + 0.2)


def test_discovery_measures_every_gpu_with_a_named_method() -> None:
    found = discover(measure_host=False)
    try:
        gpus = [d for d in found.devices if d.kind == "gpu"]
        assert gpus, found.notes
        for info in gpus:
            assert info.method in ("counter", "power")
            assert ("power_only" in info.flags) == (info.method == "power")
            assert info.uuid.startswith("GPU-") and info.name
        assert len({d.uuid for d in gpus}) == len(gpus)
        assert any(note.startswith("GPU 0 ") for note in found.notes)
    finally:
        found.close()


def test_sensor_counter_and_power_over_half_a_second() -> None:
    found = discover(measure_host=False)
    try:
        (sensor,) = found.sensors
        t0 = time.monotonic()
        first = {s.device_id: s for s in sensor.read(0.0, counter=True)}
        time.sleep(0.5)
        second = {s.device_id: s for s in sensor.read(0.5, counter=True)}
        seconds = time.monotonic() - t0
        for device_id, limit_w in limits_w(found.devices).items():
            a, b = first[device_id], second[device_id]
            assert 0 < b.power_w < 1.5 * limit_w
            assert b.flags == a.flags == frozenset() or "shared_gpu" in b.flags
            if a.energy_j is not None:
                assert 0 <= b.energy_j - a.energy_j <= 1.5 * limit_w * (seconds + 0.2)
    finally:
        found.close()


def wattwise(tmp_path: pathlib.Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for var in [v for v in env if v.startswith("WATTWISE_")]:
        del env[var]
    return subprocess.run(
        [sys.executable, "-m", "wattwise", *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_devices_json_lists_the_gpus(tmp_path: pathlib.Path) -> None:
    done = wattwise(tmp_path, "devices", "--json")
    assert done.returncode == 0, done.stderr
    gpus = [d for d in json.loads(done.stdout) if d["kind"] == "gpu"]
    assert gpus and all(d["method"] in ("counter", "power") for d in gpus)
    assert all(d["name"] and d["details"]["power_limit_w"] for d in gpus)


def test_run_records_gpu_energy_with_its_method(tmp_path: pathlib.Path) -> None:
    done = wattwise(tmp_path, "run", "--json", "--ledger", "w.db", "--", "sleep", "2")
    assert done.returncode == 0, done.stderr
    run = json.loads(done.stdout)
    gpu_methods = {d: m for d, m in run["methods"].items() if d.startswith("gpu:")}
    assert gpu_methods and set(gpu_methods.values()) <= {"counter", "power"}
    assert "sensor_lost" not in run["flags"]
    assert Ledger(tmp_path / "w.db").get_run(run["run_id"]).status == "finished"
    per_gpu_j = run["energy_by_kind_wh"]["gpu"] * 3600 / len(gpu_methods)
    assert_plausible(per_gpu_j, run["duration_s"], FALLBACK_LIMIT_W)


def test_energy_callback_records_the_gpu_of_a_cpu_fit(tmp_path: pathlib.Path, one_torch_thread):
    """A CPU fit on a GPU machine: rank 0 measures the GPUs it can see, by their best method."""
    db = tmp_path / "w.db"
    energy = EnergyCallback(ledger=db, log_metrics=False)
    fit = trainer(tmp_path, [energy], max_epochs=2)
    fit.fit(TinyModel(step_s=0.02), loader(64), loader(16))
    ledger = Ledger(db)
    rows = phase_rows(ledger, energy.run_id)
    gpu_rows = [r for r in rows if r["kind"] == "gpu"]
    assert gpu_rows
    assert_tiled(rows)
    assert {r["method"] for r in gpu_rows} <= {"counter", "power"}
    for device_id in {r["device_id"] for r in gpu_rows}:
        mine = [r for r in gpu_rows if r["device_id"] == device_id]
        seconds = max(r["end_s"] for r in mine) - min(r["start_s"] for r in mine)
        assert_plausible(sum(r["energy_j"] for r in mine), seconds, FALLBACK_LIMIT_W)
    assert ledger.get_run(energy.run_id).status == "finished"


def test_budget_guard_stops_a_fit_on_gpu_energy(tmp_path: pathlib.Path, one_torch_thread):
    """Even an idle GPU spends more than a millijoule per epoch: the guard stops the fit."""
    energy = EnergyCallback(ledger=tmp_path / "w.db", log_metrics=False)
    guard = BudgetGuard(max_kwh=1e-9)
    fit = trainer(tmp_path, [energy, guard], max_epochs=5)
    fit.fit(TinyModel(step_s=0.02), loader(64), loader(16))
    assert fit.current_epoch < 5 and "stopped after epoch" in guard.reason
