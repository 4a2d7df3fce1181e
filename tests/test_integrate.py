"""integrate: hand-worked cases for each rule, and the acceptance bounds on real H200 traces."""

from __future__ import annotations

import pytest
from fakes import check_against_counter

from wattwise.integrate import DeviceIntegrator, integrate_phases
from wattwise.sensors.replay import (
    ReplayNvmlSensor,
    counter_reference,
    load_marks,
    load_trace,
)
from wattwise.types import DeviceInfo, Sample

GPU = DeviceInfo("gpu:GPU-1", "gpu", "Test GPU", "counter", update_period_s=0.1)
CPU_EST = DeviceInfo("cpu:machine", "cpu", "Test CPU", "estimate", update_period_s=0.5)


def s(t, energy=None, power=None, flags=()):
    return Sample(GPU.device_id, t, energy, power, flags=frozenset(flags))


def fed(samples, info=GPU):
    integrator = DeviceIntegrator(info)
    for sample in samples:
        integrator.feed(sample)
    return integrator


def test_power_trapezoid_and_cut_inside_a_ramp():
    # 100 W at 0 s ramping to 200 W at 1 s, then flat: 150 J + 200 J.
    samples = [s(0, power=100), s(1, power=200), s(2, power=200)]
    a, b = integrate_phases(samples, [GPU], [("a", 0.0), ("b", 0.5)], end_s=2.0, method="power")
    # first half of the ramp: 100 W * 0.5 s + 0.5 * (100 W/s) * 0.5^2 = 62.5 J
    assert a.energy_j == pytest.approx(62.5)
    assert b.energy_j == pytest.approx(350 - 62.5)
    assert (a.method, b.method) == ("power", "power")
    assert a.mean_power_w == pytest.approx(125.0)
    assert b.peak_power_w == pytest.approx(200.0)
    assert a.name == "a" and a.index == 0 and b.index == 1
    assert (b.start_s, b.end_s) == (0.5, 2.0)


def test_power_held_constant_beyond_the_readings():
    samples = [s(1, power=100), s(2, power=300)]
    (phase,) = integrate_phases(samples, [GPU], [("x", 0.0)], end_s=3.0, method="power")
    # 0-1 s: first reading held (100 J), 1-2 s: trapezoid (200 J), 2-3 s: last held (300 J)
    assert phase.energy_j == pytest.approx(600.0)


def test_counter_without_power_is_linear_and_flagged():
    samples = [s(0, 1000.0), s(1, 1100.0), s(2, 1300.0)]
    a, b = integrate_phases(samples, [GPU], [("a", 0.0), ("b", 0.5)], end_s=2.0)
    assert a.energy_j == pytest.approx(50.0)
    assert b.energy_j == pytest.approx(250.0)
    assert a.method == "counter"
    assert "no_instant_power" in a.flags


def test_counter_delta_is_shaped_by_instant_power():
    # counter: +120 J over 0..1 s; power ramps 100 -> 300 W, so 75 of its 200 J fall in 0..0.5 s
    samples = [s(0, 1000.0, 100.0), s(1, 1120.0, 300.0)]
    a, b = integrate_phases(samples, [GPU], [("a", 0.0), ("b", 0.5)], end_s=1.0)
    assert a.energy_j == pytest.approx(120 * 75 / 200)
    assert b.energy_j == pytest.approx(120 * 125 / 200)
    assert "no_instant_power" not in a.flags


def test_repeated_counter_value_means_not_updated_yet():
    # the value 1010 first appears at 0.1 s; its repeat at 0.15 s is not a new anchor
    samples = [s(0, 1000.0), s(0.05, 1000.0), s(0.1, 1010.0), s(0.15, 1010.0), s(0.2, 1020.0)]
    integrator = fed(samples)
    assert integrator.counter_cum_j(0.05) == pytest.approx(1005.0)
    assert integrator.counter_cum_j(0.15) == pytest.approx(1015.0)


def test_value_seen_late_is_moved_back_once_its_next_change_is_caught():
    # 1040 is first read at 0.5 s after a 0.5 s gap; the change to 1050 is caught at 0.54 s
    # (0.02 s after the previous read), so 1040 appeared one update period (0.1 s) earlier.
    samples = [s(0.0, 1000.0), s(0.5, 1040.0), s(0.52, 1040.0), s(0.54, 1050.0)]
    integrator = fed(samples)
    assert integrator.counter_cum_j(0.44) == pytest.approx(1040.0)
    assert integrator.counter_cum_j(0.49) == pytest.approx(1045.0)
    assert integrator.resolved(0.5)


def test_loose_anchor_is_not_resolved_until_another_follows():
    integrator = fed([s(0.0, 1000.0), s(0.5, 1040.0)])
    assert not integrator.resolved(0.3)  # 1040's time may still move
    integrator.feed(s(1.5, 1140.0))
    assert integrator.resolved(0.3)


def test_counter_reset_is_bridged_with_power_and_flagged():
    samples = [
        s(0, 1000.0, 100.0),
        s(1, 1100.0, 100.0),
        s(2, 50.0, 100.0),  # went backwards: the gap 1..2 s is bridged with 100 J of power
        s(3, 150.0, 100.0),
    ]
    a, b = integrate_phases(samples, [GPU], [("a", 0.0), ("b", 2.0)], end_s=3.0)
    assert a.energy_j == pytest.approx(200.0)
    assert b.energy_j == pytest.approx(100.0)
    assert "counter_reset" in a.flags
    assert "counter_reset" not in b.flags


