"""CPU package and DRAM energy from the Linux powercap RAPL counters (method ``rapl``).

Zones are the directories ``intel-rapl:N`` (a package; recent kernels list AMD packages there
too) and ``intel-rapl:N:M`` (sub-domains: only the one named ``dram`` is used; ``core`` and
``uncore`` lie inside the package figure), plus the same under ``amd-rapl``. ``psys`` (the whole
platform) and ``intel-rapl-mmio`` (a second view of the package) are skipped. ``energy_uj`` is a
cumulative counter that wraps at ``max_energy_range_uj``: each read adds the range back on a wrap.
Reading it costs microseconds, so every read returns the counter; ``power_w`` is the mean power
since the previous read. Since 2020 (CVE-2020-8694) the counters are readable by root only.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import re
from collections.abc import Sequence

from wattwise.errors import SensorNotSupported, SensorPermissionError
from wattwise.sensors._cpuinfo import model_name, read_cpuinfo
from wattwise.sensors.base import Sensor
from wattwise.types import DeviceInfo, Sample
from wattwise.units import uj_to_j

logger = logging.getLogger(__name__)

POWERCAP_ROOT = "/sys/class/powercap"
_ZONE = re.compile(r"^(?:intel|amd)-rapl:(\d+)(?::(\d+))?$")
UPDATE_PERIOD_S = 0.001  # RAPL counters update about every millisecond


@dataclasses.dataclass
class _Domain:
    device_id: str
    energy_file: pathlib.Path
    range_uj: int
    last_raw_uj: int
    wraps_uj: int = 0
    last_t_s: float | None = None
    last_energy_j: float | None = None


def _read_int(path: pathlib.Path) -> int:
    return int(path.read_text().strip())


def _permission_error(path: pathlib.Path) -> SensorPermissionError:
    return SensorPermissionError(
        f"cannot read {path}: RAPL energy counters are readable by root only since 2020 "
        f"(CVE-2020-8694). Run as root, or grant read access, e.g. "
        f"`sudo chmod o+r {path.parent.parent}/*rapl*/energy_uj` (until reboot) or a udev rule"
    )


class RaplSensor(Sensor):
    """Devices ``cpu:package-<i>`` and ``ram:dram-<i>``, one per RAPL package / DRAM domain."""

    kind = "cpu"

    def __init__(self, root: str | pathlib.Path = POWERCAP_ROOT) -> None:
        self.root = pathlib.Path(root)
        self._domains: list[_Domain] = []
        self._warned = False

    def _zones(self) -> list[tuple[int, int | None, pathlib.Path]]:
        try:
            entries = sorted(self.root.iterdir())
        except FileNotFoundError as err:
            raise SensorNotSupported(f"no powercap interface at {self.root}") from err
        except PermissionError as err:
            raise _permission_error(self.root / "intel-rapl:0" / "energy_uj") from err
        zones = []
        for entry in entries:
            if m := _ZONE.match(entry.name):
                zones.append((int(m[1]), None if m[2] is None else int(m[2]), entry))
        return zones

    def open(self) -> list[DeviceInfo]:
        cpu_name = model_name(read_cpuinfo())
        domains, devices = [], []
        packages = 0
        for pkg, sub, path in self._zones():
            energy_file = path / "energy_uj"
            try:
                name = (path / "name").read_text().strip()
                if sub is None and name.startswith("package"):
                    index = int(name.rpartition("-")[2]) if name[-1].isdigit() else pkg
                    device_id, kind, label = f"cpu:package-{index}", "cpu", cpu_name
                    packages += 1
                elif sub is not None and name == "dram":
                    index = pkg
                    device_id, kind, label = f"ram:dram-{index}", "ram", "DRAM"
                else:
                    continue
                raw_uj = _read_int(energy_file)
                range_uj = _read_int(path / "max_energy_range_uj")
            except PermissionError as err:
                raise _permission_error(energy_file) from err
            except (OSError, ValueError) as err:
                logger.debug("skipping RAPL zone %s: %s", path, err)
                continue
            domains.append(_Domain(device_id, energy_file, range_uj, raw_uj))
            devices.append(
                DeviceInfo(
                    device_id=device_id,
                    kind=kind,
                    name=label,
                    method="rapl",
                    index=index,
                    update_period_s=UPDATE_PERIOD_S,
                    details={"zone": str(path), "max_energy_range_j": uj_to_j(range_uj)},
                )
            )
        if not packages:
            raise SensorNotSupported(f"no RAPL package domain under {self.root}")
        self._domains = domains
        return devices

    def read(self, t_s: float, *, counter: bool) -> Sequence[Sample]:
        samples = []
        for d in self._domains:
            try:
                raw_uj = _read_int(d.energy_file)
            except (OSError, ValueError) as err:
                if not self._warned:
                    self._warned = True
                    logger.warning("RAPL counter %s could not be read: %s", d.energy_file, err)
                lost = frozenset({"sensor_lost"})
                samples.append(Sample(d.device_id, t_s, None, None, None, lost))
                continue
            if raw_uj < d.last_raw_uj:  # wrapped past max_energy_range_uj
                d.wraps_uj += d.range_uj
            d.last_raw_uj = raw_uj
            energy_j = uj_to_j(raw_uj + d.wraps_uj)
            power_w = None
            if d.last_t_s is not None and t_s > d.last_t_s:
                power_w = (energy_j - d.last_energy_j) / (t_s - d.last_t_s)
            d.last_t_s, d.last_energy_j = t_s, energy_j
            samples.append(Sample(d.device_id, t_s, energy_j, power_w))
        return samples

    def close(self) -> None:
        self._domains = []
