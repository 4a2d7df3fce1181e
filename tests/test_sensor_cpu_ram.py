"""CPU and RAM estimate sensors with psutil's readings scripted."""

from __future__ import annotations

import collections
import csv
import logging
import types

import psutil
import pytest

from wattwise.errors import BadInput
from wattwise.sensors import cpu_estimate
from wattwise.sensors.cpu_estimate import CpuEstimateSensor, cpu_power_table_path, lookup_tdp
from wattwise.sensors.ram_estimate import RamEstimateSensor

GIB = 1024**3
CpuTimes = collections.namedtuple(
    "CpuTimes", "user nice system idle iowait irq softirq steal guest guest_nice"
)
ProcTimes = collections.namedtuple("ProcTimes", "user system children_user children_system")

XEON_2S = "".join(
    f"processor\t: {i}\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nphysical id\t: {i % 2}\n\n"
    for i in range(4)
)


def table_tdp_w(name: str) -> float:
    """The TDP codecarbon's table gives one CPU (some other rows of the table are malformed)."""
    with cpu_power_table_path().open() as f:
        (tdp,) = [float(row["TDP"]) for row in csv.DictReader(f) if row["Name"] == name]
    return tdp


def machine(busy_s: float, idle_s: float, guest_s: float = 0.0) -> CpuTimes:
    """CPU seconds summed over CPUs; guest time is already inside user, as on Linux."""
    return CpuTimes(busy_s, 0.0, 0.0, idle_s * 0.9, idle_s * 0.1, 0.0, 0.0, 0.0, guest_s, 0.0)


class FakeProc:
    def __init__(self, pid: int, cpu_s: float = 0.0, rss: int = 0) -> None:
        self.pid, self.cpu_s, self.rss = pid, cpu_s, rss
        self.kids: list[FakeProc] = []

    def cpu_times(self) -> ProcTimes:
        return ProcTimes(self.cpu_s * 0.75, self.cpu_s * 0.25, 0.0, 0.0)

    def memory_info(self) -> types.SimpleNamespace:
        return types.SimpleNamespace(rss=self.rss)

    def children(self, recursive: bool = False) -> list[FakeProc]:
        assert recursive
        return list(self.kids)


@pytest.fixture
def times(monkeypatch: pytest.MonkeyPatch) -> list[CpuTimes]:
    """Push the next psutil.cpu_times() reading onto this list (the last one is repeated)."""
    readings = [machine(100.0, 300.0)]
    monkeypatch.setattr(psutil, "cpu_times", lambda: readings[-1])
    return readings


@pytest.fixture
def me(monkeypatch: pytest.MonkeyPatch) -> FakeProc:
    proc = FakeProc(4242, cpu_s=10.0, rss=2 * GIB)
    monkeypatch.setattr(psutil, "Process", lambda pid=None: proc)
    return proc


def test_machine_mode_linear_in_utilisation(times: list[CpuTimes]) -> None:
    sensor = CpuEstimateSensor(mode="machine", tdp_w=100.0)
    (info,) = sensor.open()
    assert (info.device_id, info.kind, info.method) == ("cpu:machine", "cpu", "estimate")
    assert info.flags == {"estimated"}
    assert info.details["tdp_w"] == 100.0 and info.details["tdp_source"] == "argument tdp_w"
    times.append(machine(101.0, 301.0, guest_s=5.0))  # 1 s busy of 2 s; guest not double counted
    (s,) = sensor.read(1.0, counter=True)
    assert s.utilisation == pytest.approx(0.5)
    assert s.power_w == pytest.approx(100.0 * (0.2 + 0.8 * 0.5))
    assert s.energy_j is None and s.flags == frozenset()
    times.append(machine(101.0, 305.0, guest_s=5.0))  # idle
    assert sensor.read(2.0, counter=False)[0].power_w == pytest.approx(20.0)
    times.append(machine(105.0, 305.0, guest_s=5.0))  # flat out
    assert sensor.read(3.0, counter=False)[0].power_w == pytest.approx(100.0)