def test_lost_sensor_invents_no_energy():
    samples = [s(0, power=100.0), s(1, power=100.0), s(2, flags={"sensor_lost"})]
    a, b = integrate_phases(samples, [GPU], [("a", 0.0), ("b", 0.5)], end_s=4.0)
    assert a.energy_j == pytest.approx(50.0)
    assert b.energy_j == pytest.approx(50.0)  # only up to the last good reading at 1 s
    assert "sensor_lost" not in a.flags
    assert "sensor_lost" in b.flags


def test_counter_spans_a_transient_loss():
    samples = [
        s(0, 1000.0, 100.0),
        s(1, 1100.0, 100.0),
        s(2, None, None, {"sensor_lost"}),
        s(3, 1300.0, 100.0),
    ]
    (phase,) = integrate_phases(samples, [GPU], [("a", 0.0)], end_s=3.0)
    assert phase.energy_j == pytest.approx(300.0)  # the counter kept counting
    assert "sensor_lost" in phase.flags
    (power,) = integrate_phases(samples, [GPU], [("a", 0.0)], end_s=3.0, method="power")
    assert power.energy_j == pytest.approx(100.0)  # no power readings across the gap


def test_short_phase_is_flagged_not_dropped():
    samples = [s(0, 1000.0, 100.0), s(1, 1100.0, 100.0)]
    a, b, c = integrate_phases(samples, [GPU], [("a", 0.0), ("b", 0.5), ("c", 0.55)], end_s=1.0)
    assert b.energy_j == pytest.approx(5.0)
    assert "short_phase" in b.flags
    assert "short_phase" not in a.flags
    assert a.energy_j + b.energy_j + c.energy_j == pytest.approx(100.0)


def test_estimated_device_carries_method_and_flag():
    samples = [Sample(CPU_EST.device_id, t, None, 20.0) for t in (0.0, 1.0, 2.0)]
    (phase,) = integrate_phases(samples, [CPU_EST], [("run", 0.0)])
    assert phase.method == "estimate"
    assert "estimated" in phase.flags
    assert phase.energy_j == pytest.approx(40.0)
    assert phase.kind == "cpu"


def test_replay_ended_and_device_flags_pass_to_phases():
    info = DeviceInfo("gpu:GPU-2", "gpu", "G", "counter", flags=frozenset({"averaged_power"}))
    samples = [
        Sample(info.device_id, 0.0, 0.0, 10.0),
        Sample(info.device_id, 2.0, 20.0, 10.0, flags=frozenset({"replay_ended"})),
    ]
    a, b = integrate_phases(samples, [info], [("a", 0.0), ("b", 1.5)])
    assert "averaged_power" in a.flags and "replay_ended" not in a.flags
    assert "replay_ended" in b.flags


def test_device_without_any_reading_is_flagged_lost():
    (phase,) = integrate_phases([], [GPU], [("a", 0.0)], end_s=1.0)
    assert phase.energy_j == 0.0
    assert "sensor_lost" in phase.flags


def test_two_devices_and_bad_arguments():
    samples = [s(0, power=10.0), s(1, power=10.0)]
    samples += [Sample(CPU_EST.device_id, t, None, 5.0) for t in (0.0, 1.0)]
    phases = integrate_phases(samples, [GPU, CPU_EST], [("a", 0.0)], method="power")
    assert [(p.device_id, p.energy_j) for p in phases] == [
        (GPU.device_id, pytest.approx(10.0)),
        (CPU_EST.device_id, pytest.approx(5.0)),
    ]
    with pytest.raises(ValueError, match="time order"):
        integrate_phases(samples, [GPU], [("a", 1.0), ("b", 0.5)])
    with pytest.raises(ValueError, match="method"):
        integrate_phases(samples, [GPU], [("a", 0.0)], method="magic")
    with pytest.raises(ValueError, match="time order"):
        fed([s(1, power=1.0), s(0.5, power=1.0)])


def test_prune_keeps_later_answers():
    samples = [s(t / 10, 1000.0 + 10 * t, 100.0) for t in range(100)]
    full = fed(samples)
    pruned = fed(samples)
    pruned.prune(5.0)
    for t in (5.0, 6.25, 9.9, 12.0):
        assert pruned.counter_cum_j(t) == pytest.approx(full.counter_cum_j(t))
    assert len(pruned._pt) < 60


# ---- acceptance on real H200 recordings ------------------------------------------------------

TRACES = [
    ("h200-lightning-fit-50hz.csv", "h200-lightning-fit-marks.json"),
    ("h200-mlp6144-8epochs-20hz.csv", "h200-mlp6144-8epochs-marks.json"),
]
BOUNDS = {"counter": (1.0, 5.0, 1.0), "power": (3.0, 8.0, 3.0)}


@pytest.mark.parametrize("method", ["counter", "power"])
@pytest.mark.parametrize(("trace_name", "marks_name"), TRACES)
def test_phases_agree_with_the_hardware_counter(nvml_fixtures, trace_name, marks_name, method):
    trace = load_trace(nvml_fixtures / trace_name)
    marks = load_marks(nvml_fixtures / marks_name)
    (info,) = ReplayNvmlSensor(nvml_fixtures / trace_name, clock=lambda: 0.0).open()
    # phase i runs from mark i to mark i+1; the last mark closes the last phase
    phases = integrate_phases(
        trace.samples(info.device_id), [info], marks.marks[:-1], marks.marks[-1][1], method
    )
    assert len(phases) == len(marks.marks) - 1
    reference = counter_reference(trace.t_s, trace.energy_j)
    long_pct, mid_pct, sum_pct = BOUNDS[method]
    check_against_counter(phases, reference, long_pct=long_pct, mid_pct=mid_pct, sum_pct=sum_pct)
    assert all(p.method == method for p in phases)
    assert all("short_phase" in p.flags for p in phases if p.duration_s < 0.1)
