"""Meter: measure a span of work (start / mark / stop), with or without a ledger.

The one object the Lightning callback and the CLI both use::

    with Meter(ledger="wattwise.db", architecture="resnet18") as meter:
        load_data()
        meter.mark("train")
        train()
    print(meter.result.energy_wh)

Sensor trouble never reaches the caller: a sensor that fails to open is skipped with a warning,
readings that fail become flags on the phases (``sensor_lost``, ``counter_reset``, ...).
"""

from __future__ import annotations

import functools
import logging
import math
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from wattwise.errors import BadInput, SensorError
from wattwise.metrics import parse_endpoint, parse_gateway
from wattwise.sampler import Sampler
from wattwise.sensors.base import Sensor
from wattwise.types import DEVICE_KINDS, DeviceInfo, PhaseEnergy
from wattwise.units import j_to_wh

if TYPE_CHECKING:  # pragma: no cover
    from wattwise.ledger import Ledger
    from wattwise.metrics import Exporter
    from wattwise.sensors.discovery import Discovery

log = logging.getLogger(__name__)

STATUSES = ("finished", "failed", "interrupted")
END_LABEL = "_end"
"""Label of the boundary stop() places at the end of the last phase (never a phase itself)."""


@dataclass
class MeterResult:
    """What a stopped Meter measured."""

    run_id: str | None
    phases: list[PhaseEnergy]
    devices: list[DeviceInfo]
    duration_s: float
    energy_j: float
    energy_by_kind_j: dict[str, float]
    """``{"gpu", "cpu", "ram"}`` -> J (0.0 for a kind not measured)."""
    methods: dict[str, str]
    """device_id -> method actually used."""
    flags: frozenset[str] = frozenset()
    status: str = "finished"
    warnings: list[str] = field(default_factory=list)

    @property
    def energy_wh(self) -> float:
        return j_to_wh(self.energy_j)


def _release(sampler: Sampler, sensors: Sequence[Sensor]) -> None:
    """Stop the sampler thread and close the sensors (stop() and the GC safety net)."""
    sampler.stop()
    for sensor in sensors:
        try:
            sensor.close()
        except Exception as err:  # closing must never fail the caller
            log.warning("wattwise: closing %s failed: %s", type(sensor).__name__, err)