def test_reading_between_ticks_keeps_last_value(times: list[CpuTimes]) -> None:
    sensor = CpuEstimateSensor(tdp_w=50.0)
    sensor.open()
    assert sensor.read(0.0, counter=False) == []  # nothing measured yet
    times.append(machine(103.0, 301.0))
    assert sensor.read(1.0, counter=False)[0].power_w == pytest.approx(50.0 * (0.2 + 0.8 * 0.75))
    (s,) = sensor.read(1.001, counter=False)  # cpu_times has not ticked
    assert s.power_w == pytest.approx(40.0) and s.t_s == 1.001


def test_process_mode_takes_its_share_of_busy_time(times: list[CpuTimes], me: FakeProc) -> None:
    worker = FakeProc(4243, cpu_s=5.0)
    me.kids = [worker]
    sensor = CpuEstimateSensor(mode="process", tdp_w=100.0)
    assert sensor.open()[0].device_id == "cpu:process"
    times.append(machine(101.0, 303.0))  # machine: 1 s busy of 4 s -> 40 W
    me.cpu_s += 0.3
    worker.cpu_s += 0.1
    late = FakeProc(4244, cpu_s=0.1)  # started after the last read: all its time is new
    me.kids = [worker, late]
    (s,) = sensor.read(1.0, counter=False)
    assert s.power_w == pytest.approx(40.0 * 0.5)
    assert s.utilisation == pytest.approx(0.5 / 4.0)
    me.kids = [late]  # the worker exited: no negative share
    times.append(machine(102.0, 303.0))  # 1 s busy of 1 s -> 100 W
    me.cpu_s += 0.25
    (s,) = sensor.read(2.0, counter=False)
    assert s.power_w == pytest.approx(100.0 * 0.25)


