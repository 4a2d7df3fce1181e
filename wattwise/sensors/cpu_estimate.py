"""CPU power estimated from utilisation x TDP, where no RAPL counter can be read.

Model (linear in utilisation, as in the Cloud Carbon Footprint methodology)::

    P_machine = TDP x (IDLE_FRACTION + (1 - IDLE_FRACTION) x u)

``u`` is the whole machine's busy CPU time over the interval since the previous read (0..1),
computed from ``psutil.cpu_times()`` deltas kept in this sensor (not ``psutil.cpu_percent``, whose
state is shared by every caller in the process). ``IDLE_FRACTION = 0.2``: the ratio of minimum to
maximum watts per vCPU in Cloud Carbon Footprint's SPECpower-derived coefficients lies between 0.16
(Skylake) and 0.32 (Haswell), 0.2 for Broadwell and 0.24 for AMD EPYC Milan.

``mode="process"`` gives this process tree (this process and its live descendants) the share of
``P_machine`` that matches its share of the machine's busy CPU time:
``P = P_machine x tree_cpu_s / machine_busy_cpu_s``. CPU time a child spends in its last interval
before it exits is not seen.

TDP: the ``tdp_w`` argument, else codecarbon's shipped ``data/hardware/cpu_power.csv`` (located with
``importlib.util.find_spec``; codecarbon itself is never imported) matched against the brand string
in ``/proc/cpuinfo``, times the number of sockets; an unknown CPU gets ``DEFAULT_W_PER_THREAD`` W
per logical CPU (CodeCarbon's own fallback figure), and ``details["tdp_source"]`` says so. In a
virtual machine the table's TDP is the whole host chip's, which overstates a small VM.
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import logging
import pathlib
import re
from collections.abc import Sequence
from typing import Any

from wattwise._procinfo import tree_figures
from wattwise.errors import BadInput, SensorNotSupported
from wattwise.sensors._cpuinfo import logical_cpus, model_name, read_cpuinfo, socket_count
from wattwise.sensors.base import Sensor
from wattwise.types import DeviceInfo, Sample

logger = logging.getLogger(__name__)

IDLE_FRACTION = 0.2
DEFAULT_W_PER_THREAD = 4.0
MODES = ("machine", "process")

_NOISE = re.compile(
    r"\((?:r|tm)\)|[®™]|@.*$|\b\d+(?:st|nd|rd|th) gen\b|\b\d+-core\b|\bprocessor\b|\bcpu\b"
    r"|\bwith radeon.*$",
    re.IGNORECASE,
)


def _tokens(name: str) -> tuple[str, ...]:
    return tuple(_NOISE.sub(" ", name).lower().split())


def cpu_power_table_path() -> pathlib.Path | None:
    """codecarbon's shipped CPU TDP table, or None where codecarbon is not installed."""
    spec = importlib.util.find_spec("codecarbon")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = pathlib.Path(next(iter(spec.submodule_search_locations))) / "data/hardware/cpu_power.csv"
    return path if path.is_file() else None


@functools.lru_cache(maxsize=4)
def _load_table(path: pathlib.Path) -> tuple[tuple[str, float], ...]:
    """(name, TDP W) rows; parsed once per process (the table has ~4,900 rows)."""
    rows = []
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.reader(f):
            if len(row) < 2 or row[0] == "Name":
                continue
            try:
                tdp_w = float(row[1])
            except ValueError:
                continue
            if tdp_w > 0 and row[0]:
                rows.append((row[0], tdp_w))
    return tuple(rows)


def lookup_tdp(brand: str) -> tuple[float, str] | None:
    """TDP per socket in W and the table entry it came from, or None for an unknown CPU.

    Forgiving: trademarks, clock speed, "Processor", "n-Core", "13th Gen" are ignored and case does
    not matter; the entry wins whose words all occur in the brand string, the most specific first
    (``AMD EPYC 9654`` does not match ``AMD EPYC 9654P``).
    """
    path = cpu_power_table_path()
    if path is None:
        return None
    words = set(_tokens(brand))
    best = None
    for name, tdp_w in _load_table(path):
        lowered = name.lower()
        # cheap pre-filter: an entry can only match if one of the brand's words occurs in it
        if not any(word in lowered for word in words):
            continue
        tokens = _tokens(name)
        if tokens and words.issuperset(tokens):
            key = (len(tokens), len(name))
            if best is None or key > best[0]:
                best = (key, name, tdp_w)
    return None if best is None else (best[2], best[1])


