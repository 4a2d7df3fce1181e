"""discover(): the best sensor of each kind, notes on every fallback, never an error for a gap."""

from __future__ import annotations

import pathlib
import sys

import pytest

from tests.fake_pynvml import UUIDS, FakeNvml
from tests.test_sensor_rapl import deny_energy_uj, zone
from wattwise.errors import BadInput
from wattwise.sensors import rapl
from wattwise.sensors.discovery import discover

TRACE = pathlib.Path(__file__).parent / "fixtures" / "nvml" / "h200-lightning-fit-50hz.csv"


pytestmark = pytest.mark.usefixtures("bare_machine")  # see conftest.py


@pytest.fixture
def gpu(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    module = FakeNvml(n_gpus=2)
    monkeypatch.setitem(sys.modules, "pynvml", module)
    return module


@pytest.fixture
def powercap(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> pathlib.Path:
    root = tmp_path / "powercap"
    zone(root, "intel-rapl:0", "package-0", 1_000_000)
    monkeypatch.setattr(rapl, "POWERCAP_ROOT", str(root))
    return root


def ids(found) -> list[str]:
    return [d.device_id for d in found.devices]


def test_bare_machine_falls_back_to_estimates_with_notes() -> None:
    found = discover()
    assert ids(found) == ["cpu:machine", "ram"]
    assert [d.method for d in found.devices] == ["estimate", "estimate"]
    assert len(found.sensors) == 2
    notes = "\n".join(found.notes)
    assert "GPU: not measured" in notes and "no NVIDIA driver" in notes
    assert "RAPL unavailable" in notes and "no powercap interface" in notes
    assert "RAM: no RAPL; estimated at 0.3725 W per GiB" in notes
    assert "TDP" in notes
    samples = [s for sensor in found.sensors for s in sensor.read(1.0, counter=True)]
    assert {s.device_id for s in samples} <= {"cpu:machine", "ram"}
    found.close()


def test_gpus_from_nvml(gpu: FakeNvml) -> None:
    found = discover(measure_host=False)
    assert ids(found) == [f"gpu:{UUIDS[0]}", f"gpu:{UUIDS[1]}"]
    assert found.notes[:2] == [
        "GPU 0 NVIDIA H200: hardware energy counter",
        "GPU 1 NVIDIA H200: hardware energy counter",
    ]
    assert "CPU and RAM: not measured (measure_host=False)" in found.notes
    found.close()
    assert gpu.init_count == 0


def test_gpu_list_is_passed_to_nvml(gpu: FakeNvml) -> None:
    found = discover(gpus=[1], measure_host=False)
    assert ids(found) == [f"gpu:{UUIDS[1]}"]
    found.close()


def test_gpu_without_counter_is_noted(gpu: FakeNvml) -> None:
    gpu.gpus[0].errors["nvmlDeviceGetTotalEnergyConsumption"] = gpu.NVML_ERROR_NOT_SUPPORTED
    found = discover(gpus=[0], measure_host=False)
    assert found.devices[0].method == "power"
    assert "no energy counter" in found.notes[0]
    found.close()


def test_unknown_gpu_is_bad_input_and_nothing_stays_open(gpu: FakeNvml) -> None:
    with pytest.raises(BadInput, match="GPU 5"):
        discover(gpus=[5])
    assert gpu.init_count == 0


def test_gpus_none_never_touches_nvml(gpu: FakeNvml) -> None:
    found = discover(gpus="none")
    assert ids(found) == ["cpu:machine", "ram"]
    assert gpu.calls == []
    assert "GPU: not measured (gpus='none')" in found.notes
    found.close()


def test_rapl_preferred_and_ram_estimated_without_dram(powercap: pathlib.Path) -> None:
    found = discover(gpus="none")
    assert ids(found) == ["cpu:package-0", "ram"]
    assert [d.method for d in found.devices] == ["rapl", "estimate"]
    assert any("RAPL has no DRAM domain" in note for note in found.notes)
    found.close()


def test_rapl_dram_replaces_the_ram_estimate(powercap: pathlib.Path) -> None:
    zone(powercap, "intel-rapl:0:0", "dram", 5_000_000)
    found = discover(gpus="none")
    assert ids(found) == ["cpu:package-0", "ram:dram-0"]
    assert len(found.sensors) == 1
    assert "CPU: RAPL energy counters (cpu:package-0, ram:dram-0)" in found.notes
    found.close()


def test_rapl_permission_denied_falls_back(
    powercap: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deny_energy_uj(monkeypatch)
    found = discover(gpus="none", cpu_mode="process")
    assert ids(found) == ["cpu:process", "ram"]
    assert any("RAPL unavailable" in n and "CVE-2020-8694" in n for n in found.notes)
    found.close()


def test_process_mode_with_rapl_is_noted(powercap: pathlib.Path) -> None:
    found = discover(gpus="none", cpu_mode="process")
    assert ids(found) == ["cpu:package-0", "ram"]
    assert any("cpu_mode='process' not applied" in note for note in found.notes)
    found.close()


def test_replay_replaces_nvml(gpu: FakeNvml, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATTWISE_REPLAY_NVML", str(TRACE))
    now = [100.0]
    found = discover(measure_host=False, clock=lambda: now[0])
    (info,) = found.devices
    assert info.kind == "gpu" and info.method == "counter"
    assert info.uuid.startswith("GPU-") and info.device_id == f"gpu:{info.uuid}"
    assert gpu.calls == []
    assert any("WATTWISE_REPLAY_NVML" in note for note in found.notes)
    (sample,) = found.sensors[0].read(101.0, counter=True)
    assert sample.power_w > 0
    found.close()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"gpus": "all"}, "'all'"),
        ({"gpus": [1.5]}, r"\[1.5\]"),
        ({"cpu_mode": "node"}, "'node'"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(BadInput, match=match):
        discover(**kwargs)