def test_tdp_from_codecarbon_table_times_sockets(
    times: list[CpuTimes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cpu_estimate, "read_cpuinfo", lambda: XEON_2S)
    (info,) = CpuEstimateSensor().open()
    assert info.name == "Intel(R) Xeon(R) Platinum 8480+"
    assert info.details["sockets"] == 2
    assert info.details["tdp_w"] == pytest.approx(2 * table_tdp_w("Intel Xeon Platinum 8480+"))
    assert "Intel Xeon Platinum 8480+" in info.details["tdp_source"]


def test_unknown_cpu_gets_documented_default(
    times: list[CpuTimes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cpu_estimate, "read_cpuinfo", lambda: "model name\t: Mystery CPU 9000\n")
    monkeypatch.setattr(cpu_estimate, "logical_cpus", lambda: 16)
    (info,) = CpuEstimateSensor().open()
    assert info.details["tdp_w"] == pytest.approx(16 * cpu_estimate.DEFAULT_W_PER_THREAD)
    assert info.details["tdp_source"].startswith("default")
    assert "Mystery CPU 9000" in info.details["tdp_source"]


@pytest.mark.parametrize(
    ("brand", "entry"),
    [
        ("Intel(R) Xeon(R) Platinum 8480+ @ 2.00GHz", "Intel Xeon Platinum 8480+"),
        ("AMD EPYC 9654 96-Core Processor", "AMD EPYC 9654"),
        ("AMD EPYC 9654P 96-Core Processor", "AMD EPYC 9654P"),
        ("Intel(R) Core(TM) i7-10700 CPU @ 2.90GHz", "Intel Core i7-10700"),
        ("AMD Ryzen 7 5800H with Radeon Graphics", "AMD Ryzen 7 5800H"),
        ("intel   xeon gold 6248", "Intel Xeon Gold 6248"),
    ],
)
def test_forgiving_tdp_match(brand: str, entry: str) -> None:
    assert lookup_tdp(brand) == (table_tdp_w(entry), entry)


@pytest.mark.parametrize("brand", ["AMD EPYC", "Mystery CPU 9000", ""])
def test_unknown_brand_has_no_tdp(brand: str) -> None:
    assert lookup_tdp(brand) is None


def test_lookup_without_codecarbon(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_estimate.importlib.util, "find_spec", lambda name: None)
    assert lookup_tdp("Intel(R) Xeon(R) Platinum 8480+") is None


@pytest.mark.parametrize(("mode", "tdp_w"), [("node", None), ("machine", 0.0), ("process", -5)])
def test_bad_arguments(mode: str, tdp_w: float | None) -> None:
    with pytest.raises(BadInput, match=repr(mode) if mode == "node" else "tdp_w"):
        CpuEstimateSensor(mode=mode, tdp_w=tdp_w)


def test_cpu_read_failure_is_flagged_once(
    times: list[CpuTimes], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    sensor = CpuEstimateSensor(tdp_w=10.0)
    sensor.open()

    def broken() -> CpuTimes:
        raise OSError("no /proc/stat")

    monkeypatch.setattr(psutil, "cpu_times", broken)
    for t_s in (1.0, 2.0):
        (s,) = sensor.read(t_s, counter=False)
        assert (s.power_w, s.flags) == (None, {"sensor_lost"})
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1


def test_cpu_estimate_on_this_machine() -> None:
    sensor = CpuEstimateSensor()
    (info,) = sensor.open()
    assert info.details["tdp_w"] > 0
    total = sum(i * i for i in range(200_000))  # ~20 ms of CPU so cpu_times ticks
    (s,) = sensor.read(1.0, counter=False)
    assert total > 0
    assert info.details["tdp_w"] * 0.2 <= s.power_w <= info.details["tdp_w"]


def test_ram_machine_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    vm = types.SimpleNamespace(total=64 * GIB, available=48 * GIB)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: vm)
    sensor = RamEstimateSensor()
    (info,) = sensor.open()
    assert (info.device_id, info.kind, info.method, info.flags) == (
        "ram",
        "ram",
        "estimate",
        {"estimated"},
    )
    assert info.details["memory_total_bytes"] == 64 * GIB
    (s,) = sensor.read(1.0, counter=True)
    assert s.power_w == pytest.approx(16 * 0.3725)
    assert s.energy_j is None


def test_ram_process_mode_sums_the_tree(me: FakeProc) -> None:
    me.kids = [FakeProc(4243, rss=GIB // 2), FakeProc(4244, rss=GIB // 2)]
    sensor = RamEstimateSensor(mode="process")
    sensor.open()
    assert sensor.read(1.0, counter=False)[0].power_w == pytest.approx(3 * 0.3725)


def test_a_child_that_ends_mid_read_is_left_out(times: list[CpuTimes], me: FakeProc) -> None:
    """Both process-mode sensors walk the tree through one helper: a child that exits (or denies
    access) between children() and its reading is skipped, not an error."""

    class Gone(FakeProc):
        def cpu_times(self) -> ProcTimes:
            raise psutil.NoSuchProcess(self.pid)

        def memory_info(self) -> types.SimpleNamespace:
            raise psutil.AccessDenied(self.pid)

    me.kids = [FakeProc(4243, cpu_s=1.0, rss=GIB), Gone(4244, cpu_s=9.0, rss=9 * GIB)]
    ram = RamEstimateSensor(mode="process")
    ram.open()
    assert ram.read(1.0, counter=False)[0].power_w == pytest.approx(3 * 0.3725)
    cpu = CpuEstimateSensor(mode="process", tdp_w=100.0)
    cpu.open()
    assert cpu._last_tree == {4242: pytest.approx(10.0), 4243: pytest.approx(1.0)}


def test_ram_bad_mode() -> None:
    with pytest.raises(BadInput, match="'everything'"):
        RamEstimateSensor(mode="everything")


def test_ram_on_this_machine() -> None:
    sensor = RamEstimateSensor(mode="process")
    sensor.open()
    (s,) = sensor.read(1.0, counter=False)
    assert 0 < s.power_w < 0.3725 * psutil.virtual_memory().total / GIB
