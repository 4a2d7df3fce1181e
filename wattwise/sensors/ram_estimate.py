"""RAM power estimated from the memory in use, where no RAPL DRAM domain can be read.

Model: ``P = W_PER_GIB x used GiB`` with ``W_PER_GIB = 0.3725``, the memory power figure of Green
Algorithms (Lannelongue, Grealey & Inouye, "Green Algorithms: Quantifying the Carbon Footprint of
Computation", Advanced Science 8, 2021: 0.3725 W per GB of memory available to the job).
``mode="machine"``: memory in use by the whole machine (``total - available``);
``mode="process"``: resident set size of this process and its live descendants (shared pages are
counted once per process, so this leans high). Method ``estimate``, flag ``estimated``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from wattwise._procinfo import tree_figures
from wattwise.errors import BadInput, SensorNotSupported
from wattwise.sensors.base import Sensor
from wattwise.types import DeviceInfo, Sample
from wattwise.units import BYTES_PER_GIB

logger = logging.getLogger(__name__)

W_PER_GIB = 0.3725
MODES = ("machine", "process")


class RamEstimateSensor(Sensor):
    """Estimated RAM power (device ``ram``); see the module docstring."""

    kind = "ram"

    def __init__(self, mode: str = "machine") -> None:
        if mode not in MODES:
            raise BadInput(f"ram mode {mode!r} is not known; use one of {', '.join(MODES)}")
        self.mode = mode
        self._psutil = None
        self._warned = False

    def open(self) -> list[DeviceInfo]:
        try:
            import psutil
        except ImportError as err:
            raise SensorNotSupported("psutil is not installed (pip install psutil)") from err
        self._psutil = psutil
        return [
            DeviceInfo(
                device_id="ram",
                kind="ram",
                name="RAM",
                method="estimate",
                flags=frozenset({"estimated"}),
                details={
                    "w_per_gib": W_PER_GIB,
                    "mode": self.mode,
                    "memory_total_bytes": psutil.virtual_memory().total,
                },
            )
        ]

    def used_bytes(self) -> int:
        """Memory the estimate is based on, in bytes (see the module docstring)."""
        psutil = self._psutil
        if self.mode == "machine":
            vm = psutil.virtual_memory()
            return vm.total - vm.available
        return sum(tree_figures(lambda proc: proc.memory_info().rss).values())

    def read(self, t_s: float, *, counter: bool) -> Sequence[Sample]:
        try:
            used = self.used_bytes()
        except (OSError, self._psutil.Error) as err:
            if not self._warned:
                self._warned = True
                logger.warning("memory use could not be read (%s); RAM energy missing", err)
            return [Sample("ram", t_s, None, None, None, frozenset({"sensor_lost"}))]
        return [Sample("ram", t_s, None, W_PER_GIB * used / BYTES_PER_GIB)]
