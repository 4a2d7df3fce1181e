"""NVIDIA GPU energy and power through NVML (nvidia-ml-py, imported as ``pynvml`` in ``open()``).

Per device, the best source found when the sensor opens:

- energy: ``nvmlDeviceGetTotalEnergyConsumption`` (mJ since driver load; Volta and newer) gives
  method ``counter``; without it, method ``power`` (polled power integrated; flag ``power_only``).
  The counter costs ~4 ms of CPU per read on Hopper, so it is read only on ``read(counter=True)``.
- power: field ``NVML_FI_DEV_POWER_INSTANT`` (186, mW) where the driver has it, else
  ``nvmlDeviceGetPowerUsage`` (mW), which on Ampere (except GA100: A100, A30) and newer is a 1 s
  moving average (flag ``averaged_power``; nvml.h).

Faults: NVML missing -> ``open()`` raises ``SensorNotSupported``; a function missing from an old
nvidia-ml-py or driver -> the next method; a counter that goes backwards -> flag ``counter_reset``;
a GPU that falls off the bus -> samples with no readings, flag ``sensor_lost``; other processes on
the GPU (checked on counter reads) -> flag ``shared_gpu``; MIG mode -> flag ``mig`` (the counter is
whole-GPU). Each fault is logged once per device. Every NVML call goes through :class:`_Nvml`, the
one place where NVML errors become wattwise errors.

Which GPUs: ``gpus=None`` measures every GPU this process can see: ``CUDA_VISIBLE_DEVICES`` (a
comma list of indices, or of ``GPU-``/``MIG-`` UUIDs, possibly abbreviated; empty = no GPU; parsed
like CUDA does, up to the first entry that names no GPU). Indices are NVML's (PCI bus) order, which
is CUDA's with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``. A MIG instance is measured through its parent GPU.
``gpus=[...]``: CUDA indices (relative to ``CUDA_VISIBLE_DEVICES``) or UUIDs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import weakref
from collections.abc import Sequence
from typing import Any

from wattwise.errors import (
    BadInput,
    SensorError,
    SensorNotSupported,
    SensorPermissionError,
    SensorReadError,
)
from wattwise.sensors.base import Sensor
from wattwise.types import DeviceInfo, Sample
from wattwise.units import mj_to_j, mw_to_w

logger = logging.getLogger(__name__)

UPDATE_PERIOD_S = 0.1  # NVML's counter and power readings change about every 100 ms
FI_DEV_POWER_INSTANT = 186
ARCH_AMPERE = 7
ARCH_UNKNOWN = 0xFFFFFFFF

# NVML return codes (nvml.h, the same numbers as pynvml.NVML_ERROR_*) -> wattwise error class.
# Codes not listed are read errors.
ERROR_CLASSES: dict[int, type[SensorError]] = {
    3: SensorNotSupported,  # NOT_SUPPORTED
    9: SensorNotSupported,  # DRIVER_NOT_LOADED
    12: SensorNotSupported,  # LIBRARY_NOT_FOUND
    13: SensorNotSupported,  # FUNCTION_NOT_FOUND (driver older than nvidia-ml-py)
    18: SensorNotSupported,  # LIB_RM_VERSION_MISMATCH
    22: SensorNotSupported,  # VGPU_ECC_NOT_SUPPORTED
    24: SensorNotSupported,  # FREQ_NOT_SUPPORTED
    25: SensorNotSupported,  # ARGUMENT_VERSION_MISMATCH
    26: SensorNotSupported,  # DEPRECATED
    30: SensorNotSupported,  # RESET_TYPE_NOT_SUPPORTED
    4: SensorPermissionError,  # NO_PERMISSION
    17: SensorPermissionError,  # OPERATING_SYSTEM (the OS blocked the request)
}
# Read errors after which the GPU is gone for good: stop asking it.
LOST_CODES = frozenset({15, 16, 28})  # GPU_IS_LOST, RESET_REQUIRED, GPU_NOT_FOUND
_HINTS = {
    9: "the NVIDIA kernel driver is not loaded",
    12: "no NVIDIA driver is installed (libnvidia-ml.so not found)",
    4: "run with access to the GPU device files",
}
_VALUE_FIELDS = ("dVal", "uiVal", "ulVal", "ullVal", "sllVal", "siVal", "usVal")
_HOPPER_OR_NEWER_NAME = re.compile(r"\bG?[HB]\d{2,3}\b")
_GA100_NAME = re.compile(r"\bA(100|30)\b")  # Ampere GA100 products: instantaneous power usage


def translate(err: Exception, call: str) -> SensorError:
    """The wattwise error for an ``NVMLError`` raised by ``call`` (see ERROR_CLASSES)."""
    code = getattr(err, "value", None)
    cls = ERROR_CLASSES.get(code, SensorReadError)
    hint = f"; {_HINTS[code]}" if code in _HINTS else ""
    error = cls(f"NVML {call}: {err} (NVML error {code}){hint}")
    error.nvml_code = code
    return error


class _Nvml:
    """pynvml behind one seam: ``nv("nvmlX", *args)`` calls it and translates its errors."""

    def __init__(self, module: Any) -> None:
        self.module = module

    def __call__(self, name: str, *args: Any) -> Any:
        try:
            fn = getattr(self.module, name)
        except AttributeError as err:
            raise SensorNotSupported(f"NVML {name}: missing from this nvidia-ml-py") from err
        # nvidia-ml-py raises NVMLLibraryMismatchError, which is no NVMLError, where a driver
        # lacks the versioned function an unversioned name calls (e.g. _v3 before R510)
        mismatch = getattr(self.module, "NVMLLibraryMismatchError", self.module.NVMLError)
        try:
            return fn(*args)
        except self.module.NVMLError as err:
            raise translate(err, name) from err
        except mismatch as err:
            raise SensorNotSupported(f"NVML {name}: {err}") from err

    def optional(self, name: str, *args: Any) -> Any:
        """The call's result, or None where the device or driver does not offer it."""
        try:
            return self(name, *args)
        except (SensorNotSupported, SensorPermissionError) as err:
            logger.debug("%s", err)
            return None

    def field(self, handle: Any, field_id: int) -> float:
        """One NVML field value (``nvmlDeviceGetFieldValues`` reports errors per field)."""
        (value,) = self("nvmlDeviceGetFieldValues", handle, [field_id])
        if value.nvmlReturn != 0:
            err = self.module.NVMLError(value.nvmlReturn)
            raise translate(err, f"nvmlDeviceGetFieldValues({field_id})") from err
        return getattr(value.value, _VALUE_FIELDS[value.valueType])

    def shutdown(self) -> None:
        try:
            self("nvmlShutdown")
        except SensorError as err:
            logger.debug("%s", err)


