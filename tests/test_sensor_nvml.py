"""NvmlSensor against a fake pynvml carrying a real H200's values (tests/fake_pynvml.py): what
the stand-in driver cannot script (docs/internals.md lists why); the rest runs through the real
binding in tests/test_nvml_standin.py."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

import pynvml as real
import pytest

from tests.fake_pynvml import PROBE, UUIDS, FakeNvml
from wattwise.errors import (
    BadInput,
    SensorError,
    SensorNotSupported,
    SensorPermissionError,
    SensorReadError,
)
from wattwise.sensors import nvml
from wattwise.sensors.nvml import NvmlSensor


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    module = FakeNvml(n_gpus=1)
    monkeypatch.setitem(sys.modules, "pynvml", module)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return module


@pytest.fixture
def fake3(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    module = FakeNvml(n_gpus=3)
    monkeypatch.setitem(sys.modules, "pynvml", module)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return module


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_counter_path_reads_counter_only_when_asked(fake: FakeNvml) -> None:
    sensor = NvmlSensor()
    (info,) = sensor.open()
    assert info.device_id == f"gpu:{UUIDS[0]}"
    assert (info.kind, info.name, info.method, info.uuid, info.index) == (
        "gpu",
        "NVIDIA H200",
        "counter",
        UUIDS[0],
        0,
    )
    assert info.flags == frozenset()
    assert info.update_period_s == pytest.approx(0.1)
    assert info.details["power_limit_w"] == pytest.approx(700.0)
    assert info.details["memory_total_bytes"] == PROBE["mem_total"]
    assert info.details["driver"] == "580.159.04"
    assert info.details["architecture"] == "hopper"

    fake.calls.clear()
    fake.gpus[0].util_pct = 87
    (s,) = sensor.read(1.0, counter=False)
    assert "nvmlDeviceGetTotalEnergyConsumption" not in fake.calls
    assert s.energy_j is None
    assert s.power_w == pytest.approx(76.698)  # field 186 in mW
    assert s.utilisation == pytest.approx(0.87)
    assert s.t_s == 1.0 and s.flags == frozenset()

    fake.gpus[0].energy_mj += 70_000  # 70 J later
    (s,) = sensor.read(2.0, counter=True)
    assert s.energy_j == pytest.approx((2_392_675 + 70_000) / 1000)
    assert s.flags == frozenset()
    sensor.close()


def test_close_balances_init_and_is_idempotent(fake: FakeNvml) -> None:
    sensor = NvmlSensor()
    sensor.open()
    assert fake.init_count == 1
    sensor.close()
    sensor.close()
    assert fake.init_count == 0


def test_counter_hidden_by_old_nvidia_ml_py_falls_back(fake: FakeNvml) -> None:
    fake.hide("nvmlDeviceGetTotalEnergyConsumption")
    sensor = NvmlSensor()
    (info,) = sensor.open()
    assert info.method == "power"
    sensor.close()


def test_no_field_values_function_uses_power_usage(fake: FakeNvml) -> None:
    fake.hide("nvmlDeviceGetFieldValues")
    sensor = NvmlSensor()
    (info,) = sensor.open()
    assert "averaged_power" in info.flags
    assert sensor.read(1.0, counter=False)[0].power_w == pytest.approx(76.564)
    sensor.close()


def test_gpu_lost_mid_run(fake3: FakeNvml, caplog: pytest.LogCaptureFixture) -> None:
    sensor = NvmlSensor()
    sensor.open()
    sensor.read(1.0, counter=True)
    fake3.gpus[1].errors["nvmlDeviceGetFieldValues"] = real.NVML_ERROR_GPU_IS_LOST
    caplog.clear()
    first = sensor.read(2.0, counter=True)
    fake3.calls.clear()
    second = sensor.read(3.0, counter=True)
    for samples in (first, second):
        assert [s.flags for s in samples] == [frozenset(), {"sensor_lost"}, frozenset()]
        lost = samples[1]
        assert (lost.device_id, lost.energy_j, lost.power_w) == (f"gpu:{UUIDS[1]}", None, None)
        assert samples[0].energy_j == pytest.approx(2392.675)
    assert fake3.calls.count("nvmlDeviceGetFieldValues") == 2  # the lost GPU is not asked again
    (message,) = warnings_of(caplog)
    assert UUIDS[1] in message and "GPU is lost" in message
    sensor.close()


def test_transient_read_error_flags_only_that_reading(
    fake: FakeNvml, caplog: pytest.LogCaptureFixture
) -> None:
    sensor = NvmlSensor()
    sensor.open()
    fake.gpus[0].errors["nvmlDeviceGetUtilizationRates"] = real.NVML_ERROR_TIMEOUT
    assert sensor.read(1.0, counter=False)[0].flags == {"sensor_lost"}
    del fake.gpus[0].errors["nvmlDeviceGetUtilizationRates"]
    (s,) = sensor.read(2.0, counter=False)
    assert s.flags == frozenset() and s.power_w == pytest.approx(76.698)
    assert len(warnings_of(caplog)) == 1
    sensor.close()


def test_counter_going_backwards(fake: FakeNvml, caplog: pytest.LogCaptureFixture) -> None:
    sensor = NvmlSensor()
    sensor.open()
    fake.gpus[0].energy_mj = 5_000_000
    assert sensor.read(1.0, counter=True)[0].flags == frozenset()
    fake.gpus[0].energy_mj = 1_200  # driver reload: counter restarts near zero
    (reset,) = sensor.read(2.0, counter=True)
    assert reset.flags == {"counter_reset"}
    assert reset.energy_j == pytest.approx(1.2)
    fake.gpus[0].energy_mj = 900  # backwards again: flagged, not warned again
    assert sensor.read(3.0, counter=True)[0].flags == {"counter_reset"}
    fake.gpus[0].energy_mj = 50_900
    assert sensor.read(4.0, counter=True)[0].flags == frozenset()
    (message,) = warnings_of(caplog)
    assert "5000000" in message and "1200" in message
    sensor.close()


def test_library_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    with pytest.raises(SensorNotSupported, match="nvidia-ml-py is not installed"):
        NvmlSensor().open()


def test_driver_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    module = FakeNvml(driver_loaded=False)
    monkeypatch.setitem(sys.modules, "pynvml", module)
    with pytest.raises(SensorNotSupported, match="no NVIDIA driver") as info:
        NvmlSensor().open()
    assert isinstance(info.value.__cause__, real.NVMLError_LibraryNotFound)


def uuids_of(sensor: NvmlSensor) -> list[str]:
    return [info.uuid for info in sensor.open()]


@pytest.mark.parametrize(
    ("visible", "expected"),
    [
        ("1", [UUIDS[1]]),
        ("2,0", [UUIDS[2], UUIDS[0]]),
        (f" {UUIDS[2]} ", [UUIDS[2]]),
        ("GPU-a04f3c9e", [UUIDS[1]]),  # abbreviated UUID
        (f"GPU-e7b2,{UUIDS[0]}", [UUIDS[2], UUIDS[0]]),
        ("0,0", [UUIDS[0]]),  # one GPU is counted once
    ],
)
def test_cuda_visible_devices(
    fake3: FakeNvml, monkeypatch: pytest.MonkeyPatch, visible: str, expected: list[str]
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    sensor = NvmlSensor()
    assert uuids_of(sensor) == expected
    sensor.close()


def test_cuda_visible_devices_stops_at_first_invalid_entry(
    fake3: FakeNvml, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,7,0")
    sensor = NvmlSensor()
    assert uuids_of(sensor) == [UUIDS[1]]
    (message,) = warnings_of(caplog)
    assert "'7'" in message
    sensor.close()


def test_ambiguous_uuid_prefix_names_no_gpu(
    fake3: FakeNvml, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-")
    with pytest.raises(SensorNotSupported, match="no GPU"):
        NvmlSensor().open()
    assert fake3.init_count == 0
    assert len(warnings_of(caplog)) == 1


def test_cuda_visible_devices_empty_means_no_gpu(
    fake: FakeNvml, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(SensorNotSupported, match="CUDA_VISIBLE_DEVICES is empty"):
        NvmlSensor().open()
    assert fake.calls == [] and fake.init_count == 0


@pytest.mark.parametrize(
    "token",
    [
        "MIG-7d3f9a21-4c8e-5b06-a1f2-93e4d5c6b708",
        "MIG-7d3f9a21",
        f"MIG-{UUIDS[2]}/1/0",  # legacy MIG-GPU-<uuid>/<gi>/<ci>
    ],
)
def test_mig_instance_measured_through_its_gpu(
    fake3: FakeNvml, monkeypatch: pytest.MonkeyPatch, token: str
) -> None:
    fake3.gpus[2].add_mig("MIG-7d3f9a21-4c8e-5b06-a1f2-93e4d5c6b708")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", token)
    sensor = NvmlSensor()
    (info,) = sensor.open()
    assert info.device_id == f"gpu:{UUIDS[2]}"
    assert "mig" in info.flags
    fake3.gpus[2].energy_mj = 3_000_000
    assert sensor.read(1.0, counter=True)[0].energy_j == pytest.approx(3000.0)
    sensor.close()


def test_gpu_in_mig_mode_is_flagged(fake: FakeNvml) -> None:
    fake.gpus[0].add_mig("MIG-0b1c2d3e-4f50-5617-8293-a4b5c6d7e8f9")
    sensor = NvmlSensor()
    assert sensor.open()[0].flags == {"mig"}
    sensor.close()


def test_gpus_argument_indices_are_relative_to_visible_devices(
    fake3: FakeNvml, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    sensor = NvmlSensor(gpus=[1, "GPU-a04f3c9e"])
    assert uuids_of(sensor) == [UUIDS[0], UUIDS[1]]
    sensor.close()


def test_gpus_argument_unknown_is_bad_input(fake3: FakeNvml) -> None:
    with pytest.raises(BadInput, match=r"GPU 3 is not visible.*below 3"):
        NvmlSensor(gpus=[3]).open()
    with pytest.raises(BadInput, match="'GPU-ffff'"):
        NvmlSensor(gpus=["GPU-ffff"]).open()
    assert fake3.init_count == 0


@pytest.mark.parametrize("gpus", ["0,1", [0.5], [None]])
def test_gpus_argument_wrong_type_is_bad_input(gpus: object) -> None:
    with pytest.raises(BadInput, match="gpus="):
        NvmlSensor(gpus=gpus)


def test_shared_gpu_detected_on_counter_reads(
    fake: FakeNvml, caplog: pytest.LogCaptureFixture
) -> None:
    sensor = NvmlSensor()
    sensor.open()
    fake.gpus[0].compute_pids = [os.getpid()]
    assert sensor.read(1.0, counter=True)[0].flags == frozenset()
    fake.gpus[0].graphics_pids = [4_000_000]  # above Linux's pid_max: never ours
    fake.calls.clear()
    assert sensor.read(2.0, counter=False)[0].flags == frozenset()
    assert "nvmlDeviceGetComputeRunningProcesses" not in fake.calls
    assert sensor.read(3.0, counter=True)[0].flags == {"shared_gpu"}
    assert sensor.read(4.0, counter=True)[0].flags == {"shared_gpu"}
    (message,) = warnings_of(caplog)
    assert "4000000" in message
    sensor.close()


def test_shared_gpu_checked_without_counter_too(fake: FakeNvml) -> None:
    fake.gpus[0].errors["nvmlDeviceGetTotalEnergyConsumption"] = real.NVML_ERROR_NOT_SUPPORTED
    fake.gpus[0].compute_pids = [4_000_001]
    sensor = NvmlSensor()
    sensor.open()
    assert sensor.read(1.0, counter=True)[0].flags == {"shared_gpu"}
    sensor.close()


def _expected_class(name: str) -> type[SensorError]:
    if name in {
        "NOT_SUPPORTED",
        "DRIVER_NOT_LOADED",
        "LIBRARY_NOT_FOUND",
        "FUNCTION_NOT_FOUND",
        "LIB_RM_VERSION_MISMATCH",
        "VGPU_ECC_NOT_SUPPORTED",
        "FREQ_NOT_SUPPORTED",
        "ARGUMENT_VERSION_MISMATCH",
        "DEPRECATED",
        "RESET_TYPE_NOT_SUPPORTED",
    }:
        return SensorNotSupported
    if name in {"NO_PERMISSION", "OPERATING_SYSTEM"}:
        return SensorPermissionError
    return SensorReadError


ERROR_CODES = sorted(
    (name.removeprefix("NVML_ERROR_"), getattr(real, name))
    for name in dir(real)
    if name.startswith("NVML_ERROR_")
)


@pytest.mark.parametrize(("name", "code"), ERROR_CODES)
def test_every_nvml_error_code_is_translated(name: str, code: int) -> None:
    """Walk pynvml's code table: each code becomes the intended wattwise error, chained."""

    def failing() -> None:
        raise real.NVMLError(code)

    module = FakeNvml()
    module.nvmlDeviceGetPowerUsage = failing
    with pytest.raises(SensorError) as info:
        nvml._Nvml(module)("nvmlDeviceGetPowerUsage")
    assert type(info.value) is _expected_class(name)
    assert isinstance(info.value.__cause__, real.NVMLError)
    assert info.value.__cause__.value == code
    assert "nvmlDeviceGetPowerUsage" in str(info.value) and f"error {code}" in str(info.value)
    assert (code in nvml.LOST_CODES) == (name in {"GPU_IS_LOST", "RESET_REQUIRED", "GPU_NOT_FOUND"})


