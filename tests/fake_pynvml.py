"""A fake ``pynvml`` for tests, with a real H200's values (fixtures/nvml/h200-probe.json).

Units are NVML's (mW, mJ, bytes); errors are the real ``pynvml.NVMLError`` classes with the real
return codes, and field values the real ``c_nvmlFieldValue_t`` structs. Install it with
``monkeypatch.setitem(sys.modules, "pynvml", fake)``. Faults are scripted per GPU: set ``errors``
(call name -> NVML return code), ``field_errors`` (field id -> code), change ``energy_mj``, or hide
a function from the module with ``fake.hide(name)`` (an nvidia-ml-py too old to have it).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import types
from typing import Any

import pynvml as real

PROBE = json.loads(
    (pathlib.Path(__file__).parent / "fixtures" / "nvml" / "h200-probe.json").read_text()
)


@dataclasses.dataclass
class FakeMig:
    parent: FakeGpu
    uuid: str


@dataclasses.dataclass
class FakeGpu:
    uuid: str
    name: str = PROBE["name"]
    energy_mj: int = PROBE["energy_mJ"]
    power_mw: int = PROBE["power_mW"]
    instant_mw: int = PROBE["field_instant_mW"]
    limit_mw: int = PROBE["enforced_limit_mW"]
    memory_total: int = PROBE["mem_total"]
    util_pct: int = 0
    arch: int = real.NVML_DEVICE_ARCH_HOPPER
    mig_mode: int = real.NVML_DEVICE_MIG_DISABLE
    migs: list[FakeMig] = dataclasses.field(default_factory=list)
    compute_pids: list[int] = dataclasses.field(default_factory=list)
    graphics_pids: list[int] = dataclasses.field(default_factory=list)
    errors: dict[str, int] = dataclasses.field(default_factory=dict)
    field_errors: dict[int, int] = dataclasses.field(default_factory=dict)

    def add_mig(self, uuid: str) -> FakeMig:
        self.mig_mode = real.NVML_DEVICE_MIG_ENABLE
        mig = FakeMig(self, uuid)
        self.migs.append(mig)
        return mig


UUIDS = (
    "GPU-5c1a7e2b-93f4-8d21-6a0e-4b7c2f9d1e38",
    "GPU-a04f3c9e-1b27-5d86-e3f0-7c91b2a4d650",
    "GPU-e7b2d415-6c08-4f9a-b31d-0a5e8c7f2d94",
)


class FakeNvml(types.ModuleType):
    """The subset of pynvml that wattwise calls, over a list of :class:`FakeGpu`."""

    NVMLError = real.NVMLError

    def __init__(self, n_gpus: int = 1, *, driver_loaded: bool = True) -> None:
        super().__init__("pynvml")
        for name in dir(real):
            if name.startswith(("NVML_ERROR_", "NVML_DEVICE_ARCH_", "NVML_FI_", "NVML_DEVICE_MIG")):
                setattr(self, name, getattr(real, name))
        self.gpus = [FakeGpu(uuid=UUIDS[i]) for i in range(n_gpus)]
        self.driver_loaded = driver_loaded
        self.init_count = 0
        self.calls: list[str] = []
        self._hidden: set[str] = set()

    def hide(self, name: str) -> None:
        self._hidden.add(name)

    def __getattribute__(self, name: str) -> Any:
        if name in object.__getattribute__(self, "_hidden"):
            raise AttributeError(f"module 'pynvml' has no attribute {name!r}")
        return super().__getattribute__(name)

    def _check(self, call: str, gpu: FakeGpu | None = None) -> None:
        self.calls.append(call)
        if self.init_count <= 0 and call != "nvmlInit":
            raise real.NVMLError(real.NVML_ERROR_UNINITIALIZED)
        if gpu is not None and call in gpu.errors:
            raise real.NVMLError(gpu.errors[call])

    @staticmethod
    def _gpu(handle: FakeGpu | FakeMig) -> FakeGpu:
        if isinstance(handle, FakeMig):  # the real driver refuses power readings on MIG handles
            raise real.NVMLError(real.NVML_ERROR_NOT_SUPPORTED)
        return handle

    # -- library ---------------------------------------------------------------------------------
    def nvmlInit(self) -> None:
        if not self.driver_loaded:
            raise real.NVMLError(real.NVML_ERROR_LIBRARY_NOT_FOUND)
        self.init_count += 1

    def nvmlShutdown(self) -> None:
        self._check("nvmlShutdown")
        self.init_count -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self._check("nvmlSystemGetDriverVersion")
        return PROBE["driver"]

    def nvmlDeviceGetCount(self) -> int:
        self._check("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        self._check("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.gpus):
            raise real.NVMLError(real.NVML_ERROR_INVALID_ARGUMENT)
        return self.gpus[index]

    # -- identity --------------------------------------------------------------------------------
    def nvmlDeviceGetUUID(self, handle: FakeGpu | FakeMig) -> str:
        self._check("nvmlDeviceGetUUID")
        return handle.uuid

    def nvmlDeviceGetName(self, handle: FakeGpu) -> str:
        self._check("nvmlDeviceGetName", handle)
        return handle.name

    def nvmlDeviceGetArchitecture(self, handle: FakeGpu) -> int:
        self._check("nvmlDeviceGetArchitecture", handle)
        return handle.arch

    def nvmlDeviceGetMigMode(self, handle: FakeGpu) -> list[int]:
        self._check("nvmlDeviceGetMigMode", handle)
        return [handle.mig_mode, handle.mig_mode]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: FakeGpu) -> int:
        self._check("nvmlDeviceGetMaxMigDeviceCount", handle)
        return 7 if handle.mig_mode else 0

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: FakeGpu, index: int) -> FakeMig:
        self._check("nvmlDeviceGetMigDeviceHandleByIndex", handle)
        if index >= len(handle.migs):
            raise real.NVMLError(real.NVML_ERROR_NOT_FOUND)
        return handle.migs[index]

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: FakeGpu) -> int:
        self._check("nvmlDeviceGetEnforcedPowerLimit", handle)
        return handle.limit_mw

    def nvmlDeviceGetMemoryInfo(self, handle: FakeGpu) -> types.SimpleNamespace:
        self._check("nvmlDeviceGetMemoryInfo", handle)
        return types.SimpleNamespace(total=handle.memory_total, used=0, free=handle.memory_total)

    # -- readings --------------------------------------------------------------------------------
    def nvmlDeviceGetTotalEnergyConsumption(self, handle: FakeGpu) -> int:
        gpu = self._gpu(handle)
        self._check("nvmlDeviceGetTotalEnergyConsumption", gpu)
        return gpu.energy_mj

    def nvmlDeviceGetPowerUsage(self, handle: FakeGpu) -> int:
        gpu = self._gpu(handle)
        self._check("nvmlDeviceGetPowerUsage", gpu)
        return gpu.power_mw

    def nvmlDeviceGetFieldValues(self, handle: FakeGpu, field_ids: list[int]) -> Any:
        gpu = self._gpu(handle)
        self._check("nvmlDeviceGetFieldValues", gpu)
        values = (real.c_nvmlFieldValue_t * len(field_ids))()
        for value, field_id in zip(values, field_ids, strict=True):
            value.fieldId = field_id
            if field_id in gpu.field_errors:
                value.nvmlReturn = gpu.field_errors[field_id]
            elif field_id == real.NVML_FI_DEV_POWER_INSTANT:
                value.valueType = real.NVML_VALUE_TYPE_UNSIGNED_INT
                value.value.uiVal = gpu.instant_mw
            else:
                value.nvmlReturn = real.NVML_ERROR_NOT_SUPPORTED
        return values

    def nvmlDeviceGetUtilizationRates(self, handle: FakeGpu) -> Any:
        gpu = self._gpu(handle)
        self._check("nvmlDeviceGetUtilizationRates", gpu)
        return real.c_nvmlUtilization_t(gpu=gpu.util_pct, memory=0)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: FakeGpu) -> list[Any]:
        self._check("nvmlDeviceGetComputeRunningProcesses", handle)
        gib = 1 << 30
        return [types.SimpleNamespace(pid=pid, usedGpuMemory=gib) for pid in handle.compute_pids]

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: FakeGpu) -> list[Any]:
        self._check("nvmlDeviceGetGraphicsRunningProcesses", handle)
        return [types.SimpleNamespace(pid=pid, usedGpuMemory=0) for pid in handle.graphics_pids]
