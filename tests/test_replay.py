"""Replay sensor: trace / marks loading and validation, and the replayed GPU's readings."""

from __future__ import annotations

import itertools
import shutil

import pytest
from fakes import FakeClock

from wattwise.errors import BadInput, TraceFormatError
from wattwise.sensors.replay import (
    ReplayNvmlSensor,
    counter_reference,
    find_marks,
    load_marks,
    load_trace,
)

FIT = "h200-lightning-fit-50hz.csv"
FIT_MARKS = "h200-lightning-fit-marks.json"
MLP = "h200-mlp6144-8epochs-20hz.csv"


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_load_trace_in_si_units(nvml_fixtures):
    trace = load_trace(nvml_fixtures / FIT)
    # first row: 0.0004,7553366,119608,119441,0,...
    assert trace.t_s[0] == pytest.approx(0.0004)
    assert trace.energy_j[0] == pytest.approx(7553.366)
    assert trace.power_w[0] == pytest.approx(119.608)
    assert trace.instant_w is not None and trace.instant_w[0] == pytest.approx(119.441)
    assert trace.best_power_w is trace.instant_w
    assert trace.gpu_util is not None and trace.gpu_util[0] == 0.0
    assert len(trace.t_s) == 1353
    assert trace.update_period_s() == pytest.approx(0.1, abs=0.005)


def test_load_marks(nvml_fixtures):
    marks = load_marks(nvml_fixtures / FIT_MARKS)
    assert marks.marks[0] == ("train_epoch_start", pytest.approx(8.862357616))
    assert len(marks.marks) == 8
    assert marks.fit_start_s == pytest.approx(3.0005466)
    assert marks.gpu is None and marks.extra == {"fit_s": pytest.approx(15.7061947)}
    mlp = load_marks(nvml_fixtures / "h200-mlp6144-8epochs-marks.json")
    assert (mlp.gpu, mlp.params) == ("NVIDIA H200", 151080970)
    assert mlp.peak_mem_gib == pytest.approx(3.0417767)


BAD_TRACES = [
    ("t_s,power_mW\n0,1\n1,1\n", "missing column"),
    ("t_s,energy_mJ,power_mW\n0,1,1\n1,x,1\n", "row 3, column 'energy_mJ'"),
    ("t_s,energy_mJ,power_mW\n0,1,1\n1,1,nan\n", "row 3, column 'power_mW'"),
    ("t_s,energy_mJ,power_mW\n0,1,1\n2,1,1\n1,1,1\n", "row 4: t_s 1.0 does not increase"),
    ("t_s,energy_mJ,power_mW\n0,1,1\n", "at least 2 data rows"),
    ("t_s,energy_mJ,power_mW\n0,1,1\n1,1\n", "row 3 has 2 fields"),
    ("", "missing column"),
    # regression: negative power or counter readings were integrated into negative energy
    ("t_s,energy_mJ,power_mW\n0,1,1\n1,1,-5000\n", "row 3, column 'power_mW': '-5000'"),
    ("t_s,energy_mJ,power_mW\n0,-1,1\n1,1,1\n", "row 2, column 'energy_mJ': '-1'"),
    ("t_s,energy_mJ,power_mW,instant_mW\n0,1,1,1\n1,1,1,-1\n", "column 'instant_mW'"),
]
BAD_MARKS = [
    ("{", "not a JSON marks file"),
    ('{"fit_start": 1}', "no 'marks' list"),
    ('{"marks": [["a", "x"]]}', "mark 0"),
    ('{"marks": [["a", 2], ["b", 1]]}', "mark 1 .* before the previous one"),
    ('{"marks": [], "fit_end": "late"}', "fit_end"),
    ('{"marks": [], "gpu": 7}', "gpu"),
]


@pytest.mark.parametrize(
    ("load", "name", "text", "message"),
    [(load_trace, "bad.csv", *case) for case in BAD_TRACES]
    + [(load_marks, "marks.json", *case) for case in BAD_MARKS],
)
def test_bad_file_names_itself_and_the_problem(tmp_path, load, name, text, message):
    path = write(tmp_path, name, text)
    with pytest.raises(TraceFormatError, match=message) as info:
        load(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, BadInput)


def test_unreadable_trace(tmp_path):
    with pytest.raises(TraceFormatError, match="cannot read"):
        load_trace(tmp_path / "missing.csv")
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(TraceFormatError, match="UTF-8"):
        load_trace(binary)


def test_replay_reads_the_row_in_force(nvml_fixtures):
    clock = FakeClock(50.0)
    sensor = ReplayNvmlSensor(nvml_fixtures / FIT, clock=clock)
    (info,) = sensor.open()
    trace = sensor.trace
    # trace time t_s[0] is open time; 1.0 s later the row at trace time <= t_s[0] + 1.0 rules
    rel = trace.t_s[0] + 1.0
    i = max(k for k, t in enumerate(trace.t_s) if t <= rel)
    (sample,) = sensor.read(51.0, counter=True)
    assert sample.t_s == 51.0
    assert sample.energy_j == pytest.approx(trace.energy_j[i])
    assert sample.power_w == pytest.approx(trace.instant_w[i])
    assert sample.device_id == info.device_id
    (cheap,) = sensor.read(51.0, counter=False)
    assert cheap.energy_j is None and cheap.power_w == sample.power_w
    assert not sample.flags


