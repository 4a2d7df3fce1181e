"""Pure integration: samples + boundary timestamps -> energy per device per phase.

No clock, no I/O. Each device's samples build one cumulative energy curve ``E(t)``; a phase's
energy is ``E(end) - E(start)``, so consecutive phases always add up to the whole span.

Counter method (NVML mJ counter, RAPL): the counter's change points are the anchors (a repeated
value means the counter has not updated yet). Between two anchors the counter's energy delta is
spread in proportion to the trapezoid integral of the power readings (instant power where the
device offers it), or linearly in time where there is no power; before the first / after the last
anchor the power integral carries on. A counter that goes backwards (reset) is bridged with the
power integral and flagged ``counter_reset``.

Power method: trapezoid over the power readings, the first / last reading held constant beyond the
ends. A lost sensor (``sensor_lost`` sample) contributes no energy until it answers again.
"""

from __future__ import annotations

import functools
import itertools
import math
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from typing import Literal

from wattwise.types import DeviceInfo, Method, PhaseEnergy, Sample

RequestedMethod = Literal["auto", "counter", "power"]
REQUESTED_METHODS: tuple[str, ...] = ("auto", "counter", "power")


class DeviceIntegrator:
    """The energy curve of one device, fed samples in time order."""

    def __init__(self, info: DeviceInfo):
        self.info = info
        # power readings: time, watts, cumulative trapezoid J, joined to the previous reading
        self._pt: list[float] = []
        self._pw: list[float] = []
        self._pc: list[float] = []
        self._pb: list[float] = []  # the same, with gaps bridged (to shape counter deltas)
        self._pj: list[bool] = []
        # counter anchors (change points): time, reset-corrected cumulative J
        self._at: list[float] = []
        self._ae: list[float] = []
        self._last_raw_j: float | None = None
        self._last_read_t: float | None = None  # newest counter read
        self._prev_read_t: float | None = None  # the read before the newest value appeared
        self._last_tight = False  # the newest change was caught within a quarter period
        self._offset_j = 0.0
        self._resets: list[tuple[float, float]] = []  # gaps bridged with power
        self.reset_count = 0
        self._lost: list[tuple[float, float]] = []  # closed intervals without readings
        self._lost_since: float | None = None  # open loss: last good reading time
        self._sample_flags: list[tuple[float, frozenset[str]]] = []
        self._last_t: float | None = None
        self._last_good_t: float | None = None
        self._gap = False  # a loss happened since the last power reading

    # ---- feeding -------------------------------------------------------------------------
    def feed(self, sample: Sample) -> None:
        t = sample.t_s
        if self._last_t is not None and t < self._last_t:
            raise ValueError(f"samples must come in time order: {t} after {self._last_t}")
        self._last_t = t
        extra = sample.flags - {"sensor_lost"}
        if extra:
            self._sample_flags.append((t, extra))
        if "sensor_lost" in sample.flags:
            if self._lost_since is None:
                self._lost_since = t if self._last_good_t is None else self._last_good_t
            self._gap = True
            return
        if sample.power_w is None and sample.energy_j is None:
            return
        if self._lost_since is not None:
            self._lost.append((self._lost_since, t))
            self._lost_since = None
        self._last_good_t = t
        if sample.power_w is not None:
            self._add_power(t, sample.power_w)
        if sample.energy_j is not None:
            self._add_counter(t, sample.energy_j)

    def _add_power(self, t: float, power_w: float) -> None:
        joined = bool(self._pt) and not self._gap
        cum = bridged = 0.0
        if self._pt:
            step_j = 0.5 * (self._pw[-1] + power_w) * (t - self._pt[-1])
            cum = self._pc[-1] + (step_j if joined else 0.0)
            bridged = self._pb[-1] + step_j
        self._pt.append(t)
        self._pw.append(power_w)
        self._pc.append(cum)
        self._pb.append(bridged)
        self._pj.append(joined)
        self._gap = False

    def _add_counter(self, t: float, raw_j: float) -> None:
        last, last_read = self._last_raw_j, self._last_read_t
        self._last_raw_j, self._last_read_t = raw_j, t
        if last is not None and raw_j == last:
            return  # not updated yet
        period = self.info.update_period_s
        tight = last_read is not None and t - last_read <= period / 4
        if last is not None and raw_j < last:
            # reset or wrap: carry on from the last anchor with the power integral
            bridged = self._ae[-1] + self.power_cum_j(t) - self.power_cum_j(self._at[-1])
            self._resets.append((self._at[-1], t))
            self.reset_count += 1
            self._offset_j = bridged - raw_j
        elif tight and self._at:
            # A change caught within a quarter of the update period: the previous value
            # appeared one period before it (the counter steps on a steady clock), not when it
            # was first read. A counter that updates continuously (RAPL) declares a tiny
            # update period, so its changes are never caught this tightly.
            lo = self._at[-1] - period
            if self._prev_read_t is not None:
                lo = max(lo, self._prev_read_t)
            if len(self._at) > 1:
                lo = max(lo, self._at[-2])
            self._at[-1] = min(self._at[-1], max(lo, t - period))
        self._prev_read_t = last_read
        self._last_tight = tight
        self._at.append(t)
        self._ae.append(raw_j + self._offset_j)

    # ---- queries -------------------------------------------------------------------------
    @property
    def has_counter(self) -> bool:
        return bool(self._at)

    @property
    def has_power(self) -> bool:
        return bool(self._pt)

    @property
    def last_t_s(self) -> float:
        """Time of the newest sample fed (-inf before any)."""
        return -math.inf if self._last_t is None else self._last_t

    @property
    def last_power_w(self) -> float | None:
        """The newest power reading (None before any, or while the sensor is lost)."""
        return None if not self._pt or self.lost else self._pw[-1]

    @property
    def lost(self) -> bool:
        return self._lost_since is not None

    @property
    def settled_t_s(self) -> float:
        """The latest time whose cumulative energy no later reading can raise: the newest
        counter anchor when the counter is the method, else the newest power reading (-inf
        before any). Beyond it the curve is carried on with the newest power, a guess the
        counter's next update may settle lower (live metrics stop here; see Sampler.live)."""
        if self.method_for() in ("counter", "rapl"):
            return self._at[-1]
        return self._pt[-1] if self._pt else -math.inf

    def power_at(self, t: float) -> float | None:
        """Power at ``t`` interpolated linearly between readings (None without readings)."""
        pt, pw = self._pt, self._pw
        if not pt:
            return None
        i = bisect_right(pt, t)
        if i == 0:
            return pw[0]
        if i == len(pt):
            return pw[-1]
        if not self._pj[i]:
            return pw[i - 1]
        return pw[i - 1] + (pw[i] - pw[i - 1]) * (t - pt[i - 1]) / (pt[i] - pt[i - 1])

    def power_cum_j(self, t: float, *, bridge_gaps: bool = False) -> float:
        """Cumulative trapezoid energy of the power readings up to ``t``; a gap left by a lost
        sensor adds nothing unless ``bridge_gaps`` (used only to shape counter deltas)."""
        pt, pw = self._pt, self._pw
        pc = self._pb if bridge_gaps else self._pc
        if not pt:
            return 0.0
        i = bisect_right(pt, t)
        if i == 0:
            return pc[0] - pw[0] * (pt[0] - t)
        if i == len(pt):
            if self.lost:
                return pc[-1]
            return pc[-1] + pw[-1] * (t - pt[-1])
        if not (self._pj[i] or bridge_gaps):
            return pc[i - 1]
        dt = t - pt[i - 1]
        slope = (pw[i] - pw[i - 1]) / (pt[i] - pt[i - 1])
        return pc[i - 1] + pw[i - 1] * dt + 0.5 * slope * dt * dt

    def counter_cum_j(self, t: float) -> float:
        """Cumulative energy from the counter anchors, shaped by power between them."""
        at, ae = self._at, self._ae
        if not at:
            return self.power_cum_j(t)
        i = bisect_right(at, t)
        if i == 0:
            return ae[0] - (self.power_cum_j(at[0]) - self.power_cum_j(t))
        if i == len(at):
            return ae[-1] + self.power_cum_j(t) - self.power_cum_j(at[-1])
        ta, tc = at[i - 1], at[i]
        power_cum = functools.partial(self.power_cum_j, bridge_gaps=True)
        pa, pc = power_cum(ta), power_cum(tc)
        share = (power_cum(t) - pa) / (pc - pa) if pc > pa else (t - ta) / (tc - ta)
        return ae[i - 1] + (ae[i] - ae[i - 1]) * share

    def method_for(self, requested: RequestedMethod = "auto") -> Method:
        """The method actually used for a requested one, given the readings received."""
        if self.info.method == "estimate":
            return "estimate"
        use_counter = self.has_counter and (requested != "power" or not self.has_power)
        if use_counter:
            return "rapl" if self.info.method == "rapl" else "counter"
        return "power"

    def cumulative_j(self, t: float, requested: RequestedMethod = "auto") -> float:
        if self.method_for(requested) in ("counter", "rapl"):
            return self.counter_cum_j(t)
        return self.power_cum_j(t)

    def flags_between(self, t0: float, t1: float, requested: RequestedMethod = "auto") -> set[str]:
        flags = set(self.info.flags)
        method = self.method_for(requested)
        if method == "estimate":
            flags.add("estimated")
        if t1 - t0 < self.info.update_period_s:
            flags.add("short_phase")
        if method in ("counter", "rapl"):
            if any(a < t1 and b > t0 for a, b in self._resets):
                flags.add("counter_reset")
            if not self.has_power:
                flags.add("no_instant_power")
        elif self.info.method in ("counter", "rapl") and requested != "power":
            flags.add("power_only")
        lost = list(self._lost)
        if self._lost_since is not None:
            lost.append((self._lost_since, math.inf))
        no_readings = not (self.has_power or self.has_counter)
        if no_readings or any(a < t1 and b > t0 for a, b in lost):
            flags.add("sensor_lost")
        times = [t for t, _ in self._sample_flags]
        for _, f in self._sample_flags[bisect_left(times, t0) : bisect_right(times, t1)]:
            flags |= f
        return flags

    def energy_between(
        self, t0: float, t1: float, requested: RequestedMethod = "auto"
    ) -> tuple[float, frozenset[str]]:
        """Energy in J over ``[t0, t1]`` and the flags that apply to it."""
        energy_j = self.cumulative_j(t1, requested) - self.cumulative_j(t0, requested)
        return energy_j, frozenset(self.flags_between(t0, t1, requested))

    def peak_power_w(self, t0: float, t1: float) -> float | None:
        if not self._pt:
            return None
        inside = self._pw[bisect_left(self._pt, t0) : bisect_right(self._pt, t1)]
        ends = [p for p in (self.power_at(t0), self.power_at(t1)) if p is not None]
        return max([*inside, *ends])

    def resolved(self, t: float) -> bool:
        """True when readings at or after ``t`` fix the cumulative energy at ``t`` for good."""
        if self.lost:
            return True
        if self.has_counter:
            # an anchor after t whose time is pinned: a change caught within a quarter period,
            # or any anchor followed by another (a newest, loosely caught one may still move)
            if self._last_tight and self._at[-1] >= t:
                return True
            return len(self._at) > 1 and self._at[-2] >= t
        return bool(self._pt) and self._pt[-1] >= t

    def prune(self, before_s: float) -> None:
        """Forget readings not needed for any ``t >= before_s`` (keeps memory bounded)."""
        keep_from = before_s
        j = bisect_right(self._at, before_s) - 1
        if j > 0:
            del self._at[:j], self._ae[:j]
        if self._at:
            keep_from = min(keep_from, self._at[0])
        i = bisect_right(self._pt, keep_from) - 1
        if i > 0:
            del self._pt[:i], self._pw[:i], self._pc[:i], self._pb[:i], self._pj[:i]
        self._resets = [r for r in self._resets if r[1] > keep_from]
        self._lost = [r for r in self._lost if r[1] > keep_from]
        k = bisect_left([t for t, _ in self._sample_flags], keep_from)
        del self._sample_flags[:k]

    def phase(
        self, name: str, index: int, t0: float, t1: float, requested: RequestedMethod = "auto"
    ) -> PhaseEnergy:
        """One PhaseEnergy over ``[t0, t1]``."""
        energy_j, flags = self.energy_between(t0, t1, requested)
        method = self.method_for(requested)
        return self.make_phase(
            name, index, t0, t1, energy_j, flags, method, self.peak_power_w(t0, t1)
        )

    def make_phase(
        self,
        name: str,
        index: int,
        t0: float,
        t1: float,
        energy_j: float,
        flags: frozenset[str],
        method: Method,
        peak_power_w: float | None,
    ) -> PhaseEnergy:
        """A PhaseEnergy from figures worked out elsewhere (the sampler's running ones).

        The peak is never below the mean: where the readings are averages (Hopper's 1 s power)
        or sparse, the counter's mean power is the best lower bound on the true peak.
        """
        duration_s = t1 - t0
        mean_power_w = energy_j / duration_s if duration_s > 0 else self.power_at(t0)
        if peak_power_w is not None and mean_power_w is not None:
            peak_power_w = max(peak_power_w, mean_power_w)
        return PhaseEnergy(
            name=name,
            index=index,
            device_id=self.info.device_id,
            kind=self.info.kind,
            start_s=t0,
            end_s=t1,
            energy_j=energy_j,
            method=method,
            mean_power_w=mean_power_w,
            peak_power_w=peak_power_w,
            flags=flags,
        )


