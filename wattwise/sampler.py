"""The sampler: one daemon thread that reads every sensor and integrates as it goes.

Cheap readings (instant power, utilisation) are taken every ``1 / sample_hz`` seconds; the
expensive energy counter (~4 ms of CPU per read on Hopper) about every ``1 / counter_hz`` seconds
and at the first tick after each boundary, so each boundary lies between two counter anchors.
Memory stays constant in run length: each device keeps only the readings since the oldest
boundary not yet resolved (or the last two seconds), plus a bounded, downsampled power history.

Training code only calls :meth:`Sampler.boundary` (a clock read and a deque append) and
:meth:`Sampler.collect`; sensor trouble becomes a warning (once per device and problem) and a
flag on the phase, never an exception.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
import weakref
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from wattwise.errors import BadInput
from wattwise.integrate import DeviceIntegrator
from wattwise.sensors.base import Sensor
from wattwise.types import DeviceInfo, Method, PhaseEnergy, Sample

log = logging.getLogger(__name__)

KEEP_RECENT_S = 2.0
"""Readings kept behind the newest one, so a boundary stamped just before a tick still resolves."""
FAST_MIN_S = 0.005
"""The shortest wait between ticks while a boundary waits for the counter's next change."""
RESOLVE_WAIT_S = 2.0
"""A boundary still without a counter anchor after this long is resolved with power instead."""
PROVISIONAL = frozenset({"provisional"})


@dataclass
class _Boundary:
    label: str
    t_s: float
    index: int
    energy: dict[str, tuple[float, Method]] | None = None  # per device, once resolved
    flags: dict[str, set[str]] = field(default_factory=dict)  # running, for the phase it starts
    peak_w: dict[str, float] = field(default_factory=dict)


class _History:
    """A bounded power history: when full, every other point is dropped and the stride doubles."""

    def __init__(self, max_points: int) -> None:
        self.max_points = max(2, max_points)
        self.points: list[tuple[float, float]] = []
        self.stride = 1
        self.seen = 0

    def add(self, t_s: float, power_w: float) -> None:
        if self.seen % self.stride == 0:
            self.points.append((t_s, power_w))
            if len(self.points) >= self.max_points:
                del self.points[1::2]
                self.stride *= 2
        self.seen += 1


def _loop(ref: weakref.ref[Sampler], stop_event: threading.Event, wake: threading.Event) -> None:
    delay_s = 0.0
    while True:
        wake.wait(delay_s)  # set early by collect() and stop()
        wake.clear()
        sampler = ref()
        if stop_event.is_set() or sampler is None:
            return
        started = time.monotonic()
        wanted_s = sampler.step()
        del sampler
        delay_s = max(0.0, wanted_s - (time.monotonic() - started))


def _signal_stop(stop_event: threading.Event, wake: threading.Event) -> None:
    stop_event.set()
    wake.set()