def test_a_recorder_stall_replays_as_a_counter_stepping_at_its_period(nvml_fixtures):
    """The H200 fit trace has no row from 3.0 s to 3.87 s (its recorder's thread was starved):
    recorded, the counter looks frozen for 0.93 s and then jumps 107 J at once. Replayed, it
    steps every update period along the line joining the change points around the stall, so a
    live reader sees what the GPU did, and the rows outside the stall replay unchanged."""
    clock = FakeClock(0.0)
    sensor = ReplayNvmlSensor(nvml_fixtures / FIT, clock=clock)
    sensor.open()
    trace = sensor.trace
    t0 = trace.t_s[0]
    gaps = [(b - a, a, b) for a, b in itertools.pairwise(trace.t_s)]
    gap_s, a, b = max(gaps)
    assert gap_s > 0.8  # the stall this test is about
    period = trace.update_period_s()
    reference = counter_reference(trace.t_s, trace.energy_j)
    values = []
    for k in range(int((b - a) / 0.01)):
        rel = a + 0.01 * k
        (sample,) = sensor.read(rel - t0, counter=True)
        values.append((rel, sample.energy_j))
    changes = [
        (t, e)
        for (t, e), (_, before) in ((y, x) for x, y in itertools.pairwise(values))
        if e != before
    ]
    assert len(changes) >= int(gap_s / period) - 2  # it keeps stepping through the stall
    for t, e in changes:
        assert e == pytest.approx(reference(t), abs=1.1 * 120.0 * period)  # one step behind at most
        assert e <= reference(t) + 1e-6
    assert all(e2 >= e1 for (_, e1), (_, e2) in itertools.pairwise(values))
    # outside the stall: the recorded row
    (sample,) = sensor.read(1.0, counter=True)
    i = max(k for k, t in enumerate(trace.t_s) if t <= t0 + 1.0)
    assert sample.energy_j == trace.energy_j[i]


def test_replay_continues_after_the_trace_ends(nvml_fixtures):
    clock = FakeClock(0.0)
    sensor = ReplayNvmlSensor(nvml_fixtures / FIT, clock=clock)
    sensor.open()
    trace = sensor.trace
    after = trace.duration_s + 10.0
    (sample,) = sensor.read(after, counter=True)
    last_power = trace.instant_w[-1]
    assert sample.power_w == pytest.approx(last_power)
    assert sample.energy_j == pytest.approx(trace.energy_j[-1] + last_power * 10.0)
    assert "replay_ended" in sample.flags


def test_replayed_gpu_identity(nvml_fixtures, tmp_path):
    a = ReplayNvmlSensor(nvml_fixtures / FIT, clock=lambda: 0.0).open()[0]
    b = ReplayNvmlSensor(nvml_fixtures / FIT, clock=lambda: 5.0).open()[0]
    c = ReplayNvmlSensor(nvml_fixtures / MLP, clock=lambda: 0.0).open()[0]
    assert a.device_id == b.device_id == f"gpu:{a.uuid}"
    assert a.uuid.startswith("GPU-") and a.uuid != c.uuid
    assert (a.kind, a.method) == ("gpu", "counter")
    assert a.details["replay_path"] == str((nvml_fixtures / FIT).resolve())
    # the MLP trace has a marks file next to it naming the GPU
    assert c.name == "NVIDIA H200 (replay)"
    assert a.name == "NVIDIA GPU (replay)"
    assert a.update_period_s == pytest.approx(0.1, abs=0.005)
    # a copy elsewhere is the same GPU: identity comes from the bytes, not the path
    copy = tmp_path / "copy.csv"
    shutil.copy(nvml_fixtures / FIT, copy)
    assert ReplayNvmlSensor(copy).open()[0].uuid == a.uuid


def test_trace_without_instant_power_is_flagged_averaged(tmp_path):
    path = write(tmp_path, "avg.csv", "t_s,energy_mJ,power_mW\n0,1000,100000\n0.1,1010,100000\n")
    (info,) = ReplayNvmlSensor(path, clock=lambda: 0.0).open()
    assert "averaged_power" in info.flags
    assert info.name == "NVIDIA GPU (replay)"


def test_find_marks(nvml_fixtures, tmp_path):
    assert find_marks(nvml_fixtures / FIT) == nvml_fixtures / FIT_MARKS
    assert find_marks(tmp_path / "lonely.csv") is None
    explicit = write(tmp_path, "m.json", '{"marks": [], "gpu": "NVIDIA H100 80GB HBM3"}')
    trace = write(tmp_path, "t.csv", "t_s,energy_mJ,power_mW\n0,1,1\n1,2,1\n")
    (info,) = ReplayNvmlSensor(trace, clock=lambda: 0.0, marks=explicit).open()
    assert info.name == "NVIDIA H100 80GB HBM3 (replay)"
