"""Plain data types shared by every part of wattwise (no I/O, no heavy imports).

Flow: ``Sensor.read()`` -> :class:`Sample` -> sampler -> ``integrate`` -> :class:`PhaseEnergy`
-> ledger rows -> pricing / carbon / report / estimate.

Units are SI and in the names: ``_j`` joules, ``_w`` watts, ``_s`` seconds (``time.monotonic``
for ``t_s`` / ``start_s`` / ``end_s``; wall-clock UTC appears only in ledger records).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Method = Literal["counter", "power", "rapl", "estimate"]
DeviceKind = Literal["gpu", "cpu", "ram"]

METHODS: tuple[str, ...] = ("counter", "power", "rapl", "estimate")
DEVICE_KINDS: tuple[str, ...] = ("gpu", "cpu", "ram")

# The flag vocabulary. Every flag that wattwise attaches to a reading, a phase or a run is listed
# here with its meaning; reports print these descriptions in their provenance section.
FLAGS: dict[str, str] = {
    "short_phase": "phase shorter than the sensor's update period: interpolated, not resolved",
    "estimated": "energy is a model estimate (e.g. CPU utilisation x TDP), not a measurement",
    "averaged_power": "power reading is a 1 s moving average (Hopper GetPowerUsage)",
    "counter_reset": "the energy counter went backwards or reset; the gap was bridged with power",
    "sensor_lost": "the sensor stopped answering (e.g. GPU fell off the bus); later energy missing",
    "shared_gpu": "other processes used the same GPU; its counter covers them too",
    "replay_ended": "the replayed trace ended; its last power reading was continued",
    "no_region": "no region given: CO2e uses the world-average grid intensity",
    "power_only": "no energy counter: energy integrated from polled power",
    "no_instant_power": "counter interpolated linearly inside its update period (no instant power)",
    "mig": "GPU in MIG mode: per-instance energy is not available, whole-GPU figures used",
    "idle_baseline": "energy above the idle power measured before the fit",
    "single_epoch": "estimate from one measured epoch: its warm-up is in the rate (too high)",
    "host_bound": "the measured GPU was busy for under half of each epoch (by its utilisation or "
    "power): the rest waits on the host (data loading, Python, kernel launches), which the "
    "estimate keeps unchanged on every target, so a faster or slower host moves the time",
    "intensity_extrapolated": "grid-intensity series shorter than the run: nearest values used",
    "callback_error": "the Lightning callback failed in a hook (warned): figures may be incomplete",
    "provisional": "energy as known at the epoch end; the counter's next update did not settle it "
    "(the process ended first): off by up to one counter update",
}


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """One measured device, as a sensor found it when it opened."""

    device_id: str
    """Stable id, unique on the host: ``gpu:<UUID>``, ``cpu:package-0``, ``ram``."""
    kind: DeviceKind
    name: str
    """Model name, e.g. ``NVIDIA H200``, the CPU brand string, ``DRAM``."""
    method: Method
    """How its energy is obtained: ``counter`` (NVML mJ counter), ``power`` (integrated polled
    power), ``rapl`` (powercap energy counter), ``estimate`` (a model, e.g. utilisation x TDP)."""
    uuid: str | None = None
    """GPU UUID (``GPU-...``); for a replayed trace, derived from the trace's contents."""
    index: int | None = None
    """NVML index for GPUs, package index for RAPL."""
    update_period_s: float = 0.1
    """How often the underlying reading changes; shorter phases are flagged ``short_phase``."""
    flags: frozenset[str] = frozenset()
    """Static flags, e.g. ``averaged_power`` or ``estimated``."""
    details: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    """Extra facts for the ledger / report: ``tdp_w``, ``power_limit_w``, ``memory_total_bytes``."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading of one device at one moment (sampler clock, seconds)."""

    device_id: str
    t_s: float
    energy_j: float | None
    """Cumulative energy counter in J from a device-defined zero; None when not read this time
    (the counter is read rarely) or not supported."""
    power_w: float | None
    """Best available power in W: instantaneous where the device offers it."""
    utilisation: float | None = None
    """0..1 where known."""
    flags: frozenset[str] = frozenset()
    """Per-reading flags: ``counter_reset``, ``sensor_lost``, ``shared_gpu``, ``replay_ended``."""


@dataclass(frozen=True, slots=True)
class PhaseEnergy:
    """Energy of one device over one phase ``[start_s, end_s)``."""

    name: str
    """Phase label as given to ``mark()`` (the callback uses stage names: ``train``, ``validate``,
    ``test``, ``predict``, ``sanity_check``, ``other``)."""
    index: int
    """Sequence number of the phase within its meter (0, 1, ...)."""
    device_id: str
    kind: DeviceKind
    start_s: float
    end_s: float
    energy_j: float
    method: Method
    mean_power_w: float | None = None
    peak_power_w: float | None = None
    flags: frozenset[str] = frozenset()

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass(frozen=True, slots=True)
class ArchSnapshot:
    """The model's shape at the end of an epoch (a model that grows while it trains shows here)."""

    trainable_params: int
    total_params: int
    model_class: str
    label: str