class Sampler:
    """Reads ``sensors`` (already opened; their ``devices``) on one named daemon thread."""

    def __init__(
        self,
        sensors: Sequence[Sensor],
        devices: Sequence[DeviceInfo],
        *,
        sample_hz: float = 10.0,
        counter_hz: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        history_points: int = 2048,
    ) -> None:
        for name, value in (("sample_hz", sample_hz), ("counter_hz", counter_hz)):
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise BadInput(f"{name}={value!r} is not accepted: give a rate in Hz above 0")
        self.sample_hz = float(sample_hz)
        self.counter_hz = float(counter_hz)
        self.clock = clock
        self._period_s = 1.0 / self.sample_hz
        # While a boundary waits, poll at a fifth of the slowest counter's update period: fast
        # enough to catch a stepped counter's (NVML: 0.1 s) next change within a quarter period.
        counter_periods = [d.update_period_s for d in devices if d.method in ("counter", "rapl")]
        self._fast_period_s = min(
            self._period_s, max(FAST_MIN_S, max(counter_periods, default=0.0) / 5)
        )
        self.warnings: list[str] = []
        self._sensors = list(sensors)
        self._devices = list(devices)
        self._integrators = {d.device_id: DeviceIntegrator(d) for d in self._devices}
        self._history = {d.device_id: _History(history_points) for d in self._devices}
        self._sensor_devices: list[set[str]] = [set() for _ in self._sensors]
        self._incoming: collections.deque[tuple[str, float]] = collections.deque()
        self._bounds: list[_Boundary] = []  # from the start of the open phase on
        self._ready: list[PhaseEnergy] = []
        # (device_id, phase label, method) -> J of every finalized phase (for live())
        self._done_j: dict[tuple[str, str, str], float] = {}
        self._warned: set[tuple[str, str]] = set()
        self._last_counter_s = -math.inf
        self._collect_wanted = False
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._step_lock = threading.Lock()  # one step at a time (thread or inline)
        self._stop_event = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._finalizer = weakref.finalize(self, _signal_stop, self._stop_event, self._wake)

    # ---- called from the training side ----------------------------------------------------
    def start(self) -> None:
        """Start the sampling thread (once)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=_loop,
            args=(weakref.ref(self), self._stop_event, self._wake),
            name="wattwise-sampler",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (idempotent); sensors stay open (their owner closes them)."""
        _signal_stop(self._stop_event, self._wake)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)
            if thread.is_alive():
                self._warn("sampler", "stop", "the sampler thread did not stop within 5 s")

    def boundary(self, label: str) -> None:
        """A new phase starts now. Cheap: a clock read and a deque append, no sensor read."""
        self._incoming.append((label, self.clock()))

    def collect(self, timeout_s: float = 1.0) -> list[PhaseEnergy]:
        """Finalized phases not returned before (each device, in phase order).

        Asks for a counter read after the last boundary and waits at most ``timeout_s`` for it;
        boundaries still unresolved then are resolved with what is known (power carries on
        from the last counter anchor).
        """
        deadline = time.monotonic() + max(0.0, timeout_s)
        thread = self._thread
        running = thread is not None and thread.is_alive() and not self._stop_event.is_set()
        if running:
            with self._cond:
                self._collect_wanted = True
                self._wake.set()  # read now rather than at the next tick
                self._cond.wait_for(
                    lambda: not self._incoming and self._all_resolved(),
                    timeout=max(0.0, deadline - time.monotonic()),
                )
        else:
            self.step(counter=True)
        with self._lock:  # not the step lock: a slow read in progress must not block us
            self._drain()
            self._resolve(force=True)
            self._collect_wanted = False
            ready, self._ready = self._ready, []
        return ready

    def collect_nowait(self) -> tuple[list[PhaseEnergy], list[PhaseEnergy]]:
        """``(final, provisional)`` at once, without waiting and without forcing anything.

        ``final``: the finalized phases not returned before, as :meth:`collect` returns them.
        ``provisional``: every other phase whose two boundaries are marked, with the energy known
        now (power carrying on from the last counter anchor) and the flag ``provisional``; the
        boundaries stay open, fast polling goes on, and a later collect returns the same phases
        (same ``index`` and ``device_id``) final. The training thread never waits for the
        counter's next update this way.
        """
        with self._lock:
            self._drain()
            self._resolve(force=False)
            ready, self._ready = self._ready, []
            provisional = self._provisional_phases()
            if not self._all_resolved():
                self._wake.set()  # start polling the counter fast now, not at the next tick
        return ready, provisional

    def _provisional_phases(self) -> list[PhaseEnergy]:
        energies = [
            b.energy if b.energy is not None else self._energy_at(b.t_s) for b in self._bounds
        ]
        out: list[PhaseEnergy] = []
        for k in range(len(self._bounds) - 1):
            out.extend(
                self._make_phases(
                    self._bounds[k], self._bounds[k + 1], energies[k], energies[k + 1], PROVISIONAL
                )
            )
        return out

    def live(
        self, exclude: Sequence[str] = ()
    ) -> tuple[dict[tuple[str, str, str], float], dict[str, float]]:
        """What is known now, for live metrics (a scrape on another thread): cheap, no read.

        Returns ``(energy, power)``: ``energy`` maps ``(device_id, phase label, method)`` to
        the J of every finalized phase since the start plus the phases still open (settled or
        not: as :meth:`collect_nowait` would give them provisional), each device up to its
        settled time (:attr:`DeviceIntegrator.settled_t_s`: a counter's newest update, so that
        a live value never exceeds what the phases settle to); ``power`` maps device_id to its
        newest power reading (a lost sensor has none). Phases named in ``exclude`` (the Meter's
        end marker) count nothing. Once every phase is finalized (after ``Meter.stop``)
        ``energy`` sums to the phases returned, exactly.
        """
        with self._lock:
            self._drain()
            energy = dict(self._done_j)
            if self._bounds:
                # Up to each device's settled time only: a value carried on with power beyond
                # the counter's newest update may settle lower, and a counter never goes down.
                now = {
                    dev: (i.cumulative_j(max(self._bounds[0].t_s, i.settled_t_s)), i.method_for())
                    for dev, i in self._integrators.items()
                }
                marks = [
                    {
                        dev: (min(j, now[dev][0]), m) if dev in now else (j, m)
                        for dev, (j, m) in self._bound_energy(b).items()
                    }
                    for b in self._bounds
                ]
                for b, e0, e1 in zip(self._bounds, marks, [*marks[1:], now], strict=True):
                    if b.label in exclude:
                        continue
                    for dev, (j0, _) in e0.items():
                        j1, method = e1[dev]
                        key = (dev, b.label, method)
                        energy[key] = energy.get(key, 0.0) + max(0.0, j1 - j0)
            power = {
                dev: w for dev, i in self._integrators.items() if (w := i.last_power_w) is not None
            }
        return energy, power

    def _bound_energy(self, b: _Boundary) -> dict[str, tuple[float, Method]]:
        return b.energy if b.energy is not None else self._energy_at(b.t_s)

    def history(self) -> dict[str, list[tuple[float, float]]]:
        """device_id -> [(t_s, power_w)], bounded by ``history_points``."""
        with self._lock:
            return {dev: list(h.points) for dev, h in self._history.items()}

    # ---- the sampling thread ---------------------------------------------------------------
    def step(self, *, counter: bool = False) -> float:
        """One tick: read every sensor, feed the integrators, resolve boundaries. Never raises.

        Returns the seconds until the next tick is wanted: ``1 / sample_hz``, or a fifth of the
        counter's update period while a boundary waits for the counter's next change (which
        pins the anchors around it to within that fifth).
        """
        with self._step_lock:
            try:
                self._step(counter)
            except Exception as err:  # a bug here must not reach training code
                self._warn("sampler", type(err).__name__, f"sampler step failed: {err!r}")
            with self._lock:
                return self._fast_period_s if not self._all_resolved() else self._period_s

    def _step(self, counter: bool) -> None:
        now = self.clock()
        with self._lock:
            self._drain()
            counter = (
                counter
                or self._collect_wanted
                or now - self._last_counter_s >= 1.0 / self.counter_hz
                or not self._all_resolved()
            )
        readings: list[Sample] = []
        for i, sensor in enumerate(self._sensors):
            t_s = self.clock()
            try:
                got = list(sensor.read(t_s, counter=counter))
            except Exception as err:  # any sensor failure: warn once, flag, keep going
                name = type(sensor).__name__
                self._warn(name, type(err).__name__, f"{name} read failed: {err}")
                lost = self._sensor_devices[i] or self._unseen_devices()
                got = [Sample(d, t_s, None, None, flags=frozenset({"sensor_lost"})) for d in lost]
            else:
                self._sensor_devices[i].update(s.device_id for s in got)
                for s in got:
                    if "sensor_lost" in s.flags:
                        self._warn(s.device_id, "sensor_lost", f"{s.device_id}: no reading")
            readings.extend(got)
        if counter:
            self._last_counter_s = now
        with self._cond:
            self._drain()  # boundaries marked during the reads: their readings go after them
            for sample in readings:
                self._feed(sample)
            self._resolve(force=False)
            self._prune()
            self._cond.notify_all()

    def _unseen_devices(self) -> set[str]:
        seen = set().union(*self._sensor_devices)
        return {d.device_id for d in self._devices} - seen

    def _feed(self, sample: Sample) -> None:
        integrator = self._integrators.get(sample.device_id)
        if integrator is None:
            return
        resets = integrator.reset_count
        integrator.feed(sample)
        flags = set(sample.flags)
        if integrator.reset_count != resets:
            flags.add("counter_reset")
            self._warn(sample.device_id, "counter_reset", f"{sample.device_id}: counter went back")
        # the phase the reading was taken in (by its time: a boundary may have been marked
        # while the sensors were read), if it is still open
        i = bisect_right([b.t_s for b in self._bounds], sample.t_s) - 1
        if i >= 0:
            phase = self._bounds[i]
            phase.flags.setdefault(sample.device_id, set()).update(flags)
            if sample.power_w is not None:
                peak = phase.peak_w.get(sample.device_id, -math.inf)
                phase.peak_w[sample.device_id] = max(peak, sample.power_w)
        if sample.power_w is not None:
            self._history[sample.device_id].add(sample.t_s, sample.power_w)

    def _drain(self) -> None:
        while self._incoming:
            label, t_s = self._incoming.popleft()
            index = 0
            if self._bounds:  # never empty once a boundary came: _resolve keeps the open one
                t_s = max(t_s, self._bounds[-1].t_s)
                index = self._bounds[-1].index + 1
            self._bounds.append(_Boundary(label, t_s, index))

    def _all_resolved(self) -> bool:
        return all(b.energy is not None for b in self._bounds)

    def _latest_t_s(self) -> float:
        """Time of the newest sample fed to any device (-inf before any)."""
        return max((i.last_t_s for i in self._integrators.values()), default=-math.inf)

    def _energy_at(self, t_s: float) -> dict[str, tuple[float, Method]]:
        """Each device's cumulative energy at ``t_s`` as known now, and the method behind it."""
        return {dev: (i.cumulative_j(t_s), i.method_for()) for dev, i in self._integrators.items()}

    def _resolve(self, *, force: bool) -> None:
        latest = self._latest_t_s()
        for b in self._bounds:
            if b.energy is not None:
                continue
            waited_out = latest - b.t_s >= RESOLVE_WAIT_S
            if not (
                force or waited_out or all(i.resolved(b.t_s) for i in self._integrators.values())
            ):
                break  # later boundaries wait for this one
            b.energy = self._energy_at(b.t_s)
        while len(self._bounds) >= 2 and self._bounds[1].energy is not None:
            start, end = self._bounds.pop(0), self._bounds[0]
            assert start.energy is not None and end.energy is not None
            made = self._make_phases(start, end, start.energy, end.energy, frozenset())
            for phase in made:
                key = (phase.device_id, phase.name, phase.method)
                self._done_j[key] = self._done_j.get(key, 0.0) + phase.energy_j
            self._ready.extend(made)

    def _make_phases(
        self,
        start: _Boundary,
        end: _Boundary,
        e_start: dict[str, tuple[float, Method]],
        e_end: dict[str, tuple[float, Method]],
        extra: frozenset[str],
    ) -> list[PhaseEnergy]:
        phases = []
        for dev, integrator in self._integrators.items():
            e0, _ = e_start[dev]
            e1, method = e_end[dev]
            flags = integrator.flags_between(start.t_s, end.t_s) | start.flags.get(dev, set())
            peak = start.peak_w.get(dev)
            if peak is None:
                peak = integrator.peak_power_w(start.t_s, end.t_s)
            phases.append(
                integrator.make_phase(
                    start.label,
                    start.index,
                    start.t_s,
                    end.t_s,
                    e1 - e0,
                    frozenset(flags) | extra,
                    method,
                    peak,
                )
            )
        return phases

    def _prune(self) -> None:
        before = self._latest_t_s() - KEEP_RECENT_S
        pending = [b.t_s for b in self._bounds if b.energy is None]
        if pending:
            before = min(before, pending[0])
        for integrator in self._integrators.values():
            integrator.prune(before)

    def _warn(self, source: str, problem: str, message: str) -> None:
        if (source, problem) in self._warned:
            return
        self._warned.add((source, problem))
        self.warnings.append(message)
        log.warning("wattwise: %s", message)