@dataclasses.dataclass
class _Physical:
    index: int
    handle: Any
    uuid: str


@dataclasses.dataclass
class _Gpu:
    handle: Any
    info: DeviceInfo
    counter: bool
    instant: bool
    power: bool
    util: bool
    last_mj: int | None
    lost: bool = False


def _visible_tokens() -> list[str] | None:
    raw = os.environ.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return None
    return [token.strip() for token in raw.split(",") if token.strip()]


class NvmlSensor(Sensor):
    """NVIDIA GPUs through NVML; devices ``gpu:<UUID>``. See the module docstring."""

    kind = "gpu"

    def __init__(self, gpus: Sequence[int | str] | None = None) -> None:
        if gpus is not None and (
            isinstance(gpus, str) or not all(isinstance(g, int | str) for g in gpus)
        ):
            raise BadInput(
                f"gpus={gpus!r} is not accepted; give a list of CUDA indices (ints) or GPU UUIDs"
            )
        self._wanted = None if gpus is None else list(gpus)
        self._nv: _Nvml | None = None
        self._gpus: list[_Gpu] = []
        self._warned: set[tuple[str, str]] = set()
        self._finalizer: weakref.finalize | None = None
        self._psutil: Any = None

    # -- opening -------------------------------------------------------------------------------

    def open(self) -> list[DeviceInfo]:
        try:
            import pynvml
        except ImportError as err:
            raise SensorNotSupported(
                "nvidia-ml-py is not installed (pip install nvidia-ml-py)"
            ) from err
        import psutil

        tokens = _visible_tokens()
        if tokens == []:
            raise SensorNotSupported("CUDA_VISIBLE_DEVICES is empty: no GPU is visible")
        nv = _Nvml(pynvml)
        nv("nvmlInit")
        try:
            gpus = []
            for p, mig in self._choose(nv, tokens):
                try:
                    gpu = self._probe(nv, p, mig)
                except SensorReadError as err:  # e.g. lost already: measure the others
                    logger.warning("GPU %s skipped: %s", p.uuid, err)
                    continue
                if gpu is not None:
                    gpus.append(gpu)
            if not gpus:
                raise SensorNotSupported("NVML found no GPU to measure")
        except BaseException:
            nv.shutdown()
            raise
        self._nv, self._gpus, self._psutil = nv, gpus, psutil
        self._finalizer = weakref.finalize(self, nv.shutdown)
        return [gpu.info for gpu in gpus]

    def _choose(self, nv: _Nvml, tokens: list[str] | None) -> list[tuple[_Physical, bool]]:
        """The physical GPUs to measure, each with whether it was named by a MIG instance."""
        physical = []
        for i in range(nv("nvmlDeviceGetCount")):
            handle = nv("nvmlDeviceGetHandleByIndex", i)
            physical.append(_Physical(i, handle, nv("nvmlDeviceGetUUID", handle)))
        if tokens is None:
            visible = [(p, False) for p in physical]
        else:
            visible = []
            for token in tokens:
                found = _resolve(nv, physical, token)
                if found is None:
                    logger.warning(
                        "CUDA_VISIBLE_DEVICES entry %r names no GPU (GPUs: %s); like CUDA, "
                        "wattwise ignores it and the entries after it",
                        token,
                        ", ".join(f"{p.index}: {p.uuid}" for p in physical) or "none",
                    )
                    break
                visible.append(found)
        if self._wanted is None:
            chosen = visible
        else:
            chosen = []
            for entry in self._wanted:
                if isinstance(entry, int) or entry.isdigit():
                    i = int(entry)
                    found = visible[i] if 0 <= i < len(visible) else None
                else:
                    found = _resolve(nv, physical, entry)
                if found is None:
                    raise BadInput(
                        f"GPU {entry!r} is not visible to this process; accepted: a CUDA index "
                        f"below {len(visible)} or a UUID of "
                        + (", ".join(p.uuid for p in physical) or "(no GPU found)")
                    )
                chosen.append(found)
        unique: dict[str, tuple[_Physical, bool]] = {}
        for p, mig in chosen:  # two MIG instances of one GPU: that GPU, counted once
            if p.uuid not in unique or mig:
                unique[p.uuid] = (p, mig)
        return list(unique.values())

    def _probe(self, nv: _Nvml, p: _Physical, mig_named: bool) -> _Gpu | None:
        """Find the best methods of one GPU and describe it."""
        h, module = p.handle, nv.module
        name = nv("nvmlDeviceGetName", h)
        counter_mj = nv.optional("nvmlDeviceGetTotalEnergyConsumption", h)
        try:
            instant = nv.field(h, FI_DEV_POWER_INSTANT)
        except (SensorNotSupported, SensorPermissionError) as err:
            logger.debug("%s", err)
            instant = None
        power = instant is None and nv.optional("nvmlDeviceGetPowerUsage", h) is not None
        if counter_mj is None and instant is None and not power:
            logger.warning("GPU %s (%s) reports neither energy nor power: skipped", p.uuid, name)
            return None
        arch = nv.optional("nvmlDeviceGetArchitecture", h)
        arch_names = {
            getattr(module, k): k.removeprefix("NVML_DEVICE_ARCH_").lower()
            for k in dir(module)
            if k.startswith("NVML_DEVICE_ARCH_")
        }
        if arch is None or arch == ARCH_UNKNOWN:
            averaged = bool(_HOPPER_OR_NEWER_NAME.search(name.upper()))
        else:  # nvml.h: averaged "on Ampere (except GA100) or newer GPUs"
            ampere = getattr(module, "NVML_DEVICE_ARCH_AMPERE", ARCH_AMPERE)
            averaged = arch > ampere or (arch == ampere and not _GA100_NAME.search(name.upper()))
        mig_mode = nv.optional("nvmlDeviceGetMigMode", h)
        mig = mig_named or bool(mig_mode and mig_mode[0] == 1)
        flags = set()
        if counter_mj is None:
            flags.add("power_only")
        if power and averaged:
            flags.add("averaged_power")
        if mig:
            flags.add("mig")
        limit_mw = nv.optional("nvmlDeviceGetEnforcedPowerLimit", h)
        memory = nv.optional("nvmlDeviceGetMemoryInfo", h)
        info = DeviceInfo(
            device_id=f"gpu:{p.uuid}",
            kind="gpu",
            name=name,
            method="power" if counter_mj is None else "counter",
            uuid=p.uuid,
            index=p.index,
            update_period_s=UPDATE_PERIOD_S,
            flags=frozenset(flags),
            details={
                "power_limit_w": None if limit_mw is None else mw_to_w(limit_mw),
                "memory_total_bytes": None if memory is None else memory.total,
                "driver": nv.optional("nvmlSystemGetDriverVersion"),
                "architecture": arch_names.get(arch, "unknown"),
                "power_source": "instant" if instant is not None else "average" if power else None,
            },
        )
        return _Gpu(
            handle=h,
            info=info,
            counter=counter_mj is not None,
            instant=instant is not None,
            power=power,
            util=nv.optional("nvmlDeviceGetUtilizationRates", h) is not None,
            last_mj=counter_mj,
        )

    # -- reading -------------------------------------------------------------------------------

    def _warn_once(self, gpu: _Gpu, what: str, message: str, *args: Any) -> None:
        key = (gpu.info.device_id, what)
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message, *args)

    def _own_pids(self) -> set[int]:
        """This process, its parent and its descendants (e.g. DataLoader workers)."""
        me = self._psutil.Process(os.getpid())
        return {me.pid, me.ppid(), *(child.pid for child in me.children(recursive=True))}

    def _others_on(self, gpu: _Gpu) -> set[int]:
        pids = set()
        for kind in ("Compute", "Graphics"):
            call = f"nvmlDeviceGet{kind}RunningProcesses"
            procs = self._nv.optional(call, gpu.handle)
            if procs is None:  # a driver older than the binding's default (_v3, R510)
                procs = self._nv.optional(f"{call}_v2", gpu.handle)
            pids.update(proc.pid for proc in procs or ())
        return pids - self._own_pids() if pids else set()

    def _read_one(self, gpu: _Gpu, t_s: float, counter: bool) -> Sample:
        nv, h = self._nv, gpu.handle
        if gpu.instant:
            power_w = mw_to_w(nv.field(h, FI_DEV_POWER_INSTANT))
        elif gpu.power:
            power_w = mw_to_w(nv("nvmlDeviceGetPowerUsage", h))
        else:
            power_w = None
        util = nv("nvmlDeviceGetUtilizationRates", h).gpu / 100.0 if gpu.util else None
        energy_j, flags = None, set()
        if counter and gpu.counter:
            mj = nv("nvmlDeviceGetTotalEnergyConsumption", h)
            if gpu.last_mj is not None and mj < gpu.last_mj:
                flags.add("counter_reset")
                self._warn_once(
                    gpu,
                    "counter_reset",
                    "GPU %s: energy counter went back from %d to %d mJ; bridged with power",
                    gpu.info.uuid,
                    gpu.last_mj,
                    mj,
                )
            gpu.last_mj = mj
            energy_j = mj_to_j(mj)
        if counter and (others := self._others_on(gpu)):
            flags.add("shared_gpu")
            self._warn_once(
                gpu,
                "shared_gpu",
                "GPU %s is also used by other processes (pids %s); its energy covers them too",
                gpu.info.uuid,
                ", ".join(map(str, sorted(others))),
            )
        return Sample(gpu.info.device_id, t_s, energy_j, power_w, util, frozenset(flags))

    def read(self, t_s: float, *, counter: bool) -> Sequence[Sample]:
        samples = []
        for gpu in self._gpus:
            if not gpu.lost:
                try:
                    samples.append(self._read_one(gpu, t_s, counter))
                    continue
                except SensorError as err:
                    gpu.lost = getattr(err, "nvml_code", None) in LOST_CODES
                    self._warn_once(
                        gpu, "sensor_lost", "GPU %s stopped answering: %s", gpu.info.uuid, err
                    )
            lost = frozenset({"sensor_lost"})
            samples.append(Sample(gpu.info.device_id, t_s, None, None, None, lost))
        return samples

    def close(self) -> None:
        self._gpus = []
        if self._finalizer is not None:
            self._finalizer()


