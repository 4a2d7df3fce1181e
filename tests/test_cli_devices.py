"""`wattwise devices [--json]` through the real CLI entry point."""

from __future__ import annotations

import json
import pathlib
import sys

import pytest

from tests.fake_pynvml import UUIDS, FakeNvml
from wattwise.cli import main
from wattwise.types import DEVICE_KINDS, METHODS

TRACE = pathlib.Path(__file__).parent / "fixtures" / "nvml" / "h200-lightning-fit-50hz.csv"


pytestmark = pytest.mark.usefixtures("bare_machine")  # see conftest.py


def devices_json(capsys: pytest.CaptureFixture, *args: str) -> tuple[list[dict], str]:
    assert main(["devices", "--json", *args]) == 0
    out, err = capsys.readouterr()
    return json.loads(out), err


def test_table_lists_devices_and_notes(capsys: pytest.CaptureFixture) -> None:
    assert main(["devices"]) == 0
    out = capsys.readouterr().out
    for text in ("cpu:machine", "ram", "estimate", "GPU: not measured", "no NVIDIA driver"):
        assert text in out
    assert "flag estimated:" in out


def test_json_on_a_machine_without_gpu_or_rapl(capsys: pytest.CaptureFixture) -> None:
    devices, err = devices_json(capsys)
    assert [(d["kind"], d["device_id"], d["method"]) for d in devices] == [
        ("cpu", "cpu:machine", "estimate"),
        ("ram", "ram", "estimate"),
    ]
    for d in devices:
        assert {"kind", "name", "method", "device_id", "uuid", "flags"} <= d.keys()
        assert d["kind"] in DEVICE_KINDS and d["method"] in METHODS
        assert d["flags"] == ["estimated"]
    assert devices[0]["details"]["tdp_w"] > 0
    assert "RAPL unavailable" in err  # notes go to stderr, so stdout stays pure JSON


def test_json_process_mode(capsys: pytest.CaptureFixture) -> None:
    devices, _ = devices_json(capsys, "--cpu-mode", "process")
    assert devices[0]["device_id"] == "cpu:process"


def test_json_with_a_gpu(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNvml(n_gpus=1)
    fake.gpus[0].field_errors[186] = fake.NVML_ERROR_NOT_SUPPORTED
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    devices, _ = devices_json(capsys)
    gpu = devices[0]
    assert (gpu["kind"], gpu["name"], gpu["method"]) == ("gpu", "NVIDIA H200", "counter")
    assert (gpu["uuid"], gpu["device_id"]) == (UUIDS[0], f"gpu:{UUIDS[0]}")
    assert gpu["flags"] == ["averaged_power"]
    assert gpu["details"]["power_limit_w"] == pytest.approx(700.0)
    assert fake.init_count == 0  # the command closes what it opened


def test_json_with_replayed_trace(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATTWISE_REPLAY_NVML", str(TRACE))
    first, err = devices_json(capsys)
    second, _ = devices_json(capsys)
    gpu = first[0]
    assert (gpu["kind"], gpu["method"]) == ("gpu", "counter")
    assert gpu["uuid"].startswith("GPU-") and gpu["device_id"] == f"gpu:{gpu['uuid']}"
    assert second[0]["uuid"] == gpu["uuid"]  # derived from the trace: the same every time
    assert "WATTWISE_REPLAY_NVML" in err


def test_bad_cpu_mode_is_exit_2(capsys: pytest.CaptureFixture) -> None:
    assert main(["devices", "--cpu-mode", "node"]) == 2
    err = capsys.readouterr().err
    assert "'node'" in err and "machine" in err and "Traceback" not in err
