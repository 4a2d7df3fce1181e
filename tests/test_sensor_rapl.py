"""RaplSensor over a fake powercap tree in tmp_path."""

from __future__ import annotations

import logging
import pathlib

import pytest

from wattwise.errors import SensorNotSupported, SensorPermissionError
from wattwise.sensors.rapl import RaplSensor

RANGE_UJ = 262_143_328_850  # a real Intel package's max_energy_range_uj


def zone(root: pathlib.Path, dirname: str, name: str, energy_uj: int, range_uj: int = RANGE_UJ):
    path = root / dirname
    path.mkdir(parents=True)
    (path / "name").write_text(f"{name}\n")
    (path / "energy_uj").write_text(f"{energy_uj}\n")
    (path / "max_energy_range_uj").write_text(f"{range_uj}\n")
    return path


def set_energy(path: pathlib.Path, energy_uj: int) -> None:
    (path / "energy_uj").write_text(f"{energy_uj}\n")


def deny_energy_uj(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reads of every ``energy_uj`` fail as on a kernel with CVE-2020-8694's fix (tests run as
    root, so chmod 000 would not stop them)."""
    original = pathlib.Path.read_text

    def read_text(self: pathlib.Path, *args, **kwargs) -> str:
        if self.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(self))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "read_text", read_text)


@pytest.fixture
def two_sockets(tmp_path: pathlib.Path) -> dict[str, pathlib.Path]:
    return {
        "pkg0": zone(tmp_path, "intel-rapl:0", "package-0", 1_000_000),
        "core0": zone(tmp_path, "intel-rapl:0:0", "core", 500_000),
        "dram0": zone(tmp_path, "intel-rapl:0:1", "dram", 2_000_000),
        "pkg1": zone(tmp_path, "intel-rapl:1", "package-1", 3_000_000),
        "dram1": zone(tmp_path, "intel-rapl:1:0", "dram", 4_000_000),
        "psys": zone(tmp_path, "intel-rapl:2", "psys", 9_000_000),
        "mmio": zone(tmp_path, "intel-rapl-mmio:0", "package-0", 7_000_000),
    }


def test_finds_packages_and_dram(tmp_path: pathlib.Path, two_sockets) -> None:
    devices = RaplSensor(root=tmp_path).open()
    assert [(d.device_id, d.kind, d.method, d.index) for d in devices] == [
        ("cpu:package-0", "cpu", "rapl", 0),
        ("ram:dram-0", "ram", "rapl", 0),
        ("cpu:package-1", "cpu", "rapl", 1),
        ("ram:dram-1", "ram", "rapl", 1),
    ]
    assert devices[1].name == "DRAM"
    assert devices[0].details["max_energy_range_j"] == pytest.approx(262_143.32885)


def test_reads_counters_and_power_between_reads(tmp_path: pathlib.Path, two_sockets) -> None:
    sensor = RaplSensor(root=tmp_path)
    sensor.open()
    first = {s.device_id: s for s in sensor.read(10.0, counter=False)}
    assert first["cpu:package-0"].energy_j == pytest.approx(1.0)
    assert first["ram:dram-1"].energy_j == pytest.approx(4.0)
    assert first["cpu:package-0"].power_w is None  # no earlier read to difference against
    set_energy(two_sockets["pkg0"], 1_000_000 + 45_000_000)  # +45 J in 0.5 s: 90 W
    set_energy(two_sockets["dram0"], 2_000_000 + 3_000_000)  # +3 J: 6 W
    second = {s.device_id: s for s in sensor.read(10.5, counter=False)}
    assert second["cpu:package-0"].energy_j == pytest.approx(46.0)
    assert second["cpu:package-0"].power_w == pytest.approx(90.0)
    assert second["ram:dram-0"].power_w == pytest.approx(6.0)
    assert second["cpu:package-1"].power_w == pytest.approx(0.0)
    assert all(s.flags == frozenset() for s in second.values())


def test_counter_wrap_is_unwrapped(tmp_path: pathlib.Path) -> None:
    pkg = zone(tmp_path, "intel-rapl:0", "package-0", RANGE_UJ - 2_000_000)
    sensor = RaplSensor(root=tmp_path)
    sensor.open()
    (before,) = sensor.read(1.0, counter=True)
    set_energy(pkg, 3_000_000)  # 2 J to the top, wrap, 3 J more
    (after,) = sensor.read(2.0, counter=True)
    assert after.energy_j - before.energy_j == pytest.approx(5.0)
    assert after.power_w == pytest.approx(5.0)
    assert after.flags == frozenset()
    set_energy(pkg, 4_000_000)
    (later,) = sensor.read(3.0, counter=True)
    assert later.energy_j - before.energy_j == pytest.approx(6.0)


def test_amd_rapl_tree(tmp_path: pathlib.Path) -> None:
    zone(tmp_path, "amd-rapl:0", "package-0", 123_000_000)
    sensor = RaplSensor(root=tmp_path)
    (info,) = sensor.open()
    assert info.device_id == "cpu:package-0"
    assert sensor.read(0.0, counter=False)[0].energy_j == pytest.approx(123.0)


def test_permission_denied_names_file_and_fix(
    tmp_path: pathlib.Path, two_sockets, monkeypatch: pytest.MonkeyPatch
) -> None:
    deny_energy_uj(monkeypatch)
    with pytest.raises(SensorPermissionError) as info:
        RaplSensor(root=tmp_path).open()
    message = str(info.value)
    assert str(two_sockets["pkg0"] / "energy_uj") in message
    assert "CVE-2020-8694" in message and "chmod" in message and "root" in message
    assert isinstance(info.value.__cause__, PermissionError)


def test_no_powercap(tmp_path: pathlib.Path) -> None:
    with pytest.raises(SensorNotSupported, match="no powercap interface"):
        RaplSensor(root=tmp_path / "missing").open()


def test_no_package_domain(tmp_path: pathlib.Path) -> None:
    zone(tmp_path, "intel-rapl:0", "psys", 1)
    with pytest.raises(SensorNotSupported, match="no RAPL package domain"):
        RaplSensor(root=tmp_path).open()


def test_counter_vanishing_mid_run_is_flagged_once(
    tmp_path: pathlib.Path, two_sockets, caplog: pytest.LogCaptureFixture
) -> None:
    sensor = RaplSensor(root=tmp_path)
    sensor.open()
    (two_sockets["dram1"] / "energy_uj").unlink()
    for t_s in (1.0, 2.0):
        samples = {s.device_id: s for s in sensor.read(t_s, counter=False)}
        lost = samples["ram:dram-1"]
        assert (lost.energy_j, lost.power_w, lost.flags) == (None, None, {"sensor_lost"})
        assert samples["cpu:package-0"].energy_j == pytest.approx(1.0)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "intel-rapl:1:0" in warnings[0].getMessage()
    sensor.close()