class Meter:
    """Measures energy from start() to stop(), cut into phases by mark(label)."""

    def __init__(
        self,
        ledger: str | Any | None = None,
        architecture: str | None = None,
        *,
        sample_hz: float = 10.0,
        cpu_mode: str = "machine",
        gpus: str | Sequence[int | str] = "visible",
        measure_host: bool = True,
        region: str | None = None,
        pricing: str | None = None,
        tags: Sequence[str] = (),
        parent: str | None = None,
        sensors: Sequence[Sensor] | Discovery | None = None,
        clock: Callable[[], float] | None = None,
        metrics_port: int | str | None = None,
        pushgateway: str | None = None,
    ) -> None:
        if not (isinstance(sample_hz, int | float) and math.isfinite(sample_hz) and sample_hz > 0):
            raise BadInput(f"sample_hz={sample_hz!r} is not accepted: give a rate in Hz above 0")
        if architecture is not None and (not isinstance(architecture, str) or not architecture):
            raise BadInput(f"architecture={architecture!r} is not accepted: give a non-empty label")
        self._endpoint = None if metrics_port is None else parse_endpoint(metrics_port)
        self._gateway = None if pushgateway is None else parse_gateway(pushgateway)
        self.architecture = architecture
        self.sample_hz = float(sample_hz)
        self.cpu_mode = cpu_mode
        self.gpus = gpus
        self.measure_host = measure_host
        self.region = region
        self.pricing = pricing
        self.tags = tuple(tags)
        self.parent = parent
        self.devices: list[DeviceInfo] = []
        self.run_id: str | None = None
        self.result: MeterResult | None = None
        self._ledger_arg = ledger
        self._ledger: Ledger | None = None
        self._sensors_arg = sensors
        self._clock = clock or time.monotonic
        self._sampler: Sampler | None = None
        self._warnings: list[str] = []
        self._phases: list[PhaseEnergy] = []
        self._t_start_s = 0.0
        self._finalizer: weakref.finalize | None = None
        self._metrics: Exporter | None = None

    # ---- life cycle ------------------------------------------------------------------------
    def start(self, label: str = "run") -> Meter:
        """Open the sensors (discover them unless given), start sampling, begin phase ``label``."""
        if self._sampler is not None or self.result is not None:
            raise RuntimeError("this Meter was already started; use a new Meter for a new span")
        sensors, devices, owned = self._open_sensors()
        if not devices:
            self._warn(
                "no device to measure: every energy figure will be 0 (see `wattwise devices`)"
            )
        self.devices = devices
        sampler = Sampler(sensors, devices, sample_hz=self.sample_hz, clock=self._clock)
        self._finalizer = weakref.finalize(self, _release, sampler, owned)
        if self._ledger_arg is not None:
            try:
                self._begin_run(devices)
            except BaseException:
                self._finalizer()
                raise
        self._t_start_s = self._clock()
        sampler.boundary(label)
        sampler.start()
        self._sampler = sampler
        if self._endpoint is not None or self._gateway is not None:
            self._start_metrics(sampler, devices)
        return self

    def _start_metrics(self, sampler: Sampler, devices: list[DeviceInfo]) -> None:
        """Serve / push this span's live figures (a Meter reads no configuration: the
        callback and ``wattwise run`` resolve ``WATTWISE_METRICS_PORT`` and pass it on)."""
        from wattwise.metrics import Exporter, Money

        exporter = Exporter(self._endpoint, self._gateway, clock=self._clock).start()
        exporter.attach(functools.partial(sampler.live, (END_LABEL,)), devices)
        money = None
        if self.region is not None or self.pricing is not None:
            try:
                money = Money.resolve(self.region, self.pricing, self.pricing is not None, None)
            except Exception as err:  # a region or scenario that cannot be used: no money
                self._warn(f"live metrics without cost and CO2e: {err}")
        exporter.set_run(self.run_id, self.architecture or "meter", region=self.region, money=money)
        self._metrics = exporter

    @property
    def metrics_url(self) -> str | None:
        """``http://HOST:PORT/metrics`` while live metrics are served (None otherwise)."""
        return self._metrics.url if self._metrics is not None else None

    def _begin_run(self, devices: list[DeviceInfo]) -> None:
        from wattwise.ledger import Ledger

        arg = self._ledger_arg
        self._ledger = arg if isinstance(arg, Ledger) else Ledger(arg)
        self.run_id = self._ledger.begin_run(
            architecture=self.architecture or "meter",
            parent_run_id=self.parent,
            tags=self.tags,
            settings={"sample_hz": self.sample_hz, "cpu_mode": self.cpu_mode},
            region=self.region,
            pricing=self.pricing,
            devices=devices,
        )

    def _open_sensors(self) -> tuple[list[Sensor], list[DeviceInfo], list[Sensor]]:
        given = self._sensors_arg
        if given is None:
            from wattwise.sensors.discovery import discover

            found = discover(
                gpus=self.gpus,
                cpu_mode=self.cpu_mode,
                measure_host=self.measure_host,
                clock=self._clock,
            )
            return list(found.sensors), list(found.devices), list(found.sensors)
        if not isinstance(given, Sequence):  # a Discovery: opened already, owned by the caller
            return list(given.sensors), list(given.devices), []
        sensors: list[Sensor] = []
        devices: list[DeviceInfo] = []
        for sensor in given:
            try:
                devices.extend(sensor.open())
            except SensorError as err:
                self._warn(f"{type(sensor).__name__} skipped: {err}")
                continue
            sensors.append(sensor)
        return sensors, devices, sensors

    def mark(self, label: str) -> None:
        """A new phase named ``label`` starts now. Cheap: no sensor read."""
        if self._sampler is None or self.result is not None:
            self._warn(f"mark({label!r}) ignored: the Meter is not running")
            return
        self._sampler.boundary(label)

    def collect(self, timeout_s: float = 1.0) -> list[PhaseEnergy]:
        """Phases finished since the last collect (one row per device and phase)."""
        if self._sampler is None or self.result is not None:
            return []
        phases = self._sampler.collect(timeout_s)
        self._phases.extend(phases)
        return phases

    def collect_nowait(self) -> tuple[list[PhaseEnergy], list[PhaseEnergy]]:
        """``(final, provisional)`` phases without waiting: see :meth:`Sampler.collect_nowait`.

        Provisional phases come back final from a later collect (or from :meth:`stop`)."""
        if self._sampler is None or self.result is not None:
            return [], []
        final, provisional = self._sampler.collect_nowait()
        self._phases.extend(final)
        return final, provisional

    def live(self) -> tuple[dict[tuple[str, str, str], float], dict[str, float]]:
        """Energy by (device_id, phase, method) and newest power by device, as known now: see
        :meth:`Sampler.live` (for live metrics; cheap, from any thread)."""
        sampler = self._sampler
        return sampler.live((END_LABEL,)) if sampler is not None else ({}, {})

    def history(self) -> dict[str, list[tuple[float, float]]]:
        """device_id -> [(t_s, power_w)], bounded and downsampled."""
        return self._sampler.history() if self._sampler is not None else {}

    @property
    def warnings(self) -> list[str]:
        sampler_warnings = self._sampler.warnings if self._sampler is not None else []
        return [*self._warnings, *sampler_warnings]

    def stop(self, status: str = "finished") -> MeterResult:
        """End the last phase now and return the result (idempotent: later calls return it)."""
        if self.result is not None:
            return self.result
        if status not in STATUSES:
            raise BadInput(f"status={status!r} is not accepted; use one of {', '.join(STATUSES)}")
        sampler = self._sampler
        if sampler is None:
            self.result = self._result(status, 0.0)
            return self.result
        sampler.boundary(END_LABEL)
        end_s = self._clock()
        self._phases.extend(sampler.collect(timeout_s=1.0))
        history = sampler.history()
        if self._finalizer is not None:
            self._finalizer()
        self.result = self._result(status, end_s - self._t_start_s)
        if self._metrics is not None:  # final figures: served until the Meter goes, pushed now
            self._metrics.detach()
            self._metrics.push(wait=True)
        if self._ledger is not None and self.run_id is not None:
            self._ledger.add_phases(self.run_id, self._phases, epoch=None, devices=self.devices)
            for device_id, points in history.items():
                if points:
                    self._ledger.add_timeline(self.run_id, device_id, points)
            self._ledger.finish_run(self.run_id, status=status)
        return self.result

    def _result(self, status: str, duration_s: float) -> MeterResult:
        by_kind = dict.fromkeys(DEVICE_KINDS, 0.0)
        methods = {d.device_id: d.method for d in self.devices}
        flags: set[str] = set()
        for phase in self._phases:
            by_kind[phase.kind] = by_kind.get(phase.kind, 0.0) + phase.energy_j
            methods[phase.device_id] = phase.method
            flags |= phase.flags
        if self._phases:  # the span the phases cover, boundary to boundary
            duration_s = self._phases[-1].end_s - self._phases[0].start_s
        return MeterResult(
            run_id=self.run_id,
            phases=list(self._phases),
            devices=list(self.devices),
            duration_s=duration_s,
            energy_j=sum(by_kind.values()),
            energy_by_kind_j=by_kind,
            methods=methods,
            flags=frozenset(flags - {"short_phase"}),
            status=status,
            warnings=self.warnings,
        )

    def _warn(self, message: str) -> None:
        if message not in self._warnings:
            self._warnings.append(message)
            log.warning("wattwise: %s", message)

    # ---- context manager -------------------------------------------------------------------
    def __enter__(self) -> Meter:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if exc_type is None:
            self.stop("finished")
            return
        status = "interrupted" if issubclass(exc_type, KeyboardInterrupt) else "failed"
        try:
            self.stop(status)
        except Exception as err:  # never hide the caller's exception behind ours
            log.warning("wattwise: stopping the Meter after %s failed: %s", exc_type.__name__, err)