def integrate_phases(
    samples: Iterable[Sample],
    devices: Sequence[DeviceInfo],
    boundaries: Sequence[tuple[str, float]],
    end_s: float | None = None,
    method: RequestedMethod = "auto",
) -> list[PhaseEnergy]:
    """Energy of every device over every phase.

    Phase i runs from ``boundaries[i]`` to ``boundaries[i+1]`` (the last one to ``end_s``, by
    default the last sample's time) and is named after ``boundaries[i][0]``. Returns the phases
    in order, each with one row per device (in ``devices`` order).
    """
    if method not in REQUESTED_METHODS:
        raise ValueError(f"method {method!r} is not one of {', '.join(REQUESTED_METHODS)}")
    integrators = {d.device_id: DeviceIntegrator(d) for d in devices}
    last_t: float | None = None
    for sample in samples:
        integrator = integrators.get(sample.device_id)
        if integrator is not None:
            integrator.feed(sample)
            last_t = sample.t_s if last_t is None else max(last_t, sample.t_s)
    if not boundaries:
        return []
    times = [t for _, t in boundaries]
    if any(b < a for a, b in itertools.pairwise(times)):
        raise ValueError(f"boundaries must be in time order: {times}")
    if end_s is None:
        end_s = max(times[-1], last_t if last_t is not None else times[-1])
    edges = [*times, end_s]
    phases = []
    for i, (name, t0) in enumerate(boundaries):
        t1 = edges[i + 1]
        for integrator in integrators.values():
            phases.append(integrator.phase(name, i, t0, t1, method))
    return phases
