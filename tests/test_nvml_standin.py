"""wattwise's GPU path through the real nvidia-ml-py binding and the stand-in libnvidia-ml.so.1
(tests/nvml_standin), which replays the real H200 recordings of tests/fixtures/nvml.

Every test here selects the stand-in explicitly (fixture ``nvml_standin``) because it asserts
what only a known trace or a scripted fault gives: exact counter values, faults, 2 or 8 GPUs,
MIG. Tests that must also hold on a real GPU carry the ``gpu`` marker (tests/test_gpu.py).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import pathlib
import subprocess
import sys
import time

import pytest

from tests.conftest import NVML_FIXTURES, STANDIN_TRACE, Standin
from wattwise.errors import SensorError, SensorNotSupported
from wattwise.sensors.discovery import discover
from wattwise.sensors.nvml import NvmlSensor

REPO = pathlib.Path(__file__).resolve().parent.parent
MLP_TRACE = NVML_FIXTURES / "h200-mlp6144-8epochs-20hz.csv"
CLI_TIMEOUT_S = 120
AVERAGED = "averaged_power"


class Trace:
    """A fixture trace as the stand-in plays it: rows hold until the next one (times since the
    first row), and the trace starts again past its end, its counter going on."""

    def __init__(self, path: pathlib.Path) -> None:
        with path.open() as f:
            rows = list(csv.DictReader(f))
        t0 = float(rows[0]["t_s"])
        self.t = [float(r["t_s"]) - t0 for r in rows]
        self.energy_mj = [int(r["energy_mJ"]) for r in rows]
        self.instant_mw = [int(r["instant_mW"]) for r in rows]
        self.power_mw = [int(r["power_mW"]) for r in rows]

    def row(self, t_s: float) -> tuple[int, int]:
        passes, rest = divmod(t_s, self.t[-1])
        i = max(k for k, t in enumerate(self.t) if t <= rest)
        return i, int(passes)

    def energy_j(self, t_s: float) -> float:
        i, passes = self.row(t_s)
        return (self.energy_mj[i] + passes * (self.energy_mj[-1] - self.energy_mj[0])) / 1000


TRACE = Trace(STANDIN_TRACE)


def energy_reads(log: pathlib.Path) -> list[tuple[int, float, int]]:
    """(device, seconds since init, mJ) of each counter read the stand-in logged."""
    rows = [line.split() for line in log.read_text().splitlines()]
    return [(int(d), float(t), int(mj)) for kind, d, t, mj in (r for r in rows if len(r) == 4)]


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def opened(**kwargs) -> tuple[NvmlSensor, list]:
    sensor = NvmlSensor(**kwargs)
    return sensor, sensor.open()


# -- the binding itself ---------------------------------------------------------------------------


def test_the_binding_reads_the_standin_structs(nvml_standin: Standin) -> None:
    import pynvml

    pynvml.nvmlInit()
    try:
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        assert pynvml.nvmlDeviceGetName(h) == "NVIDIA H200"  # str, not bytes
        assert pynvml.nvmlDeviceGetMemoryInfo(h).total == 150754820096
        assert pynvml.nvmlDeviceGetEnforcedPowerLimit(h) == 700_000
        (instant, energy) = pynvml.nvmlDeviceGetFieldValues(h, [186, 83])
        assert (instant.fieldId, instant.nvmlReturn, instant.valueType) == (186, 0, 1)
        assert instant.value.uiVal in TRACE.instant_mw
        ull = pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
        assert (energy.nvmlReturn, energy.valueType) == (0, ull)
        counter = pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
        assert TRACE.energy_mj[0] <= energy.value.ullVal <= counter
        with pytest.raises(pynvml.NVMLError_InvalidArgument):
            pynvml.nvmlDeviceGetHandleByIndex(1)
    finally:
        pynvml.nvmlShutdown()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlDeviceGetCount()


def test_counter_read_costs_the_configured_cpu(nvml_standin: Standin) -> None:
    import pynvml

    nvml_standin.set(read_cost_ms=20)
    pynvml.nvmlInit()
    try:
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        cpu = time.thread_time()
        pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
        assert time.thread_time() - cpu >= 0.019
    finally:
        pynvml.nvmlShutdown()


# -- NvmlSensor -----------------------------------------------------------------------------------


def test_sensor_on_an_h200(nvml_standin: Standin) -> None:
    sensor, (info,) = opened()
    try:
        assert (info.name, info.method, info.index, info.flags) == (
            "NVIDIA H200",
            "counter",
            0,
            frozenset(),
        )
        assert info.uuid.startswith("GPU-") and info.device_id == f"gpu:{info.uuid}"
        assert info.details == {
            "power_limit_w": 700.0,
            "memory_total_bytes": 150754820096,
            "driver": "580.159.04",
            "architecture": "hopper",
            "power_source": "instant",
        }
        (a,) = sensor.read(0.0, counter=True)
        (b,) = sensor.read(0.1, counter=False)
        assert a.energy_j * 1000 in TRACE.energy_mj and b.energy_j is None
        assert round(a.power_w * 1000) in TRACE.instant_mw
        assert a.utilisation == 0.0  # the trace opens idle
    finally:
        sensor.close()


SQUARE = Trace(NVML_FIXTURES / "h200-square-wave.csv")  # averaged and instant power differ


@pytest.mark.parametrize(
    ("arch", "name", "faults", "method", "source", "flags"),
    [
        ("hopper", "NVIDIA H200", "energy:NOT_SUPPORTED", "power", "instant", {"power_only"}),
        ("hopper", "NVIDIA H200", "energy:FUNCTION_NOT_FOUND", "power", "instant", {"power_only"}),
        ("hopper", "NVIDIA H200", "fields:NO_PERMISSION", "counter", "average", {AVERAGED}),
        ("ada", "NVIDIA L40S", "instant:NOT_SUPPORTED", "counter", "average", {AVERAGED}),
        ("ampere", "NVIDIA A10G", "instant:NOT_SUPPORTED", "counter", "average", {AVERAGED}),
        ("ampere", "NVIDIA A100-SXM4-80GB", "instant:NOT_SUPPORTED", "counter", "average", set()),
        ("volta", "Tesla V100-SXM2-32GB", None, "counter", "average", set()),
        ("pascal", "Tesla P100-PCIE-16GB", None, "power", "average", {"power_only"}),
        # no architecture from the driver: the name decides
        (None, "NVIDIA H100 80GB HBM3", "arch:FUNCTION_NOT_FOUND,instant:NOT_SUPPORTED",
         "counter", "average", {AVERAGED}),
    ],
)  # fmt: skip
def test_methods_follow_what_each_architecture_offers(
    nvml_standin: Standin, arch, name, faults, method, source, flags
) -> None:
    """NVML: the counter from Volta; GetPowerUsage a 1 s average on Ampere (except GA100) and
    newer, instantaneous before; field 186 where the driver has it. Read from the square-wave
    recording, whose averaged and instant power differ, so each reading shows its source."""
    nvml_standin.set(
        arch=arch, name=name, faults=faults, trace=NVML_FIXTURES / "h200-square-wave.csv"
    )
    sensor, (info,) = opened()
    try:
        assert (info.method, info.details["power_source"], info.flags) == (method, source, flags)
        assert info.details["architecture"] == (arch or "unknown")
        (sample,) = sensor.read(0.0, counter=True)
    finally:
        sensor.close()
    instant_column = source == "instant" or AVERAGED not in flags
    column = SQUARE.instant_mw if instant_column else SQUARE.power_mw
    other = SQUARE.power_mw if instant_column else SQUARE.instant_mw
    assert round(sample.power_w * 1000) in set(column) - set(other)
    assert (sample.energy_j is None) == (method == "power")


def test_no_gpu_is_not_supported(nvml_standin: Standin) -> None:
    nvml_standin.set(devices=0)
    with pytest.raises(SensorNotSupported, match="no GPU"):
        NvmlSensor().open()


def test_no_driver_is_not_supported_with_the_reason(nvml_standin: Standin) -> None:
    nvml_standin.set(faults="init:DRIVER_NOT_LOADED")
    with pytest.raises(SensorNotSupported, match="kernel driver is not loaded"):
        NvmlSensor().open()
    found = discover(measure_host=False)
    assert found.devices == [] and "GPU: not measured" in found.notes[0]


def test_lost_gpu_reads_nothing_and_warns_once(
    nvml_standin: Standin, caplog: pytest.LogCaptureFixture
) -> None:
    """GPU 1 of 3 falls off the bus 1 s in: it reads nothing from then on, the others go on."""
    nvml_standin.set(devices=3, faults="all#1:GPU_IS_LOST@1.0")
    sensor, infos = opened()
    try:
        before = sensor.read(0.0, counter=True)
        assert all(s.energy_j is not None and s.flags == frozenset() for s in before)
        deadline = time.monotonic() + 30
        while sensor.read(1.0, counter=True)[1].flags != {"sensor_lost"}:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        after = sensor.read(2.0, counter=True)
        assert (after[1].energy_j, after[1].power_w, after[1].flags) == (
            None,
            None,
            {"sensor_lost"},
        )
        assert [s.flags for s in after] == [frozenset(), {"sensor_lost"}, frozenset()]
        assert after[0].energy_j >= before[0].energy_j and after[2].power_w > 0
        (message,) = warnings_of(caplog)
        assert infos[1].uuid in message and "GPU is lost" in message
    finally:
        sensor.close()


def test_counter_reset_is_flagged(nvml_standin: Standin) -> None:
    nvml_standin.set(faults="energy:RESET@1.0")
    sensor, _ = opened()
    try:
        (first,) = sensor.read(0.0, counter=True)
        assert first.energy_j > 7000  # the recorded counter, kJ since driver load
        deadline = time.monotonic() + 30
        while not (s := sensor.read(1.0, counter=True)[0]).flags:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert s.flags == {"counter_reset"} and s.energy_j < first.energy_j
    finally:
        sensor.close()


def test_other_processes_on_the_gpu_are_flagged(nvml_standin: Standin) -> None:
    nvml_standin.set(procs=f"{os.getpid()}")
    sensor, _ = opened()
    assert sensor.read(0.0, counter=True)[0].flags == frozenset()
    sensor.close()
    stranger = 2**22 + 7  # above pid_max's default: no process of ours
    nvml_standin.set(procs=f"{os.getpid()},{stranger}")
    sensor, _ = opened()
    assert sensor.read(0.0, counter=True)[0].flags == {"shared_gpu"}
    sensor.close()


def test_two_sensors_share_one_nvml(nvml_standin: Standin) -> None:
    """NVML counts inits: closing one sensor leaves the other reading."""
    first, _ = opened()
    second, _ = opened()
    assert nvml_standin.init_count() == 2
    first.close()
    assert second.read(0.0, counter=True)[0].energy_j is not None
    second.close()
    assert nvml_standin.init_count() == 0


# -- which GPUs (CUDA_VISIBLE_DEVICES) -------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 8])
def test_every_gpu_is_found_once(nvml_standin: Standin, n: int) -> None:
    nvml_standin.set(devices=n)
    found = discover(measure_host=False)
    try:
        gpus = found.devices
        assert [d.index for d in gpus] == list(range(n))
        assert len({d.uuid for d in gpus}) == n
        samples = [s for sensor in found.sensors for s in sensor.read(0.0, counter=True)]
        assert all(s.energy_j is not None and s.power_w > 0 for s in samples)
    finally:
        found.close()


def uuids(nvml_standin: Standin, devices: int, mig: int = 0) -> tuple[list[str], list[str]]:
    import pynvml

    nvml_standin.set(devices=devices, mig=mig)
    pynvml.nvmlInit()
    try:
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(devices)]
        gpus = [pynvml.nvmlDeviceGetUUID(h) for h in handles]
        migs = [
            pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetMigDeviceHandleByIndex(h, 0))
            for h in handles
            if mig
        ]
    finally:
        pynvml.nvmlShutdown()
    return gpus, migs


def test_cuda_visible_devices_by_index_and_uuid(
    nvml_standin: Standin, monkeypatch: pytest.MonkeyPatch
) -> None:
    gpus, _ = uuids(nvml_standin, 8)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", f"5,{gpus[2][:12]},3")
    sensor, infos = opened()
    sensor.close()
    assert [(d.index, d.uuid) for d in infos] == [(5, gpus[5]), (2, gpus[2]), (3, gpus[3])]
    sensor, (info,) = opened(gpus=[1])  # CUDA index 1: the second visible GPU
    sensor.close()
    assert info.uuid == gpus[2]


def test_cuda_visible_devices_by_mig_uuid(
    nvml_standin: Standin, monkeypatch: pytest.MonkeyPatch
) -> None:
    gpus, migs = uuids(nvml_standin, 2, mig=2)
    assert all(m.startswith("MIG-") for m in migs)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", migs[1])
    sensor, (info,) = opened()
    try:
        assert info.uuid == gpus[1] and "mig" in info.flags and info.method == "counter"
        assert sensor.read(0.0, counter=True)[0].energy_j is not None  # through the parent
    finally:
        sensor.close()


# -- the CLI, as a user runs it (the library found through LD_LIBRARY_PATH) ------------------------


def wattwise(*args: str, env: dict[str, str], cwd: pathlib.Path) -> subprocess.CompletedProcess:
    full = {**os.environ, **env, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "wattwise", *args],
        env=full,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )


def test_devices_json_lists_the_h200(nvml_standin: Standin, tmp_path: pathlib.Path) -> None:
    done = wattwise("devices", "--json", env={}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (gpu,) = [d for d in json.loads(done.stdout) if d["kind"] == "gpu"]
    assert (gpu["name"], gpu["method"]) == ("NVIDIA H200", "counter")


def run_json(tmp_path: pathlib.Path, seconds: float, **env: str) -> dict:
    done = wattwise(
        "run", "--json", "--ledger", str(tmp_path / "w.db"), "--", "sleep", str(seconds),
        env=env,
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.slow
def test_run_records_the_trace_counter_change(nvml_standin: Standin, tmp_path: pathlib.Path):
    """``wattwise run -- sleep 15``: GPU energy within 3% of the trace's counter change between
    the run's first and last counter read (times from the stand-in's log)."""
    log = tmp_path / "standin.log"
    run = run_json(tmp_path, 15, NVML_STANDIN_LOG=str(log))
    (gpu_id,) = [d for d in run["methods"] if d.startswith("gpu:")]
    assert run["methods"][gpu_id] == "counter"
    reads = energy_reads(log)
    # the first read is the sensor's probe when it opens; the run starts at the second
    (_, t_start, _), (_, t_end, _) = reads[1], reads[-1]
    expected_j = TRACE.energy_j(t_end) - TRACE.energy_j(t_start)
    assert expected_j > 4000  # the fit's load is inside these 15 s
    assert run["energy_by_kind_wh"]["gpu"] * 3600 == pytest.approx(expected_j, rel=0.03)


def test_run_without_counter_uses_power_and_is_flagged(
    nvml_standin: Standin, tmp_path: pathlib.Path
) -> None:
    run = run_json(tmp_path, 2, NVML_STANDIN_FAULTS="energy:NOT_SUPPORTED")
    (method,) = [m for d, m in run["methods"].items() if d.startswith("gpu:")]
    assert method == "power" and "power_only" in run["flags"]
    assert run["energy_by_kind_wh"]["gpu"] > 0  # integrated power, never silently zero


def test_run_with_a_gpu_lost_midway_finishes_flagged(
    nvml_standin: Standin, tmp_path: pathlib.Path
) -> None:
    run = run_json(tmp_path, 3, NVML_STANDIN_FAULTS="all:GPU_IS_LOST@1.5")
    assert run["status"] == "finished" and "sensor_lost" in run["flags"]
    assert run["energy_by_kind_wh"]["gpu"] > 0  # what was measured before the loss


def test_standin_names_a_bad_trace(
    nvml_standin: Standin, tmp_path: pathlib.Path, capfd: pytest.CaptureFixture
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("t_s,energy_mJ,power_mW\n0,5,1\n1,4,1\n")
    nvml_standin.set(trace=bad)
    with pytest.raises(SensorError, match="NVML error 999"):
        NvmlSensor().open()
    assert f"NVML_STANDIN_TRACE {bad}, line 3: t_s and energy_mJ must not go back" in (
        capfd.readouterr().err
    )


def test_an_r470_driver_still_measures_and_sees_other_processes(
    nvml_standin_r470: Standin,
) -> None:
    """nvidia-ml-py asks for the ``_v3`` process calls (R510+); an older driver makes it raise
    NVMLLibraryMismatchError, which is no NVMLError: wattwise falls back to ``_v2``."""
    stranger = 2**22 + 7
    nvml_standin_r470.set(procs=f"{os.getpid()},{stranger}")
    sensor, (info,) = opened()
    try:
        assert info.details["driver"] == "470.256.02"
        (sample,) = sensor.read(0.0, counter=True)
        assert sample.energy_j is not None and sample.flags == {"shared_gpu"}
    finally:
        sensor.close()


@pytest.mark.slow
def test_ddp_two_ranks_on_two_gpus_count_each_gpu_once(
    nvml_standin: Standin, tmp_path: pathlib.Path
) -> None:
    """Lightning's real ddp launcher, 2 CPU ranks, 2 stand-in GPUs playing different recordings:
    local rank 0 measures both (no rank trains on them), each by its counter, each once, each
    matching its own trace's counter change."""
    from test_callback_ddp_launcher import run_fit

    square = NVML_FIXTURES / "h200-square-wave.csv"
    nvml_standin.set(devices=2, trace=f"{STANDIN_TRACE},{square}", log=tmp_path / "standin-%p.log")
    ledger, ranks = run_fit(tmp_path, None, "--epochs", "2", "--step-s", "0.05")
    assert sorted(ranks) == [0, 1]
    (run,) = ledger.list_runs()
    rows = ledger.phases(run.run_id).to_dict("records")
    gpu_rows = [r for r in rows if r["kind"] == "gpu"]
    assert {r["method"] for r in gpu_rows} == {"counter"}
    logs = [p for p in tmp_path.glob("standin-*.log") if energy_reads(p)]
    (log,) = logs  # one process read the counters: local rank 0
    t0_s = int(log.read_text().split()[1]) / 1e9  # "init <ns>": the trace's time 0
    traces = {0: TRACE, 1: Trace(square)}
    gpu_ids = sorted({r["device_id"] for r in gpu_rows})
    assert len(gpu_ids) == 2
    measured = {}
    for device_id in gpu_ids:
        measured[device_id] = sum(r["energy_j"] for r in gpu_rows if r["device_id"] == device_id)
    # each GPU's rows against its own trace over the rows' span (the sampler's clock is
    # CLOCK_MONOTONIC, the stand-in's too), within one counter update at each end
    first = min(r["start_s"] for r in gpu_rows) - t0_s
    last = max(r["end_s"] for r in gpu_rows) - t0_s
    # (the tolerance, 0.2 s of a trace's peak power, can hold both GPUs' energies when the two
    # recordings differ by less than that over a short fit: each trace takes the GPU closest to
    # it, and the two must be different GPUs)
    paired = {}
    for index, trace in traces.items():
        expected_j = trace.energy_j(last) - trace.energy_j(first)
        peak_w = max(trace.instant_mw) / 1000
        closest = min(measured, key=lambda d: abs(measured[d] - expected_j))
        assert measured[closest] == pytest.approx(expected_j, abs=0.2 * peak_w), (
            index,
            expected_j,
            measured,
        )
        paired[index] = closest
    assert len(set(paired.values())) == 2, (paired, measured)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("faults", "method", "flag"),
    [
        (None, "counter", None),
        ("energy:NOT_SUPPORTED", "power", "power_only"),
        ("all:GPU_IS_LOST@2.0", "counter", "sensor_lost"),
    ],
)
def test_energy_callback_through_the_binding(
    nvml_standin: Standin, tmp_path: pathlib.Path, one_torch_thread, faults, method, flag
) -> None:
    """A Lightning fit measured by EnergyCallback through pynvml and the stand-in: it always
    finishes; the GPU's method and flag are the ones its driver allows; its energy is never a
    silent zero, and without a fault it matches the trace's counter over the counter reads."""
    from test_callback import TinyModel, loader, trainer

    from lightning_callbacks import EnergyCallback
    from wattwise.ledger import Ledger

    log = tmp_path / "standin.log"
    nvml_standin.set(faults=faults, log=log)
    energy = EnergyCallback(ledger=tmp_path / "w.db", log_metrics=False)
    fit = trainer(tmp_path, [energy], max_epochs=3)
    fit.fit(TinyModel(step_s=0.1), loader(64), loader(16))
    run = Ledger(tmp_path / "w.db").get_run(energy.run_id)
    assert run.status == "finished"
    (gpu_id,) = [d for d in run.methods if d.startswith("gpu:")]
    assert run.methods[gpu_id] == method
    assert run.energy_by_kind_j["gpu"] > 0
    if flag:
        assert flag in run.flags
        return
    reads = energy_reads(log)
    expected_j = TRACE.energy_j(reads[-1][1]) - TRACE.energy_j(reads[1][1])
    peak_w = max(TRACE.instant_mw) / 1000
    assert run.energy_by_kind_j["gpu"] == pytest.approx(expected_j, rel=0.03, abs=0.2 * peak_w)
