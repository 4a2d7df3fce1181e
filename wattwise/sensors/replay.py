"""Replay a recorded NVML trace as if it were a live GPU (``WATTWISE_REPLAY_NVML=trace.csv``).

Trace format (``tests/fixtures/nvml/*.csv``): a CSV with a header; required columns ``t_s``
(seconds, increasing), ``energy_mJ`` (NVML total-energy counter) and ``power_mW``
(nvmlDeviceGetPowerUsage, a 1 s average on Hopper); optional ``instant_mW`` (field 186) and
``gpu_util_pct``; other columns are kept but unused. Marks format: a JSON object with ``marks``,
a list of ``[label, t_s]`` in time order, and optional ``fit_start``, ``fit_end``, ``gpu``,
``params``, ``peak_mem_GiB``.

:class:`ReplayNvmlSensor`: time 0 of the trace is when the sensor opens. ``read(t)`` returns the
row in force at ``t - t_open``; after the last row its power continues and the counter keeps
growing at that power (flag ``replay_ended``). Inside a recorder stall (rows missing for more
than two counter update periods) the counter steps every update period along the line joining
the change points around the stall, as the real counter did. The device's UUID is derived from
the trace's bytes, so every process replaying the same file sees the same GPU.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import math
import os
import pathlib
import statistics
import time
import uuid
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from wattwise.errors import TraceFormatError
from wattwise.sensors.base import Sensor
from wattwise.types import DeviceInfo, Sample
from wattwise.units import mj_to_j, mw_to_w

REQUIRED_COLUMNS = ("t_s", "energy_mJ", "power_mW")
OPTIONAL_COLUMNS = ("instant_mW", "gpu_util_pct")
NON_NEGATIVE_COLUMNS = ("energy_mJ", "power_mW", "instant_mW")
_UUID_NAMESPACE = uuid.UUID("6f1c1b9e-58a4-4f0e-9a43-7d2f3c1e5a10")


@dataclass(frozen=True)
class Trace:
    """A recorded NVML trace, in SI units."""

    path: pathlib.Path
    t_s: list[float]
    energy_j: list[float]
    power_w: list[float]
    """nvmlDeviceGetPowerUsage (a 1 s moving average on Hopper)."""
    instant_w: list[float] | None
    gpu_util: list[float] | None
    """0..1."""
    digest: str
    """sha256 of the file's bytes."""

    @property
    def best_power_w(self) -> list[float]:
        """Instantaneous power where recorded, else the averaged one."""
        return self.instant_w if self.instant_w is not None else self.power_w

    @property
    def duration_s(self) -> float:
        return self.t_s[-1] - self.t_s[0]

    def update_period_s(self) -> float:
        """Median time between the counter's change points (NVML: ~0.1 s)."""
        changes = [
            t for i, t in enumerate(self.t_s) if i and self.energy_j[i] != self.energy_j[i - 1]
        ]
        gaps = [b - a for a, b in itertools.pairwise(changes)]
        return statistics.median(gaps) if gaps else 0.1

    def samples(self, device_id: str, *, offset_s: float = 0.0) -> list[Sample]:
        """Every row as a Sample (counter and best power), times shifted by ``offset_s``."""
        power = self.best_power_w
        util = self.gpu_util
        return [
            Sample(device_id, t + offset_s, e, p, util[i] if util is not None else None)
            for i, (t, e, p) in enumerate(zip(self.t_s, self.energy_j, power, strict=True))
        ]