def _resolve(nv: _Nvml, physical: list[_Physical], token: str) -> tuple[_Physical, bool] | None:
    """The GPU a CUDA_VISIBLE_DEVICES entry names (index, GPU-/MIG- UUID or unique prefix), with
    whether it names a MIG instance; None when it names no GPU or more than one."""
    if token.isdigit():
        i = int(token)
        return (physical[i], False) if i < len(physical) else None
    if token.startswith("MIG-GPU-"):  # legacy form MIG-GPU-<uuid>/<gi>/<ci>
        token, mig = token.removeprefix("MIG-").split("/")[0], True
    else:
        mig = token.startswith("MIG-")
    if token.startswith("GPU-"):
        matches = [p for p in physical if p.uuid.startswith(token)]
    elif mig:
        matches = [p for p in physical if any(u.startswith(token) for u in _mig_uuids(nv, p))]
    else:
        return None
    return (matches[0], mig) if len(matches) == 1 else None


def _mig_uuids(nv: _Nvml, p: _Physical) -> list[str]:
    """UUIDs of the MIG instances of one GPU (none when MIG is off or unsupported)."""
    uuids = []
    for i in range(nv.optional("nvmlDeviceGetMaxMigDeviceCount", p.handle) or 0):
        try:
            handle = nv("nvmlDeviceGetMigDeviceHandleByIndex", p.handle, i)
        except SensorError:  # no instance in this slot
            continue
        uuids.append(nv("nvmlDeviceGetUUID", handle))
    return uuids
