"""Find and open the sensors of this machine, best method first, and say why for each choice.

GPU: a replayed trace when ``WATTWISE_REPLAY_NVML`` is set, else NVML (skipped with a note when
NVML or a GPU is missing). Host: RAPL (CPU packages, and DRAM where the machine exposes it), else
the CPU utilisation x TDP estimate; RAM from RAPL DRAM where present, else the RAM estimate. A
missing sensor is a note, never an error; bad arguments raise ``BadInput``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Sequence

from wattwise.errors import BadInput, SensorError
from wattwise.sensors.base import Sensor
from wattwise.types import DeviceInfo

logger = logging.getLogger(__name__)

REPLAY_ENV = "WATTWISE_REPLAY_NVML"
CPU_MODES = ("machine", "process")


@dataclasses.dataclass
class Discovery:
    """Opened sensors, the devices they measure, and human-readable notes on the choices."""

    sensors: list[Sensor]
    devices: list[DeviceInfo]
    notes: list[str]

    def close(self) -> None:
        for sensor in self.sensors:
            sensor.close()


def _check(gpus: str | Sequence[int | str], cpu_mode: str) -> None:
    if cpu_mode not in CPU_MODES:
        raise BadInput(f"cpu_mode={cpu_mode!r} is not known; use one of {', '.join(CPU_MODES)}")
    if isinstance(gpus, str):
        if gpus not in ("visible", "none"):
            raise BadInput(
                f"gpus={gpus!r} is not accepted; use 'visible', 'none' or a list of CUDA "
                "indices / GPU UUIDs"
            )
    elif not all(isinstance(g, int | str) for g in gpus):
        raise BadInput(f"gpus={gpus!r} is not accepted; list CUDA indices (ints) or GPU UUIDs")


def discover(
    *,
    gpus: str | Sequence[int | str] = "visible",
    cpu_mode: str = "machine",
    measure_host: bool = True,
    clock: Callable[[], float] = time.monotonic,
) -> Discovery:
    """Open every sensor that works here. ``gpus``: ``"visible"`` (the GPUs this process sees),
    ``"none"``, or CUDA indices / UUIDs; ``measure_host``: also CPU and RAM; ``clock``: the
    sampler's clock (a replayed trace starts when it opens)."""
    _check(gpus, cpu_mode)
    found = Discovery([], [], [])
    try:
        if gpus != "none":
            _add_gpus(found, gpus, clock)
        else:
            found.notes.append("GPU: not measured (gpus='none')")
        if measure_host:
            _add_host(found, cpu_mode)
        else:
            found.notes.append("CPU and RAM: not measured (measure_host=False)")
    except BaseException:
        found.close()
        raise
    for note in found.notes:
        logger.info("%s", note)
    return found


def _open(found: Discovery, sensor: Sensor) -> list[DeviceInfo]:
    devices = sensor.open()
    found.sensors.append(sensor)
    found.devices.extend(devices)
    return devices


def _add_gpus(
    found: Discovery, gpus: str | Sequence[int | str], clock: Callable[[], float]
) -> None:
    if trace := os.environ.get(REPLAY_ENV):
        from wattwise.sensors.replay import ReplayNvmlSensor

        _open(found, ReplayNvmlSensor(trace, clock=clock))
        found.notes.append(f"GPU: replaying {trace} ({REPLAY_ENV} is set) instead of NVML")
        if gpus != "visible":
            found.notes.append(f"GPU: gpus={gpus!r} ignored while replaying a trace")
        return
    from wattwise.sensors.nvml import NvmlSensor

    try:
        devices = _open(found, NvmlSensor(None if gpus == "visible" else list(gpus)))
    except SensorError as err:
        found.notes.append(f"GPU: not measured: {err}")
        return
    for info in devices:
        found.notes.append(_gpu_note(info))


def _gpu_note(info: DeviceInfo) -> str:
    if info.method == "counter":
        how = "hardware energy counter"
        if "averaged_power" in info.flags:
            how += ", shaped by 1 s averaged power (no instantaneous power field)"
    else:
        how = "no energy counter: polled power integrated over time"
    extra = " (MIG: whole-GPU figures)" if "mig" in info.flags else ""
    return f"GPU {info.index} {info.name}: {how}{extra}"


def _add_host(found: Discovery, cpu_mode: str) -> None:
    from wattwise.sensors import rapl
    from wattwise.sensors.cpu_estimate import CpuEstimateSensor
    from wattwise.sensors.ram_estimate import W_PER_GIB, RamEstimateSensor

    try:
        devices = _open(found, rapl.RaplSensor(rapl.POWERCAP_ROOT))
    except SensorError as err:
        found.notes.append(f"CPU: RAPL unavailable ({err}); estimating utilisation x TDP")
        devices = []
        try:
            (info,) = _open(found, CpuEstimateSensor(mode=cpu_mode))
            tdp_w, source = info.details["tdp_w"], info.details["tdp_source"]
            found.notes.append(f"CPU: TDP {tdp_w:g} W ({source})")
        except SensorError as cpu_err:
            found.notes.append(f"CPU: not measured: {cpu_err}")
    else:
        names = ", ".join(d.device_id for d in devices)
        found.notes.append(f"CPU: RAPL energy counters ({names})")
        if cpu_mode == "process":
            found.notes.append("CPU: RAPL measures whole packages; cpu_mode='process' not applied")
    if any(d.kind == "ram" for d in devices):
        return
    why = "RAPL has no DRAM domain here" if devices else "no RAPL"
    try:
        _open(found, RamEstimateSensor(mode=cpu_mode))
        found.notes.append(f"RAM: {why}; estimated at {W_PER_GIB:g} W per GiB in use")
    except SensorError as err:
        found.notes.append(f"RAM: not measured: {err}")
