"""Test doubles for wattwise (a manual clock, a scripted sensor) and the acceptance check.

``FakeClock`` stands in for ``time.monotonic``; ``FakeSensor`` is a one-device Sensor whose power
follows a piecewise-constant schedule, so its energy counter is known exactly (worked out by hand
in the tests), with switchable faults: a read that raises, a device that is lost, a counter that
goes backwards, a counter that is not supported.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Callable, Sequence

from wattwise.errors import SensorReadError
from wattwise.sensors.base import Sensor
from wattwise.types import DeviceInfo, DeviceKind, PhaseEnergy, Sample


class FakeClock:
    """A monotonic clock that moves only when told to (thread-safe)."""

    def __init__(self, start_s: float = 0.0) -> None:
        self._t_s = float(start_s)
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._t_s

    __call__ = now

    def advance(self, s: float) -> float:
        if s < 0:
            raise ValueError(f"a monotonic clock cannot go back ({s} s)")
        with self._lock:
            self._t_s += s
            return self._t_s


class FakeSensor(Sensor):
    """One scripted device.

    ``power_w``: a constant, or a schedule ``[(from_s, watts), ...]`` (piecewise constant, sorted,
    in sensor-clock seconds; before the first entry the first power applies). The counter is the
    exact integral of that schedule from t=0 plus ``counter_offset_j``, frozen to multiples of
    ``counter_period_s`` when that is > 0 (like NVML's ~100 ms update). The device's
    ``update_period_s`` defaults to ``counter_period_s``, or 1 ms for a continuous counter.

    Faults: ``raise_from_s`` (reads at or after it raise SensorReadError, until ``raise_until_s``),
    ``lost_from_s`` (reads return a ``sensor_lost`` sample with no values), ``counter_reset_at_s``
    (the counter restarts from 0 there: it goes backwards), ``counter=False`` (no counter: method
    ``power``), ``open_error`` (open() raises it). ``gate``: an Event that each read waits on
    (to model a slow read). ``reads`` records ``(t_s, counter)`` of every read call.
    """

    def __init__(
        self,
        power_w: float | Sequence[tuple[float, float]] = 100.0,
        *,
        device_id: str = "gpu:GPU-00000000-0000-0000-0000-000000000000",
        kind: DeviceKind = "gpu",
        name: str = "Fake GPU",
        counter: bool = True,
        counter_always: bool = False,
        method: str | None = None,
        counter_offset_j: float = 1000.0,
        counter_period_s: float = 0.0,
        update_period_s: float | None = None,
        flags: frozenset[str] = frozenset(),
        raise_from_s: float | None = None,
        raise_until_s: float | None = None,
        lost_from_s: float | None = None,
        counter_reset_at_s: float | None = None,
        open_error: Exception | None = None,
        gate: threading.Event | None = None,
    ) -> None:
        if isinstance(power_w, int | float):
            power_w = [(0.0, float(power_w))]
        self.schedule = [(float(t), float(p)) for t, p in power_w]
        self.kind = kind
        self.info = DeviceInfo(
            device_id=device_id,
            kind=kind,
            name=name,
            method=method or ("counter" if counter else "power"),
            update_period_s=update_period_s or counter_period_s or 0.001,
            flags=flags,
        )
        self.counter = counter
        self.counter_always = counter_always
        self.counter_offset_j = counter_offset_j
        self.counter_period_s = counter_period_s
        self.raise_from_s = raise_from_s
        self.raise_until_s = raise_until_s
        self.lost_from_s = lost_from_s
        self.counter_reset_at_s = counter_reset_at_s
        self.open_error = open_error
        self.gate = gate
        self.reads: list[tuple[float, bool]] = []
        self.opened = 0
        self.closed = 0

    def power_at(self, t_s: float) -> float:
        power = self.schedule[0][1]
        for start_s, p in self.schedule:
            if start_s <= t_s:
                power = p
        return power

    def energy_between(self, t0_s: float, t1_s: float) -> float:
        """Exact integral of the schedule over [t0_s, t1_s] in J."""
        edges = [t0_s] + [t for t, _ in self.schedule if t0_s < t < t1_s] + [t1_s]
        return sum(self.power_at(a) * (b - a) for a, b in itertools.pairwise(edges))

    def counter_at(self, t_s: float) -> float:
        if self.counter_period_s > 0:
            # whole periods, robust to float noise (4.7 / 0.1 = 46.99999...)
            t_s = math.floor(t_s / self.counter_period_s + 1e-9) * self.counter_period_s
        if self.counter_reset_at_s is not None and t_s >= self.counter_reset_at_s:
            return self.energy_between(self.counter_reset_at_s, t_s)
        return self.counter_offset_j + self.energy_between(0.0, t_s)

    def open(self) -> list[DeviceInfo]:
        self.opened += 1
        if self.open_error is not None:
            raise self.open_error
        return [self.info]

    def read(self, t_s: float, *, counter: bool) -> Sequence[Sample]:
        self.reads.append((t_s, counter))
        if self.gate is not None:
            self.gate.wait()
        failing = self.raise_from_s is not None and t_s >= self.raise_from_s
        if failing and (self.raise_until_s is None or t_s < self.raise_until_s):
            raise SensorReadError(f"{self.info.name}: scripted read failure at {t_s} s")
        if self.lost_from_s is not None and t_s >= self.lost_from_s:
            return [Sample(self.info.device_id, t_s, None, None, flags=frozenset({"sensor_lost"}))]
        want_counter = self.counter and (counter or self.counter_always)
        return [
            Sample(
                self.info.device_id,
                t_s,
                self.counter_at(t_s) if want_counter else None,
                self.power_at(t_s),
            )
        ]

    def close(self) -> None:
        self.closed += 1


def check_against_counter(
    phases: Sequence[PhaseEnergy],
    reference: Callable[[float], float],
    *,
    long_pct: float,
    mid_pct: float,
    sum_pct: float,
    offset_s: float = 0.0,
) -> dict[str, float]:
    """Assert the acceptance bounds: phases >= 2 s within ``long_pct``, 0.4-2 s within
    ``mid_pct``, the sum of all phases within ``sum_pct``; returns the worst errors in %."""
    worst = {"long": 0.0, "mid": 0.0}
    for p in phases:
        ref = reference(p.end_s - offset_s) - reference(p.start_s - offset_s)
        band = "long" if p.duration_s >= 2 else "mid" if p.duration_s >= 0.4 else None
        if band is None:
            continue
        err = abs(p.energy_j - ref) / ref * 100
        worst[band] = max(worst[band], err)
        bound = long_pct if band == "long" else mid_pct
        assert err <= bound, f"{p.name} [{p.start_s:.3f}, {p.end_s:.3f}]: {err:.2f}% > {bound}%"
    assert worst["long"] or worst["mid"], "no phase of 0.4 s or more was checked"
    total = sum(p.energy_j for p in phases)
    ref_total = reference(phases[-1].end_s - offset_s) - reference(phases[0].start_s - offset_s)
    worst["sum"] = abs(total - ref_total) / ref_total * 100
    assert worst["sum"] <= sum_pct, f"sum of phases: {worst['sum']:.3f}% > {sum_pct}%"
    return worst