def test_error_table_codes_are_pynvml_codes() -> None:
    codes = {code for _, code in ERROR_CODES}
    assert set(nvml.ERROR_CLASSES) <= codes
    assert codes >= nvml.LOST_CODES


def test_own_process_tree_does_not_count_as_sharing(fake: FakeNvml) -> None:
    """DataLoader workers (children) and a launcher (parent) on the GPU are this run's own use."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        sensor = NvmlSensor()
        sensor.open()
        fake.gpus[0].compute_pids = [os.getpid(), child.pid]
        fake.gpus[0].graphics_pids = [os.getppid()]
        assert sensor.read(1.0, counter=True)[0].flags == frozenset()
        sensor.close()
    finally:
        child.kill()
        child.wait()


def test_field_value_of_another_value_type(fake: FakeNvml, monkeypatch: pytest.MonkeyPatch) -> None:
    def field_values(handle, field_ids):
        values = (real.c_nvmlFieldValue_t * 1)()
        values[0].fieldId = field_ids[0]
        values[0].valueType = real.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
        values[0].value.ullVal = 654_321
        return values

    monkeypatch.setattr(fake, "nvmlDeviceGetFieldValues", field_values)
    sensor = NvmlSensor()
    sensor.open()
    assert sensor.read(1.0, counter=False)[0].power_w == pytest.approx(654.321)
    sensor.close()


@pytest.mark.gpu
def test_real_gpu_counter_and_power() -> None:
    """On a real NVIDIA GPU: the counter grows, power lies between 0 and 1.5 x the limit."""
    sensor = NvmlSensor()
    devices = sensor.open()
    try:
        first = {s.device_id: s for s in sensor.read(0.0, counter=True)}
        time.sleep(0.5)
        second = {s.device_id: s for s in sensor.read(0.5, counter=True)}
        for info in devices:
            a, b = first[info.device_id], second[info.device_id]
            limit_w = info.details["power_limit_w"] or 1000.0
            assert 0 < b.power_w < 1.5 * limit_w
            if info.method == "counter":
                assert b.energy_j >= a.energy_j
                assert b.energy_j - a.energy_j < 0.6 * 1.5 * limit_w
    finally:
        sensor.close()


def test_gpu_lost_before_open_is_skipped(fake3: FakeNvml, caplog: pytest.LogCaptureFixture) -> None:
    fake3.gpus[0].errors["nvmlDeviceGetName"] = real.NVML_ERROR_GPU_IS_LOST
    sensor = NvmlSensor()
    assert uuids_of(sensor) == [UUIDS[1], UUIDS[2]]
    (message,) = warnings_of(caplog)
    assert UUIDS[0] in message and "GPU is lost" in message
    sensor.close()


def test_gpu_with_no_reading_at_all_is_skipped(
    fake: FakeNvml, caplog: pytest.LogCaptureFixture
) -> None:
    gpu = fake.gpus[0]
    gpu.errors["nvmlDeviceGetTotalEnergyConsumption"] = real.NVML_ERROR_NOT_SUPPORTED
    gpu.errors["nvmlDeviceGetPowerUsage"] = real.NVML_ERROR_NOT_SUPPORTED
    gpu.field_errors[186] = real.NVML_ERROR_NOT_SUPPORTED
    with pytest.raises(SensorNotSupported, match="no GPU"):
        NvmlSensor().open()
    assert "neither energy nor power" in warnings_of(caplog)[0]
    assert fake.init_count == 0