def _machine_times(psutil) -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine, summed over CPUs (as psutil counts them)."""
    t = psutil.cpu_times()
    total = sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
    idle = t.idle + getattr(t, "iowait", 0.0)
    return total - idle, total


class CpuEstimateSensor(Sensor):
    """Estimated CPU power (method ``estimate``, flag ``estimated``); see the module docstring."""

    kind = "cpu"

    def __init__(self, mode: str = "machine", tdp_w: float | None = None) -> None:
        if mode not in MODES:
            raise BadInput(f"cpu mode {mode!r} is not known; use one of {', '.join(MODES)}")
        if tdp_w is not None and not tdp_w > 0:
            raise BadInput(f"tdp_w={tdp_w!r} is not a positive number of watts")
        self.mode = mode
        self._tdp_arg_w = tdp_w
        self._tdp_w = 0.0
        self._psutil = None
        self._device_id = f"cpu:{mode}"
        self._last: tuple[float, float] = (0.0, 0.0)
        self._last_tree: dict[int, float] = {}
        self._last_power_w: float | None = None
        self._last_util: float | None = None
        self._warned = False

    def open(self) -> list[DeviceInfo]:
        try:
            import psutil
        except ImportError as err:
            raise SensorNotSupported("psutil is not installed (pip install psutil)") from err
        self._psutil = psutil
        text = read_cpuinfo()
        brand = model_name(text)
        sockets = socket_count(text)
        if self._tdp_arg_w is not None:
            self._tdp_w, source = self._tdp_arg_w, "argument tdp_w"
        elif found := lookup_tdp(brand):
            per_socket_w, entry = found
            self._tdp_w = per_socket_w * sockets
            source = f"codecarbon cpu_power.csv: {entry} ({per_socket_w:g} W x {sockets} socket(s))"
        else:
            threads = logical_cpus()
            self._tdp_w = DEFAULT_W_PER_THREAD * threads
            source = (
                f"default: CPU {brand!r} is not in codecarbon's TDP table; "
                f"{DEFAULT_W_PER_THREAD:g} W x {threads} logical CPUs"
            )
        self._last = _machine_times(psutil)
        self._last_tree = self._tree_cpu_s() if self.mode == "process" else {}
        return [
            DeviceInfo(
                device_id=self._device_id,
                kind="cpu",
                name=brand,
                method="estimate",
                flags=frozenset({"estimated"}),
                details={
                    "tdp_w": self._tdp_w,
                    "tdp_source": source,
                    "sockets": sockets,
                    "idle_fraction": IDLE_FRACTION,
                    "mode": self.mode,
                },
            )
        ]

    def _tree_cpu_s(self) -> dict[int, float]:
        """CPU seconds (user + system) of this process and each live descendant, by pid."""

        def cpu_s(proc: Any) -> float:
            t = proc.cpu_times()
            return t.user + t.system

        return tree_figures(cpu_s)

    def read(self, t_s: float, *, counter: bool) -> Sequence[Sample]:
        try:
            busy_s, total_s = _machine_times(self._psutil)
            tree = self._tree_cpu_s() if self.mode == "process" else {}
        except (OSError, self._psutil.Error) as err:
            if not self._warned:
                self._warned = True
                logger.warning("CPU utilisation could not be read (%s); CPU energy missing", err)
            return [Sample(self._device_id, t_s, None, None, None, frozenset({"sensor_lost"}))]
        d_busy = busy_s - self._last[0]
        d_total = total_s - self._last[1]
        if d_total > 0:  # cpu_times ticks every 10 ms: between ticks keep the last value
            util = min(max(d_busy / d_total, 0.0), 1.0)
            power_w = self._tdp_w * (IDLE_FRACTION + (1.0 - IDLE_FRACTION) * util)
            if self.mode == "process":
                tree_s = sum(max(0.0, s - self._last_tree.get(pid, 0.0)) for pid, s in tree.items())
                share = min(tree_s / d_busy, 1.0) if d_busy > 0 else 0.0
                power_w *= share
                util = min(tree_s / d_total, 1.0)
            self._last = (busy_s, total_s)
            self._last_tree = tree
            self._last_power_w, self._last_util = power_w, util
        if self._last_power_w is None:  # read within one tick of open(): nothing to report yet
            return []
        return [Sample(self._device_id, t_s, None, self._last_power_w, self._last_util)]