@dataclass(frozen=True)
class Marks:
    """Phase marks recorded with a trace, on the trace's clock."""

    path: pathlib.Path
    marks: list[tuple[str, float]]
    fit_start_s: float | None = None
    fit_end_s: float | None = None
    gpu: str | None = None
    params: int | None = None
    peak_mem_gib: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _number(value: str, path: os.PathLike | str, row: int, column: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise TraceFormatError(
            f"{path}: row {row}, column {column!r}: {value!r} is not a number "
            "(accepted: finite decimal numbers)"
        )
    return number


def load_trace(path: str | os.PathLike) -> Trace:
    """Read and validate a trace CSV; raises TraceFormatError naming the file and the row."""
    path = pathlib.Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise TraceFormatError(f"{path}: cannot read the trace ({err.strerror or err})") from err
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise TraceFormatError(f"{path}: not a UTF-8 CSV trace (accepted: CSV text)") from err
    reader = csv.reader(text.splitlines())
    header = [h.strip() for h in next(reader, [])]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise TraceFormatError(
            f"{path}: missing column(s) {', '.join(missing)} (header: {','.join(header) or 'none'};"
            f" required: {', '.join(REQUIRED_COLUMNS)}; optional: {', '.join(OPTIONAL_COLUMNS)})"
        )
    wanted = [c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if c in header]
    index = {c: header.index(c) for c in wanted}
    columns: dict[str, list[float]] = {c: [] for c in wanted}
    for row_no, row in enumerate(reader, start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) < len(header):
            raise TraceFormatError(
                f"{path}: row {row_no} has {len(row)} fields, the header has {len(header)}"
            )
        for c in wanted:
            number = _number(row[index[c]], path, row_no, c)
            if number < 0 and c in NON_NEGATIVE_COLUMNS:
                raise TraceFormatError(
                    f"{path}: row {row_no}, column {c!r}: {row[index[c]]!r} is negative "
                    "(accepted: energy and power readings >= 0)"
                )
            columns[c].append(number)
        t = columns["t_s"]
        if len(t) > 1 and t[-1] <= t[-2]:
            raise TraceFormatError(
                f"{path}: row {row_no}: t_s {t[-1]} does not increase (previous {t[-2]}); "
                "accepted: strictly increasing t_s"
            )
    if len(columns["t_s"]) < 2:
        raise TraceFormatError(f"{path}: needs at least 2 data rows (found {len(columns['t_s'])})")
    instant = columns.get("instant_mW")
    util = columns.get("gpu_util_pct")
    return Trace(
        path=path,
        t_s=columns["t_s"],
        energy_j=[mj_to_j(v) for v in columns["energy_mJ"]],
        power_w=[mw_to_w(v) for v in columns["power_mW"]],
        instant_w=[mw_to_w(v) for v in instant] if instant is not None else None,
        gpu_util=[v / 100.0 for v in util] if util is not None else None,
        digest=hashlib.sha256(data).hexdigest(),
    )


def load_marks(path: str | os.PathLike) -> Marks:
    """Read and validate a marks JSON file; raises TraceFormatError naming the file."""
    path = pathlib.Path(path)
    accepted = 'accepted: {"marks": [[label, t_s], ...], "fit_start": t_s, "fit_end": t_s, ...}'
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise TraceFormatError(f"{path}: cannot read the marks ({err.strerror or err})") from err
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TraceFormatError(f"{path}: not a JSON marks file ({err}); {accepted}") from err
    if not isinstance(raw, dict) or not isinstance(raw.get("marks"), list):
        raise TraceFormatError(f"{path}: no 'marks' list; {accepted}")
    marks: list[tuple[str, float]] = []
    for i, item in enumerate(raw["marks"]):
        ok = isinstance(item, list | tuple) and len(item) == 2 and isinstance(item[0], str)
        if not ok or not _is_number(item[1]):
            raise TraceFormatError(f"{path}: mark {i} is {item!r}; {accepted}")
        if marks and item[1] < marks[-1][1]:
            raise TraceFormatError(
                f"{path}: mark {i} ({item[0]!r} at {item[1]}) is before the previous one "
                f"({marks[-1][1]}); accepted: marks in time order"
            )
        marks.append((item[0], float(item[1])))
    for key in ("fit_start", "fit_end", "params", "peak_mem_GiB"):
        if key in raw and not _is_number(raw[key]):
            raise TraceFormatError(f"{path}: {key} is {raw[key]!r}; accepted: a number")
    if "gpu" in raw and not isinstance(raw["gpu"], str):
        raise TraceFormatError(f"{path}: gpu is {raw['gpu']!r}; accepted: a GPU name string")
    known = {"marks", "fit_start", "fit_end", "gpu", "params", "peak_mem_GiB"}
    return Marks(
        path=path,
        marks=marks,
        fit_start_s=_opt_float(raw.get("fit_start")),
        fit_end_s=_opt_float(raw.get("fit_end")),
        gpu=raw.get("gpu"),
        params=int(raw["params"]) if "params" in raw else None,
        peak_mem_gib=_opt_float(raw.get("peak_mem_GiB")),
        extra={k: v for k, v in raw.items() if k not in known},
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def find_marks(trace_path: str | os.PathLike) -> pathlib.Path | None:
    """The marks file recorded with a trace: ``<stem>-marks.json``, or with the stem's last
    ``-part`` (e.g. ``-50hz``) replaced by ``-marks``; None when there is none."""
    trace_path = pathlib.Path(trace_path)
    stem = trace_path.stem
    candidates = [f"{stem}-marks.json"]
    if "-" in stem:
        candidates.append(f"{stem.rsplit('-', 1)[0]}-marks.json")
    for name in candidates:
        candidate = trace_path.with_name(name)
        if candidate.is_file():
            return candidate
    return None


def counter_reference(t_s: Sequence[float], energy_j: Sequence[float]) -> Callable[[float], float]:
    """A recorded counter as a curve: its change points joined linearly, clamped at the ends.

    A repeated value means the counter had not updated yet, so each value is placed where it
    first appears. The reference the accuracy tests and ``bench/replay_accuracy.py`` compare
    phase energies with.
    """
    times, values = [t_s[0]], [energy_j[0]]
    for t, e in zip(t_s[1:], energy_j[1:], strict=True):
        if e != values[-1]:
            times.append(t)
            values.append(e)

    def at(t: float) -> float:
        if t <= times[0]:
            return values[0]
        if t >= times[-1]:
            return values[-1]
        i = bisect_right(times, t)
        share = (t - times[i - 1]) / (times[i] - times[i - 1])
        return values[i - 1] + (values[i] - values[i - 1]) * share

    return at


def _last_change_index(energy_j: Sequence[float]) -> list[int]:
    """For each row, the index of the row where its counter value first appeared."""
    out = [0] * len(energy_j)
    for i in range(1, len(energy_j)):
        out[i] = i if energy_j[i] != energy_j[i - 1] else out[i - 1]
    return out


def replay_uuid(trace: Trace) -> str:
    """A GPU UUID derived from the trace's bytes: the same file gives the same GPU everywhere."""
    return f"GPU-{uuid.uuid5(_UUID_NAMESPACE, trace.digest)}"


def replay_device(trace: Trace, gpu: str | None = None) -> DeviceInfo:
    """The DeviceInfo of a replayed GPU; ``gpu`` is its model name when known."""
    device_uuid = replay_uuid(trace)
    return DeviceInfo(
        device_id=f"gpu:{device_uuid}",
        kind="gpu",
        name=f"{gpu or 'NVIDIA GPU'} (replay)",
        method="counter",
        uuid=device_uuid,
        update_period_s=trace.update_period_s(),
        flags=frozenset() if trace.instant_w is not None else frozenset({"averaged_power"}),
        details={"replay_path": str(trace.path.resolve()), "gpu": gpu},
    )


class ReplayNvmlSensor(Sensor):
    """A GPU sensor that replays a recorded NVML trace (method ``counter``)."""

    kind = "gpu"

    def __init__(
        self,
        path: str | os.PathLike,
        clock: Callable[[], float] = time.monotonic,
        marks: str | os.PathLike | None = None,
    ) -> None:
        self.path = pathlib.Path(path)
        self.clock = clock
        self.marks_path = pathlib.Path(marks) if marks is not None else None
        self.trace: Trace | None = None
        self.info: DeviceInfo | None = None
        self.t_open_s = 0.0
        self._period_s = 0.1
        self._reference: Callable[[float], float] = lambda t: 0.0
        self._last_change: list[int] = []

    def open(self) -> list[DeviceInfo]:
        trace = load_trace(self.path)
        marks_path = self.marks_path or find_marks(self.path)
        gpu = load_marks(marks_path).gpu if marks_path is not None else None
        self.trace = trace
        self.info = replay_device(trace, gpu)
        self._period_s = trace.update_period_s()
        self._reference = counter_reference(trace.t_s, trace.energy_j)
        self._last_change = _last_change_index(trace.energy_j)
        self.t_open_s = self.clock()
        return [self.info]

    def _stalled_counter_j(self, i: int, rel: float) -> float | None:
        """The counter at ``rel`` inside a recorder stall (no row for more than two update
        periods after row ``i``), else None.

        A recorder that missed rows for a while (its thread starved) shows the counter frozen
        and then jumping by many updates at once; replayed as recorded, a live reader catching
        the jump would place all of it at once. The real counter stepped every update period
        all along: replay it stepping along the line that joins the change points around the
        stall (the reference the accuracy checks use), so the stall reads like the GPU did.
        """
        trace = self.trace
        assert trace is not None
        if i + 1 >= len(trace.t_s) or trace.t_s[i + 1] - trace.t_s[i] <= 2 * self._period_s:
            return None
        t_change = trace.t_s[self._last_change[i]]
        steps = math.floor((rel - t_change) / self._period_s)
        if steps < 1:
            return None
        return max(trace.energy_j[i], self._reference(t_change + steps * self._period_s))

    def read(self, t_s: float, *, counter: bool) -> Sequence[Sample]:
        trace, info = self.trace, self.info
        if trace is None or info is None:
            raise RuntimeError("ReplayNvmlSensor.read() before open()")
        rel = trace.t_s[0] + (t_s - self.t_open_s)
        i = max(bisect_right(trace.t_s, rel) - 1, 0)
        power = trace.best_power_w[i]
        energy = trace.energy_j[i]
        stalled = self._stalled_counter_j(i, rel)
        if stalled is not None:
            energy = stalled
        flags: frozenset[str] = frozenset()
        if rel > trace.t_s[-1]:
            energy += power * (rel - trace.t_s[-1])
            flags = frozenset({"replay_ended"})
        util = trace.gpu_util[i] if trace.gpu_util is not None else None
        return [Sample(info.device_id, t_s, energy if counter else None, power, util, flags)]
