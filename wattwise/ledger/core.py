"""The Ledger: writing and reading runs, their phases and snapshots, on either backend.

Design:

- The SQL is written once, in a dialect both backends take (``?`` placeholders, upserts with
  ``ON CONFLICT``, ``RETURNING key``); :mod:`.postgres` hands it to the server in its dialect.
  Opening, checking and migrating are the backend's (:mod:`.sqlite`, :mod:`.postgres`).
- Writes are short transactions (one per epoch in ``add_phases``); on SQLite ``BEGIN
  IMMEDIATE`` under a busy timeout, retried on "database is locked", so concurrent trainings
  sharing a file never see that error. One connection per ``Ledger`` object, opened on first
  use and guarded by a lock, so the object may be used from any thread.
- A server ledger (``Ledger("postgresql://...")``) writes runs to its local spool
  (:mod:`.spool`) and reads from the server, except runs still waiting in the spool, which it
  reads from there (``RunRecord.waiting``). ``Ledger._direct(url)`` reads and writes the server
  itself (sync, merge, the shipper).
- A ``running`` run whose process is gone (same host; pid dead, a zombie, or reused by a process
  that started at another time; or the host has rebooted) is reported as ``interrupted``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import numbers
import os
import pathlib
import sqlite3
import tempfile
import threading
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from wattwise import _procinfo
from wattwise.errors import BadInput, LedgerFormatError
from wattwise.ledger.location import FileLocation, PgLocation, parse_location
from wattwise.ledger.schema import APPLICATION_ID, SCHEMA_VERSION
from wattwise.ledger.sqlite import (
    _BUSY_TIMEOUT_S,
    SqliteBackend,
    _inspect,
    _read_only_uri,
    _retry,
)
from wattwise.types import DEVICE_KINDS, ArchSnapshot, DeviceInfo, PhaseEnergy
from wattwise.units import j_to_wh

if TYPE_CHECKING:  # pragma: no cover
    import pandas

    from wattwise.runfilter import RunFilter

logger = logging.getLogger(__name__)

__all__ = ["APPLICATION_ID", "SCHEMA_VERSION", "STATUSES", "Ledger", "RunRecord"]

STATUSES: tuple[str, ...] = ("running", "finished", "failed", "interrupted")
MAX_TIMELINE_POINTS = 1000
"""Upper bound on the stored power timeline per run and device (a longer series is averaged
into this many equal-count buckets)."""

_DEFAULT_NAME = "wattwise.db"


_RECORD_COLUMNS = (
    "key",
    "run_id",
    "architecture",
    "status",
    "started_at",
    "ended_at",
    "updated_at",
    "host",
    "pid",
    "proc_started_at",
    "boot_id",
    "tags",
    "settings",
    "region",
    "pricing",
    "versions",
    "git_commit",
    "metrics",
    "parent_run_id",
    "epochs",
    "reason",
    "paused_s",
    "scheduler",
)
_CHILD_TABLES = ("devices", "phases", "snapshots", "timeline")

RUNS_COLUMNS = (
    "run_id",
    "architecture",
    "status",
    "started_at",
    "ended_at",
    "duration_s",
    "epochs",
    "energy_j",
    "energy_wh",
    "gpu_energy_j",
    "cpu_energy_j",
    "ram_energy_j",
    "method_mix",
    "flags",
    "host",
    "gpu_name",
    "n_gpus",
    "cpu_name",
    "region",
    "pricing",
    "parent_run_id",
    "tags",
    "user",
    "job_id",
    "params_start",
    "params_end",
)
PHASES_COLUMNS = (
    "run_id",
    "epoch",
    "stage",
    "device_id",
    "kind",
    "device_name",
    "start_s",
    "end_s",
    "duration_s",
    "energy_j",
    "mean_power_w",
    "peak_power_w",
    "method",
    "flags",
)
SNAPSHOTS_COLUMNS = (
    "run_id",
    "epoch",
    "trainable_params",
    "total_params",
    "model_class",
    "label",
    "metrics",
    "train_samples",
)

T = TypeVar("T")


@dataclass
class RunRecord:
    """One run as stored, with its energy summed over every phase and device."""

    run_id: str
    architecture: str
    status: str
    started_at: str
    ended_at: str | None
    duration_s: float | None
    epochs: int
    energy_j: float
    energy_by_kind_j: dict[str, float]
    methods: dict[str, str]
    """device_id -> method (how that device's energy was obtained)."""
    flags: list[str]
    host: str | None
    pid: int | None
    parent_run_id: str | None
    tags: list[str]
    settings: dict[str, Any]
    region: str | None
    pricing: str | None
    metrics: dict[str, float]
    devices: list[dict[str, Any]]
    versions: dict[str, Any]
    git_commit: str | None
    reason: str | None
    energy_by_method_j: dict[str, float] = field(default_factory=dict)
    paused_s: float = 0.0
    """Seconds between ``started_at`` and the end of the run when it was not running (gaps
    before a resume); not part of ``duration_s``."""
    scheduler: dict[str, Any] = field(default_factory=dict)
    """``wattwise.scheduler.collect()`` of the process that began the run ({} when unknown:
    runs recorded before ledger schema 5)."""

    @property
    def user(self) -> str | None:
        """The run's user (SLURM's, else the OS user); None when unknown."""
        return self.scheduler.get("user")

    @property
    def job_id(self) -> str | None:
        """The run's job as ``sacct -j`` takes it, else its pod or torchrun run id."""
        return self.scheduler.get("job_id")

    waiting: bool = False
    """A server ledger's run whose latest writes are still in the local spool (not shipped)."""

    @property
    def energy_wh(self) -> float:
        return j_to_wh(self.energy_j)

    @property
    def measured_kinds(self) -> frozenset[str]:
        """Device kinds (gpu, cpu, ram) some device of this run measured."""
        return frozenset(d.get("kind") for d in self.devices)

    @property
    def method_mix(self) -> str:
        """Share of the energy per method, largest first, e.g. ``counter 93%, estimate 7%``."""
        total = sum(self.energy_by_method_j.values())
        ordered = sorted(self.energy_by_method_j.items(), key=lambda kv: (-kv[1], kv[0]))
        if total <= 0:
            return ", ".join(method for method, _ in ordered)
        return ", ".join(f"{method} {100 * e / total:.0f}%" for method, e in ordered)

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "architecture": self.architecture,
            "status": self.status,
            "epochs": self.epochs,
            "duration_s": self.duration_s,
            "energy_wh": self.energy_wh,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "energy_j": self.energy_j,
            "energy_by_kind_wh": {
                k: j_to_wh(v) if k in self.measured_kinds else None
                for k, v in self.energy_by_kind_j.items()
            },
            "method_mix": self.method_mix,
            "methods": self.methods,
            "flags": self.flags,
            "host": self.host,
            "pid": self.pid,
            "parent_run_id": self.parent_run_id,
            "tags": self.tags,
            "settings": self.settings,
            "region": self.region,
            "pricing": self.pricing,
            # JSON has no NaN or infinity (a diverged loss): those are null.
            "metrics": {k: v if math.isfinite(v) else None for k, v in self.metrics.items()},
            "devices": self.devices,
            "versions": self.versions,
            "git_commit": self.git_commit,
            "reason": self.reason,
            "user": self.user,
            "job_id": self.job_id,
            "scheduler": self.scheduler,
            "waiting": self.waiting,
        }


def default_location() -> str:
    """``$WATTWISE_LEDGER`` if set (a path or a postgresql:// URL), else the ``ledger`` of
    wattwise.toml / ``[tool.wattwise]`` when it sets one, else ``./wattwise.db``."""
    from_env = os.environ.get("WATTWISE_LEDGER", "").strip()
    if from_env:
        return from_env
    from wattwise import config

    settings = config.load()
    if settings.source("ledger").startswith("file:"):
        return str(settings.get("ledger"))
    return _DEFAULT_NAME


def default_path() -> pathlib.Path | str:
    """The default ledger: ``$WATTWISE_LEDGER`` if set, else ``./wattwise.db``; a path, or
    for a server the URL with its password masked."""
    location = parse_location(default_location())
    return location.path if isinstance(location, FileLocation) else location.masked


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


def _iso(moment: datetime | None) -> str:
    if moment is None:
        return _now_iso()
    return moment.astimezone(UTC).isoformat()  # a naive datetime is taken as local time


def _seconds_between(start_iso: str, end_iso: str | None) -> float | None:
    if end_iso is None:
        return None
    return (datetime.fromisoformat(end_iso) - datetime.fromisoformat(start_iso)).total_seconds()


@functools.lru_cache(maxsize=256)
def _join_flags(flags: frozenset[str]) -> str:
    return ",".join(sorted(flags))


def _flags_text(flags: Iterable[str]) -> str:
    """Flags as stored: sorted, comma-joined (``""`` for none)."""
    return _join_flags(flags if isinstance(flags, frozenset) else frozenset(flags))


def _split_flags(text: str | None) -> set[str]:
    return {flag for flag in (text or "").split(",") if flag}


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _text_or_none(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _owner() -> dict[str, Any]:
    """The columns that tie a ``running`` run to this process (read by ``_process_gone``)."""
    pid = os.getpid()
    return {
        "host": _procinfo.host(),
        "pid": pid,
        "proc_started_at": _procinfo.process_start_time(pid),
        "boot_id": _procinfo.boot_id(),
    }


def _check_status(status: str) -> None:
    if status not in STATUSES:
        raise BadInput(f"run status {status!r} is not one of {', '.join(STATUSES)}")


def _epoch_item(item: Sequence[Any]) -> tuple[Any, Any, Any, Any, Any]:
    """``(epoch, phases, snapshot[, metrics, train_samples])`` -> all five, checked."""
    if len(item) not in (3, 5):
        raise BadInput(
            f"epoch item of {len(item)} fields: expected (epoch, phases, snapshot) or "
            "(epoch, phases, snapshot, metrics, train_samples)"
        )
    epoch, phases, snapshot, metrics, train_samples = (*item, None, None)[:5]
    if (metrics is not None or train_samples is not None) and epoch is None:
        raise BadInput("metrics / train_samples belong to a training epoch: epoch=None given")
    if train_samples is not None:
        if (
            isinstance(train_samples, bool)
            or not isinstance(train_samples, numbers.Integral)
            or train_samples < 0
        ):
            raise BadInput(
                f"train_samples={train_samples!r}: expected a whole number >= 0 or None (unknown)"
            )
        train_samples = int(train_samples)
    if metrics is not None:
        metrics = {str(k): float(v) for k, v in metrics.items()}
    return epoch, phases, snapshot, metrics, train_samples


def _downsample(points: Sequence[tuple[float, float]], limit: int) -> list[tuple[float, float]]:
    """At most ``limit`` points: consecutive points averaged in equal-count buckets."""
    if len(points) <= limit:
        return [(float(t), float(p)) for t, p in points]
    out = []
    n = len(points)
    for i in range(limit):
        bucket = points[i * n // limit : (i + 1) * n // limit]
        out.append(
            (
                sum(t for t, _ in bucket) / len(bucket),
                sum(p for _, p in bucket) / len(bucket),
            )
        )
    return out


def _spool_first(method: Callable[..., T]) -> Callable[..., T]:
    """A server ledger reads a run still waiting in its spool from the spool (the server has
    not got its latest writes yet); every other run from the server."""

    @functools.wraps(method)
    def read(self: Ledger, run_id: str | None = None, *args: Any, **kwargs: Any) -> T:
        # The spool is read first, in one read transaction, and the server after it: a run
        # that is not waiting in that state of the spool was shipped before, so the server
        # has it by the time it is read (a shipper may remove a shipped run from the spool
        # at any moment; reads around that would miss it in both places).
        if self._spool is None or not self._spool.waiting():  # (reading creates no spool)
            with self._consistent():
                return method(self, run_id, *args, **kwargs)
        book = self._spool.ledger
        with book._consistent():
            waiting = self._spool.waiting()
            if run_id is not None:
                waiting = []
                try:
                    full = book._resolve(run_id)
                except BadInput:
                    full = None
                if full is not None and full in self._spool.waiting():
                    return getattr(book, method.__name__)(full, *args, **kwargs)
            elif waiting:  # a whole-ledger frame: the waiting runs' rows from the spool
                spooled = getattr(book, method.__name__)(None, *args, **kwargs)
        with self._consistent():
            result = method(self, run_id, *args, **kwargs)
        if waiting:
            import pandas as pd

            result = pd.concat(
                [
                    result[~result["run_id"].isin(waiting)],
                    spooled[spooled["run_id"].isin(waiting)],
                ],
                ignore_index=True,
            )
        return result

    return read


def _spooled(method: Callable[..., T]) -> Callable[..., T]:
    """A run write of a server ledger goes to its local spool (see :mod:`.spool`)."""

    @functools.wraps(method)
    def write(self: Ledger, *args: Any, **kwargs: Any) -> T:
        if self._spool is None:
            return method(self, *args, **kwargs)
        return self._spool.write(method.__name__, args, kwargs)

    return write


class Ledger:
    """A store of measured runs: a SQLite file, or a PostgreSQL database reached through a
    local spool. See the package docstring for the guarantees."""

    def __init__(self, path: str | os.PathLike[str] | None = None):
        self._setup(parse_location(default_location() if path is None else path), spooled=True)

    @classmethod
    def _direct(cls, location: str | FileLocation | PgLocation) -> Ledger:
        """A Ledger whose writes go straight to the server (no spool): sync, merge, shipper."""
        book = cls.__new__(cls)
        book._setup(parse_location(location), spooled=False)
        return book

    def _setup(self, location: FileLocation | PgLocation, *, spooled: bool) -> None:
        self.location = location
        self._spool: Any = None
        self._queue = False  # a spool: run writes also mark the run for shipping
        if isinstance(location, PgLocation):
            from wattwise.ledger.postgres import PgBackend

            self.path: Any = location.masked  # what is shown: the password masked
            self._backend: Any = PgBackend(location)
            if spooled:
                from wattwise.ledger.spool import Spool

                self._spool = Spool(location)
        else:
            self.path = location.path
            self._backend = SqliteBackend(location.path)
        self.name = self._backend.name
        self._backend.check()
        self._lock = threading.RLock()
        self._reading = 0  # depth of _consistent() on the thread holding _lock
        self._conn: Any = None
        self._conn_read_only = False
        self._conn_pid = 0
        self._finalizer: weakref.finalize | None = None

    @property
    def is_server(self) -> bool:
        """Whether this ledger is a PostgreSQL database (else a SQLite file)."""
        return isinstance(self.location, PgLocation)

    @property
    def location_text(self) -> str:
        """The location as given (a server URL keeps its password: hand it to no output)."""
        loc = self.location
        return loc.url if isinstance(loc, PgLocation) else str(loc.path)

    def __repr__(self) -> str:
        return f"Ledger({self.name!r})"

    # Pickling / deep copies carry the location only; the copy opens its own connection.
    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.location_text, "spooled": self._spool is not None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._setup(parse_location(state["path"]), spooled=state.get("spooled", True))

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (a later call reopens it). A server ledger first tries, for a
        bounded time, to ship what its spool holds (what is left waits for `runs sync`)."""
        if self._spool is not None:
            self._spool.close()
        with self._lock:
            if self._finalizer is not None:
                self._finalizer()
            self._conn = None
            self._conn_read_only = False
            self._finalizer = None

    # ------------------------------------------------------------------ connection and schema

    def _connection(self, *, read_only_ok: bool = False) -> Any:
        """The connection, opened on first use. ``read_only_ok``: a ledger whose file or
        folder cannot be written is opened for reading instead of raising (reads only)."""
        with self._lock:
            if self._conn is not None and self._conn_pid != os.getpid():
                # A forked child (e.g. a DataLoader worker) must not use its parent's
                # connection: leave it to the parent and open one of its own.
                if self._finalizer is not None:
                    self._finalizer.detach()
                self._conn = self._finalizer = None
            if self._conn is not None and self._conn_read_only and not read_only_ok:
                self.close()  # a write after reads of an unwritable file: try writing again
            if self._conn is None:
                conn, read_only = self._backend.open_read_write(read_only_ok)
                self._conn, self._conn_read_only = conn, read_only
                self._conn_pid = os.getpid()
                self._finalizer = weakref.finalize(self, self._conn.close)
            return self._conn

    def _write(self, action: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``action`` in one short write transaction, retried while the file is locked."""

        def attempt() -> T:
            conn = self._connection()
            conn.execute(self._backend.begin_write)
            try:
                result = action(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return result

        with self._lock:
            return self._backend.retry(attempt)

    @contextlib.contextmanager
    def _consistent(self) -> Iterator[None]:
        """Every read inside (``_read``, ``_read_tx``, on this thread) sees one state of the
        ledger, whatever other processes commit meanwhile: one read transaction (SQLite: a
        deferred BEGIN, whose first SELECT takes the WAL snapshot; PostgreSQL: REPEATABLE
        READ, where READ COMMITTED gives each statement its own). Nests; no writes inside."""
        with self._lock:
            outer = self._reading or (self._conn is not None and self._conn.in_transaction)
            if outer or (self._conn is None and not self._backend.exists()):
                self._reading += 1  # an outer transaction holds (or no file: nothing to read)
                try:
                    yield
                finally:
                    self._reading -= 1
                return
            conn = self._connection(read_only_ok=True)
            self._backend.retry(lambda: conn.execute(self._backend.begin_read))
            self._reading = 1
            try:
                yield
            finally:
                self._reading = 0
                if conn.in_transaction:
                    conn.execute("ROLLBACK")

    def _read_tx(self, action: Callable[[Any], T]) -> T:
        """Run ``action`` on the connection inside :meth:`_consistent`."""
        with self._consistent():
            conn = self._connection(read_only_ok=True)
            return self._backend.retry(lambda: action(conn))

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            if self._conn is None and not self._backend.exists():
                return []  # reading creates no file: a ledger not written yet is empty
            conn = self._connection(read_only_ok=True)
            return self._backend.retry(lambda: conn.execute(sql, params).fetchall())

    # ------------------------------------------------------------------ writing

    def ensure_writable(self) -> None:
        """Open the ledger for writing now (creating it, schema included), so that one that
        cannot be written is refused (BadInput) before work that depends on writing it."""
        if self._spool is not None:
            self._spool.ledger.ensure_writable()  # training writes go to the spool
            return
        with self._lock:
            self._connection()

    @_spooled
    def begin_run(
        self,
        *,
        architecture: str,
        run_id: str | None = None,
        parent_run_id: str | None = None,
        tags: Sequence[str] = (),
        settings: dict[str, Any] | None = None,
        region: str | None = None,
        pricing: str | None = None,
        devices: Sequence[DeviceInfo] = (),
        started_at: datetime | None = None,
        versions: dict[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
    ) -> str:
        """Record a new run with status ``running``; returns its id (a new UUID by default).

        ``scheduler``: the run's scheduler metadata; None (default) collects this process's
        (``wattwise.scheduler.collect()``), as host and pid are this process's. Its ``user`` and
        ``job_id`` are also stored in indexed columns for filtering."""
        if not isinstance(architecture, str) or not architecture.strip():
            raise BadInput(f"architecture {architecture!r} must be a non-empty label")
        if scheduler is None:
            from wattwise import scheduler as _scheduler

            scheduler = _scheduler.collect()
        if not isinstance(scheduler, Mapping):
            raise BadInput(f"scheduler {scheduler!r} must be a mapping (scheduler.collect())")
        scheduler = json.loads(_dumps(scheduler))  # stored as read back: JSON values only
        run_id = run_id or str(uuid.uuid4())
        tags = [tags] if isinstance(tags, str) else [str(tag) for tag in tags]
        started = _iso(started_at)
        row = {
            "run_id": run_id,
            "architecture": architecture,
            "status": "running",
            "started_at": started,
            "updated_at": started,
            **_owner(),
            "tags": _dumps(tags),
            "settings": _dumps(settings or {}),
            "region": region,
            "pricing": pricing,
            "versions": _dumps({**_procinfo.versions(), **(versions or {})}),
            "git_commit": _procinfo.git_commit(),
            "parent_run_id": parent_run_id,
            "scheduler": _dumps(scheduler),
            "user_name": _text_or_none(scheduler.get("user")),
            "job_id": _text_or_none(scheduler.get("job_id")),
        }
        columns = ", ".join(row)
        marks = ", ".join(f":{name}" for name in row)

        def write(conn: sqlite3.Connection) -> None:
            if conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone():
                raise BadInput(
                    f"run id {run_id!r} is already in ledger {self.name!r}; "
                    "use reopen_run() to continue it or give a new id"
                )
            run_key = conn.execute(
                f"INSERT INTO runs ({columns}) VALUES ({marks}) RETURNING key", row
            ).fetchone()[0]
            self._put_devices(conn, run_key, devices)
            self._mark_for_shipping(conn, run_id)

        self._write(write)
        return run_id

    @staticmethod
    def _put_devices(conn: sqlite3.Connection, run_key: int, devices: Sequence[DeviceInfo]) -> None:
        conn.executemany(
            "INSERT INTO devices (run_key, device_id, kind, name, uuid, method, details, flags) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_key, device_id) DO UPDATE SET "
            "kind = excluded.kind, name = excluded.name, uuid = excluded.uuid, "
            "method = excluded.method, details = excluded.details, flags = excluded.flags",
            [
                (
                    run_key,
                    d.device_id,
                    d.kind,
                    d.name,
                    d.uuid,
                    d.method,
                    _dumps(d.details),
                    _flags_text(d.flags),
                )
                for d in devices
            ],
        )

    @staticmethod
    def _device_key(conn: sqlite3.Connection, run_key: int, device_id: str, kind: str) -> int:
        """Key of a run's device, added (kind only) when its DeviceInfo was never given."""
        conn.execute(
            "INSERT INTO devices (run_key, device_id, kind) VALUES (?, ?, ?) "
            "ON CONFLICT (run_key, device_id) DO NOTHING",
            (run_key, device_id, kind),
        )
        return conn.execute(
            "SELECT key FROM devices WHERE run_key = ? AND device_id = ?", (run_key, device_id)
        ).fetchone()[0]

    def _touch(
        self,
        conn: sqlite3.Connection,
        run_id: str,
        assignments: str = "",
        params: tuple = (),
        *,
        now: str | None = None,
    ) -> int:
        """Set ``updated_at`` (``now``, default the current time) and ``assignments`` of a run;
        its key. BadInput if unknown."""
        row = conn.execute("SELECT key FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise BadInput(f"no run {run_id!r} in ledger {self.name!r}")
        sql = f"UPDATE runs SET updated_at = ?{', ' + assignments if assignments else ''} "
        conn.execute(sql + "WHERE key = ?", (now or _now_iso(), *params, row[0]))
        self._mark_for_shipping(conn, run_id)
        return row[0]

    def _mark_for_shipping(self, conn: Any, run_id: str) -> None:
        """In a spool, in the write's own transaction: the run has something to ship."""
        if self._queue:
            # a fresh random mark each write, never a counter: a mark cleared by one shipper and
            # made again by the next write must not equal the mark an older shipper still holds,
            # or that shipper's settle would clear the new one and the write would never ship
            conn.execute(
                "INSERT INTO ship_queue (run_id, seq) VALUES (?, abs(random())) "
                "ON CONFLICT (run_id) DO UPDATE SET seq = abs(random())",
                (run_id,),
            )

    def add_phases(
        self,
        run_id: str,
        phases: Sequence[PhaseEnergy],
        *,
        epoch: int | None,
        snapshot: ArchSnapshot | None = None,
        epochs_completed: int | None = None,
        devices: Sequence[DeviceInfo] = (),
        settle: Iterable[tuple[int | None, PhaseEnergy]] = (),
        metrics: dict[str, float] | None = None,
        train_samples: int | None = None,
    ) -> None:
        """Commit the phases of one epoch (and its snapshot) in a single transaction.

        ``metrics`` (the scalar metrics at the epoch's end) and ``train_samples`` (training
        samples the epoch processed, None: unknown) are stored with the epoch's snapshot row;
        they need an ``epoch``. ``settle`` as in :meth:`add_epochs`.
        """
        self.add_epochs(
            run_id,
            [(epoch, phases, snapshot, metrics, train_samples)],
            epochs_completed=epochs_completed,
            devices=devices,
            settle=settle,
        )

    @_spooled
    def add_epochs(
        self,
        run_id: str,
        epochs: Iterable[tuple[Any, ...]],
        *,
        epochs_completed: int | None = None,
        devices: Sequence[DeviceInfo] = (),
        settle: Iterable[tuple[int | None, PhaseEnergy]] = (),
    ) -> None:
        """Commit many ``(epoch, phases, snapshot)`` at once, in a single transaction.

        An item may carry two more fields, ``(epoch, phases, snapshot, metrics, train_samples)``
        (see :meth:`add_phases`). For recordings written after the fact (a replayed trace, an
        import); a live training commits each epoch as it ends with :meth:`add_phases`.
        ``settle``: ``(epoch, phase)`` whose row, when one is stored with the same device,
        stage, start and end (a provisional row written at an epoch end), gets the new figures;
        otherwise it is added.
        """
        epochs = [_epoch_item(item) for item in epochs]
        settle = list(settle)
        for _, phases, *_ in [*epochs, *((e, [p], None) for e, p in settle)]:
            for p in phases:
                if not math.isfinite(p.energy_j):
                    raise BadInput(
                        f"phase {p.name!r} of device {p.device_id!r} has energy_j={p.energy_j!r}; "
                        "expected a finite number of joules"
                    )

        def write(conn: sqlite3.Connection) -> None:
            if epochs_completed is None:
                run_key = self._touch(conn, run_id)
            else:
                run_key = self._touch(conn, run_id, "epochs = ?", (epochs_completed,))
            self._put_devices(conn, run_key, devices)
            device_keys: dict[str, int] = {}
            for _, phases, *_ in [*epochs, *((e, [p], None) for e, p in settle)]:
                for p in phases:
                    if p.device_id not in device_keys:
                        device_keys[p.device_id] = self._device_key(
                            conn, run_key, p.device_id, p.kind
                        )

            def row(epoch: int | None, p: PhaseEnergy) -> tuple:
                return (
                    epoch,
                    p.energy_j,
                    p.mean_power_w,
                    p.peak_power_w,
                    p.method,
                    _flags_text(p.flags),
                    run_key,
                    device_keys[p.device_id],
                    p.name,
                    p.start_s,
                    p.end_s,
                )

            rows = [row(epoch, p) for epoch, phases, *_ in epochs for p in phases]
            for epoch, p in settle:
                updated = conn.execute(
                    "UPDATE phases SET epoch = ?, energy_j = ?, mean_power_w = ?, "
                    "peak_power_w = ?, method = ?, flags = ? WHERE run_key = ? AND "
                    "device_key = ? AND stage = ? AND start_s = ? AND end_s = ?",
                    row(epoch, p),
                ).rowcount
                if not updated:
                    rows.append(row(epoch, p))
            conn.executemany(
                "INSERT INTO phases (epoch, energy_j, mean_power_w, peak_power_w, method, flags, "
                "run_key, device_key, stage, start_s, end_s) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            conn.executemany(
                "INSERT INTO snapshots (run_key, epoch, trainable_params, "
                "total_params, model_class, label, metrics, train_samples) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_key, epoch) DO UPDATE SET "
                "trainable_params = excluded.trainable_params, total_params = "
                "excluded.total_params, model_class = excluded.model_class, label = "
                "excluded.label, metrics = excluded.metrics, train_samples = "
                "excluded.train_samples",
                [
                    (
                        run_key,
                        epoch,
                        *(
                            (snap.trainable_params, snap.total_params, snap.model_class, snap.label)
                            if snap is not None
                            else (None, None, None, None)
                        ),
                        None if metrics is None else _dumps(metrics),
                        train_samples,
                    )
                    for epoch, _, snap, metrics, train_samples in epochs
                    if snap is not None or metrics is not None or train_samples is not None
                ],
            )

        self._write(write)

    @_spooled
    def add_timeline(
        self,
        run_id: str,
        device_id: str,
        points: Sequence[tuple[float, float]],
        *,
        kind: str | None = None,
    ) -> None:
        """Append ``(t_s, power_w)`` points; the stored series stays under MAX_TIMELINE_POINTS.

        ``kind`` is needed only for a device the run has no DeviceInfo or phase for yet; it
        defaults to the part of ``device_id`` before the colon (``gpu:...`` -> ``gpu``).
        """
        kind = kind or device_id.split(":", 1)[0]

        def write(conn: sqlite3.Connection) -> None:
            run_key = self._touch(conn, run_id)
            device_key = self._device_key(conn, run_key, device_id, kind)
            row = conn.execute(
                "SELECT points FROM timeline WHERE run_key = ? AND device_key = ?",
                (run_key, device_key),
            ).fetchone()
            merged = [tuple(p) for p in json.loads(row[0])] if row else []
            merged.extend((float(t), float(w)) for t, w in points)
            merged.sort()
            conn.execute(
                "INSERT INTO timeline (run_key, device_key, points) VALUES (?, ?, ?) "
                "ON CONFLICT (run_key, device_key) DO UPDATE SET points = excluded.points",
                (run_key, device_key, json.dumps(_downsample(merged, MAX_TIMELINE_POINTS))),
            )

        self._write(write)

    @_spooled
    def finish_run(
        self,
        run_id: str,
        *,
        status: str = "finished",
        metrics: dict[str, float] | None = None,
        reason: str | None = None,
        ended_at: datetime | None = None,
    ) -> None:
        """Close a run: its status, end time, final metrics and (optionally) why it ended."""
        _check_status(status)
        assignments = "status = ?, ended_at = ?, reason = COALESCE(?, reason)"
        params: tuple = (status, _iso(ended_at), reason)
        if metrics is not None:
            assignments += ", metrics = ?"
            params += (_dumps({k: float(v) for k, v in metrics.items()}),)
        self._write(lambda conn: self._touch(conn, run_id, assignments, params))

    @_spooled
    def reopen_run(self, run_id: str) -> None:
        """Continue a run (resume): status back to ``running``, owned by this process.

        The time since the run was last active (its end, else its last write: a crashed
        process's last commit) is added to its ``paused_s``, so that it is not counted in its
        duration.
        """
        owner = _owner()
        assignments = (
            "status = 'running', ended_at = NULL, reason = NULL, paused_s = paused_s + ?, "
            + ", ".join(f"{column} = ?" for column in owner)
        )

        def write(conn: sqlite3.Connection) -> None:
            row = conn.execute(
                "SELECT COALESCE(ended_at, updated_at, started_at) FROM runs WHERE run_id = ?",
                (run_id,),
            ).fetchone()
            now = _now_iso()
            gap_s = 0.0 if row is None else max(0.0, _seconds_between(row[0], now) or 0.0)
            self._touch(conn, run_id, assignments, (gap_s, *owner.values()), now=now)

        self._write(write)

    @_spooled
    def set_status(self, run_id: str, status: str, reason: str | None = None) -> None:
        _check_status(status)
        self._write(
            lambda conn: self._touch(
                conn, run_id, "status = ?, reason = COALESCE(?, reason)", (status, reason)
            )
        )

    @_spooled
    def update_settings(self, run_id: str, values: Mapping[str, Any]) -> None:
        """Merge ``values`` into a run's ``settings`` (its other keys kept), in one transaction.

        For what is learned while a run goes on (EnergyCallback's steps per epoch and peak GPU
        memory). Values are stored as ``begin_run`` stores settings (JSON, anything else as
        its text); BadInput if the run is unknown.
        """
        if not isinstance(values, Mapping):
            raise BadInput(f"settings {values!r} must be a mapping of names to JSON values")
        new = {str(name): value for name, value in values.items()}
        text = _dumps(new)  # serialised outside the write lock

        def write(conn: sqlite3.Connection) -> None:
            run_key = self._touch(conn, run_id)
            (stored,) = conn.execute(
                "SELECT settings FROM runs WHERE key = ?", (run_key,)
            ).fetchone()
            merged = {**json.loads(stored or "{}"), **json.loads(text)}
            conn.execute("UPDATE runs SET settings = ? WHERE key = ?", (_dumps(merged), run_key))

        self._write(write)

    def remove(self, run_id: str) -> None:
        """Delete a run (id or unique prefix) and everything recorded for it (a server
        ledger's run: on the server and in this folder's spool)."""
        if self._spool is not None:
            book = self._spool_book_of(run_id)
            if book is not None:  # not shipped yet: it must not be shipped after all
                full_id = book._resolve(run_id)
                book.remove(full_id)
                book._write(
                    lambda conn: conn.execute("DELETE FROM ship_queue WHERE run_id = ?", (full_id,))
                )
                if not self._read("SELECT 1 FROM runs WHERE run_id = ?", (full_id,)):
                    return
                run_id = full_id
        full_id = self._resolve(run_id)

        def write(conn: sqlite3.Connection) -> None:
            run_key = self._touch(conn, full_id)
            for table in _CHILD_TABLES:
                conn.execute(f"DELETE FROM {table} WHERE run_key = ?", (run_key,))
            conn.execute("DELETE FROM runs WHERE key = ?", (run_key,))

        self._write(write)

    def merge(self, other_path: str | os.PathLike[str]) -> tuple[int, int]:
        """Import the runs of another ledger that this one lacks; returns (added, skipped).

        The other ledger (a file or a server URL) is checked first and only read (a file is
        copied and the copy upgraded to this schema); runs already here, by id, are skipped, so
        merging twice adds nothing the second time. A server ledger takes merged runs directly
        (not through its spool).
        """
        from wattwise.ledger.copy import copy_runs

        source = parse_location(other_path)
        if isinstance(source, PgLocation):
            with Ledger._direct(source) as other_book, Ledger._direct(self.location) as target:
                return copy_runs(other_book, target)
        other = source.path
        if not other.is_file():
            raise LedgerFormatError(f"no ledger file at {str(other)!r}; expected a wattwise ledger")
        if _inspect(other) is None:
            return (0, 0)  # an empty file holds no runs
        with tempfile.TemporaryDirectory(prefix="wattwise-merge-") as tmp:
            copy_path = pathlib.Path(tmp) / "other.db"
            src = sqlite3.connect(_read_only_uri(other), uri=True, timeout=_BUSY_TIMEOUT_S)
            dst = sqlite3.connect(str(copy_path))
            try:
                _retry(lambda: src.backup(dst))
            finally:
                src.close()
                dst.close()
            with Ledger(copy_path) as copy:
                copy._connection()  # migrates the copy to this schema version
                if self.is_server:
                    with Ledger._direct(self.location) as target:
                        return copy_runs(copy, target)
            with self._lock:
                conn = self._connection()
                conn.execute("ATTACH DATABASE ? AS other", (str(copy_path),))
                try:
                    return self._write(self._copy_new_runs)
                finally:
                    conn.execute("DETACH DATABASE other")

    @staticmethod
    def _copy_new_runs(conn: sqlite3.Connection) -> tuple[int, int]:
        """Copy the runs of ``other`` that ``main`` lacks, re-keying their rows."""

        def columns(table: str, alias: str) -> str:
            keys = {"key", "id", "run_key", "device_key"}
            info = conn.execute(f"PRAGMA main.table_info({table})").fetchall()
            return ", ".join(f"{alias}{row[1]}" for row in info if row[1] not in keys)

        total = conn.execute("SELECT count(*) FROM other.runs").fetchone()[0]
        conn.execute(
            "CREATE TEMP TABLE merge_runs AS SELECT key AS other_key, run_id FROM other.runs "
            "WHERE run_id NOT IN (SELECT run_id FROM main.runs)"
        )
        added = conn.execute("SELECT count(*) FROM temp.merge_runs").fetchone()[0]
        for sql in (
            f"INSERT INTO main.runs ({columns('runs', '')}) SELECT {columns('runs', '')} "
            "FROM other.runs WHERE key IN (SELECT other_key FROM temp.merge_runs) ORDER BY key",
            "CREATE TEMP TABLE run_map AS SELECT t.other_key, m.key AS main_key "
            "FROM temp.merge_runs t JOIN main.runs m ON m.run_id = t.run_id",
            f"INSERT INTO main.devices (run_key, {columns('devices', '')}) "
            f"SELECT r.main_key, {columns('devices', 'd.')} FROM other.devices d "
            "JOIN temp.run_map r ON r.other_key = d.run_key ORDER BY d.key",
            "CREATE TEMP TABLE device_map AS SELECT d.key AS other_key, m.key AS main_key "
            "FROM other.devices d JOIN temp.run_map r ON r.other_key = d.run_key "
            "JOIN main.devices m ON m.run_key = r.main_key AND m.device_id = d.device_id",
            f"INSERT INTO main.phases (run_key, device_key, {columns('phases', '')}) "
            f"SELECT r.main_key, v.main_key, {columns('phases', 'p.')} FROM other.phases p "
            "JOIN temp.run_map r ON r.other_key = p.run_key "
            "JOIN temp.device_map v ON v.other_key = p.device_key ORDER BY p.id",
            f"INSERT INTO main.snapshots (run_key, {columns('snapshots', '')}) "
            f"SELECT r.main_key, {columns('snapshots', 's.')} FROM other.snapshots s "
            "JOIN temp.run_map r ON r.other_key = s.run_key",
            f"INSERT INTO main.timeline (run_key, device_key, {columns('timeline', '')}) "
            f"SELECT r.main_key, v.main_key, {columns('timeline', 't.')} FROM other.timeline t "
            "JOIN temp.run_map r ON r.other_key = t.run_key "
            "JOIN temp.device_map v ON v.other_key = t.device_key",
            "DROP TABLE temp.merge_runs",
            "DROP TABLE temp.run_map",
            "DROP TABLE temp.device_map",
        ):
            conn.execute(sql)
        return added, total - added

    # ------------------------------------------------------------------ reading

    def _resolve(self, run_id_or_prefix: str) -> str:
        query = str(run_id_or_prefix).strip()
        if not query:
            raise BadInput("run id '' is empty; give a run id or a unique prefix of one")
        rows = self._read(
            "SELECT run_id FROM runs WHERE substr(run_id, 1, ?) = ? ORDER BY run_id",
            (len(query), query),
        )
        ids = [row[0] for row in rows]
        if query in ids:
            return query
        if len(ids) == 1:
            return ids[0]
        if not ids:
            raise BadInput(
                f"no run {query!r} in ledger {self.name!r}; "
                "give a run id or a unique prefix (see `wattwise runs`)"
            )
        raise BadInput(
            f"run prefix {query!r} is ambiguous in ledger {self.name!r}: it matches "
            f"{', '.join(ids[:5])}{' ...' if len(ids) > 5 else ''}; give more characters"
        )

    def _spool_book_of(self, run_id: str) -> Ledger | None:
        """The spool's Ledger if ``run_id`` (or a unique prefix) is a run waiting there."""
        waiting = self._spool.waiting()
        if not waiting:
            return None
        book = self._spool.ledger
        try:
            full = book._resolve(run_id)
        except BadInput:
            return None
        return book if full in waiting else None

    @property
    def spool_path(self) -> pathlib.Path | None:
        """The local spool of a server ledger (None for a file)."""
        return None if self._spool is None else self._spool.path

    def waiting_runs(self) -> list[str]:
        """Ids of runs whose latest writes wait in this server ledger's spool ([] for a file)."""
        return [] if self._spool is None else sorted(self._spool.waiting())

    def sync(self) -> tuple[int, int]:
        """Ship what this server ledger's spool holds now; (shipped, still waiting).

        ServerError (a BadInput, exit 2) when the server cannot be used; nothing is lost."""
        if self._spool is None:
            return (0, 0)
        return self._spool.ship()

    @_spool_first
    def get_run(self, run_id_or_unique_prefix: str) -> RunRecord:
        """One run by id or unique id prefix; BadInput if unknown or ambiguous."""
        return self._records(self._resolve(run_id_or_unique_prefix))[0]

    def list_runs(self, filter: RunFilter | None = None) -> list[RunRecord]:
        """Every run, oldest first (no pandas needed); with a ``RunFilter``, those it matches
        (narrowed in SQL on indexed columns, then checked one by one for the status, which
        depends on whether a running run's process is still there). A server ledger's runs
        waiting in its spool come from the spool, with ``waiting=True``."""
        if self._spool is None:
            return self._filtered_records(filter)
        book = self._spool.ledger  # first, in one state: see _spool_first
        with book._consistent():
            waiting = set(self._spool.waiting())
            spooled = [
                dataclasses.replace(rec, waiting=True)
                for rec in (book._filtered_records(filter) if waiting else [])
                if rec.run_id in waiting
            ]
        records = self._filtered_records(filter)
        if not waiting:
            return records
        mixed = [rec for rec in records if rec.run_id not in waiting] + spooled
        return sorted(mixed, key=lambda rec: (rec.started_at, rec.run_id))

    def _filtered_records(self, filter: RunFilter | None) -> list[RunRecord]:
        with self._consistent():
            if filter is None or filter.empty:
                return self._records(None)
            return [rec for rec in self._records(None, filter) if filter.matches(rec)]

    def _records(self, run_id: str | None, run_filter: RunFilter | None = None) -> list[RunRecord]:
        if run_id:
            where_run, where_child = "WHERE run_id = ?", "WHERE run_key = ?"
            key_rows = self._read("SELECT key FROM runs WHERE run_id = ?", (run_id,))
            params: tuple = (key_rows[0][0],) if key_rows else (-1,)
            run_params: tuple = (run_id,)
        elif run_filter is not None:
            condition, values = run_filter.sql()
            where_run = f"WHERE {condition}"
            where_child = f"WHERE run_key IN (SELECT key FROM runs WHERE {condition})"
            params = run_params = tuple(values)
        else:
            where_run, where_child, params, run_params = "", "", (), ()
        runs = [
            dict(zip(_RECORD_COLUMNS, row, strict=True))
            for row in self._read(
                f"SELECT {', '.join(_RECORD_COLUMNS)} FROM runs {where_run} "
                "ORDER BY started_at, run_id",
                run_params,
            )
        ]
        devices = self._read(
            "SELECT key, run_key, device_id, kind, name, uuid, method, details, flags "
            f"FROM devices {where_child} ORDER BY run_key, device_id",
            params,
        )
        energy = self._read(
            "SELECT run_key, device_key, method, SUM(energy_j), GROUP_CONCAT(DISTINCT flags) "
            f"FROM phases {where_child} GROUP BY run_key, device_key, method",
            params,
        )
        by_run: dict[int, dict[str, Any]] = {
            row["key"]: {
                "kind": dict.fromkeys(DEVICE_KINDS, 0.0),
                "method": {},
                "device_method": {},
                "flags": set(),
                "devices": [],
            }
            for row in runs
        }
        device_of: dict[int, tuple[str, str]] = {}
        for key, run_key, device_id, kind, name, dev_uuid, method, details, flags in devices:
            device_of[key] = (device_id, kind)
            agg = by_run.get(run_key)
            if agg is None:
                continue
            agg["devices"].append(
                {
                    "device_id": device_id,
                    "kind": kind,
                    "name": name,
                    "uuid": dev_uuid,
                    "method": method,
                    "details": json.loads(details),
                    "flags": sorted(_split_flags(flags)),
                }
            )
            agg["flags"].update(_split_flags(flags))
        for run_key, device_key, method, energy_j, flags in energy:
            agg = by_run.get(run_key)
            if agg is None:
                continue
            device_id, kind = device_of[device_key]
            agg["kind"][kind] = agg["kind"].get(kind, 0.0) + energy_j
            agg["method"][method] = agg["method"].get(method, 0.0) + energy_j
            best = agg["device_method"].get(device_id)
            if best is None or energy_j > best[1]:
                agg["device_method"][device_id] = (method, energy_j)
            agg["flags"].update(_split_flags(flags))
        alive: dict[tuple[int, float | None], bool] = {}
        records = []
        for row in runs:
            rid, status = row["run_id"], row["status"]
            started, ended = row["started_at"], row["ended_at"]
            agg = by_run[row["key"]]
            if status == "running" and self._process_gone(row, alive):
                status = "interrupted"
            if ended is not None:
                span = _seconds_between(started, ended)
            elif status == "interrupted":
                span = _seconds_between(started, row["updated_at"])
            else:
                span = _seconds_between(started, _now_iso())
            paused = float(row["paused_s"] or 0.0)
            duration = None if span is None else max(0.0, span - paused)
            methods = {device_id: m for device_id, (m, _) in agg["device_method"].items()}
            methods.update({d["device_id"]: d["method"] for d in agg["devices"] if d["method"]})
            records.append(
                RunRecord(
                    run_id=rid,
                    architecture=row["architecture"],
                    status=status,
                    started_at=started,
                    ended_at=ended,
                    duration_s=duration,
                    epochs=row["epochs"],
                    energy_j=sum(agg["kind"].values()),
                    energy_by_kind_j=agg["kind"],
                    methods=methods,
                    flags=sorted(agg["flags"]),
                    host=row["host"],
                    pid=row["pid"],
                    parent_run_id=row["parent_run_id"],
                    tags=json.loads(row["tags"]),
                    settings=json.loads(row["settings"]),
                    region=row["region"],
                    pricing=row["pricing"],
                    metrics=json.loads(row["metrics"]),
                    devices=agg["devices"],
                    versions=json.loads(row["versions"]),
                    git_commit=row["git_commit"],
                    reason=row["reason"],
                    energy_by_method_j=agg["method"],
                    paused_s=paused,
                    scheduler=json.loads(row["scheduler"] or "{}"),
                )
            )
        return records

    @staticmethod
    def _process_gone(row: dict[str, Any], cache: dict[tuple[int, float | None], bool]) -> bool:
        """Whether the process that owns a running run is known to be gone (same host only)."""
        if row["host"] != _procinfo.host() or row["pid"] is None:
            return False  # another machine's process: we cannot tell
        current_boot = _procinfo.boot_id()
        if row["boot_id"] and current_boot and row["boot_id"] != current_boot:
            return True  # the host rebooted since
        key = (row["pid"], row["proc_started_at"])
        if key not in cache:
            cache[key] = not _procinfo.process_alive(*key)
        return cache[key]

    def runs(self, filter: RunFilter | None = None) -> pandas.DataFrame:
        """One row per run (columns: RUNS_COLUMNS plus ``metric/<name>`` per final metric);
        with a ``RunFilter``, the runs it matches."""
        import pandas as pd

        records = self.list_runs(filter)
        params = self._first_last_params(filter)
        if self.waiting_runs():
            params.update(self._spool.ledger._first_last_params(filter))
        rows = []
        metric_names: set[str] = set()
        for rec in records:
            gpus = [d for d in rec.devices if d["kind"] == "gpu"]
            cpus = [d for d in rec.devices if d["kind"] == "cpu"]
            params_start, params_end = params.get(rec.run_id, (None, None))
            row = {
                "run_id": rec.run_id,
                "architecture": rec.architecture,
                "status": rec.status,
                "started_at": rec.started_at,
                "ended_at": rec.ended_at,
                "duration_s": rec.duration_s,
                "epochs": rec.epochs,
                "energy_j": rec.energy_j,
                "energy_wh": rec.energy_wh,
                # a kind no device measured is missing (NaN), never a silent 0 J
                **{
                    f"{kind}_energy_j": rec.energy_by_kind_j[kind]
                    if kind in rec.measured_kinds
                    else None
                    for kind in ("gpu", "cpu", "ram")
                },
                "method_mix": rec.method_mix,
                "flags": ",".join(rec.flags),
                "host": rec.host,
                "gpu_name": ", ".join(sorted({d["name"] for d in gpus if d["name"]})) or None,
                "n_gpus": len(gpus),
                "cpu_name": ", ".join(sorted({d["name"] for d in cpus if d["name"]})) or None,
                "region": rec.region,
                "pricing": rec.pricing,
                "parent_run_id": rec.parent_run_id,
                "tags": ",".join(rec.tags),
                "user": rec.user,
                "job_id": rec.job_id,
                "params_start": params_start,
                "params_end": params_end,
            }
            for name, value in rec.metrics.items():
                row[f"metric/{name}"] = value
                metric_names.add(f"metric/{name}")
            rows.append(row)
        frame = pd.DataFrame(rows, columns=[*RUNS_COLUMNS, *sorted(metric_names)])
        for column in ("params_start", "params_end"):
            frame[column] = frame[column].astype("Int64")
        return frame

    def _first_last_params(self, filter: RunFilter | None = None) -> dict[str, tuple[Any, Any]]:
        """run_id -> trainable parameters at its first and last snapshot (NULL epochs first,
        as SQLite orders them, on both backends), of the runs ``filter`` narrows to."""
        condition, values = ("1 = 1", []) if filter is None else filter.sql("r.")
        return {
            rid: (first, last)
            for rid, first, last in self._read(
                "SELECT r.run_id, "
                "(SELECT trainable_params FROM snapshots WHERE run_key = r.key "
                "ORDER BY epoch IS NOT NULL, epoch LIMIT 1), "
                "(SELECT trainable_params FROM snapshots WHERE run_key = r.key "
                "ORDER BY epoch IS NOT NULL DESC, epoch DESC LIMIT 1) "
                f"FROM runs r WHERE {condition}",
                values,
            )
        }

    def _child_filter(
        self, run_id: str | None, alias: str = "", run_filter: RunFilter | None = None
    ) -> tuple[str, tuple]:
        """SQL condition on ``run_key`` selecting one run (by id or prefix), the runs a filter
        narrows to in SQL (a superset for running/interrupted), or every run."""
        if run_id is None:
            if run_filter is None or run_filter.empty:
                return "1 = 1", ()
            condition, values = run_filter.sql()
            return f"{alias}run_key IN (SELECT key FROM runs WHERE {condition})", tuple(values)
        return f"{alias}run_key = (SELECT key FROM runs WHERE run_id = ?)", (self._resolve(run_id),)

    @_spool_first
    def phases(
        self,
        run_id: str | None = None,
        filter: RunFilter | None = None,
    ) -> pandas.DataFrame:
        """Energy per epoch x stage x device (columns: PHASES_COLUMNS), in recording order;
        of one run, or of the runs ``filter`` selects in SQL (it may include running runs
        whose process is gone: ``list_runs(filter)`` says which runs match)."""
        import pandas as pd

        condition, params = self._child_filter(run_id, run_filter=filter)
        rows = self._read(
            "SELECT run_key, epoch, stage, device_key, start_s, end_s, energy_j, mean_power_w, "
            f"peak_power_w, method, flags FROM phases WHERE {condition} ORDER BY id",
            params,
        )
        run_ids = pd.Series(dict(self._read("SELECT key, run_id FROM runs")), dtype=object)
        devices = pd.DataFrame.from_records(
            self._read(f"SELECT key, device_id, kind, name FROM devices WHERE {condition}", params),
            columns=["key", "device_id", "kind", "name"],
            index="key",
        )
        raw = pd.DataFrame.from_records(
            rows,
            columns=[
                "run_key",
                "epoch",
                "stage",
                "device_key",
                "start_s",
                "end_s",
                "energy_j",
                "mean_power_w",
                "peak_power_w",
                "method",
                "flags",
            ],
        )
        frame = pd.DataFrame(
            {
                "run_id": raw["run_key"].map(run_ids),
                "epoch": raw["epoch"].astype("Int64"),
                "stage": raw["stage"],
                "device_id": raw["device_key"].map(devices["device_id"]),
                "kind": raw["device_key"].map(devices["kind"]),
                "device_name": raw["device_key"].map(devices["name"]),
                "start_s": raw["start_s"],
                "end_s": raw["end_s"],
                "duration_s": raw["end_s"] - raw["start_s"],
                "energy_j": raw["energy_j"],
                "mean_power_w": raw["mean_power_w"],
                "peak_power_w": raw["peak_power_w"],
                "method": raw["method"],
                "flags": raw["flags"],
            },
            columns=list(PHASES_COLUMNS),
        )
        return frame

    @_spool_first
    def snapshots(
        self,
        run_id: str | None = None,
        filter: RunFilter | None = None,
    ) -> pandas.DataFrame:
        """One row per committed epoch (columns: SNAPSHOTS_COLUMNS): the model's size, the
        scalar ``metrics`` at the epoch's end (a dict; None where not recorded) and the
        ``train_samples`` it processed (<NA>: unknown or not recorded)."""
        import pandas as pd

        condition, params = self._child_filter(run_id, "s.", filter)
        rows = self._read(
            "SELECT r.run_id, s.epoch, s.trainable_params, s.total_params, s.model_class, "
            f"s.label, s.metrics, s.train_samples FROM snapshots s JOIN runs r "
            f"ON r.key = s.run_key WHERE {condition} "
            "ORDER BY s.run_key, s.epoch IS NOT NULL, s.epoch",
            params,
        )
        frame = pd.DataFrame.from_records(rows, columns=list(SNAPSHOTS_COLUMNS))
        # one json.loads for every row: 100,000 epochs parse in a few tens of ms
        texts = [row[6] for row in rows]  # the frame would have turned all-NULL into NaN
        frame["metrics"] = pd.Series(
            json.loads("[" + ",".join("null" if t is None else t for t in texts) + "]"),
            index=frame.index,
            dtype=object,
        )
        for column in ("epoch", "train_samples"):
            frame[column] = frame[column].astype("Int64")
        return frame

    @_spool_first
    def timeline(self, run_id: str) -> dict[str, list[tuple[float, float]]]:
        """The stored downsampled power series: device_id -> [(t_s, power_w)]."""
        condition, params = self._child_filter(run_id, "t.")
        rows = self._read(
            "SELECT d.device_id, t.points FROM timeline t JOIN devices d ON d.key = t.device_key "
            f"WHERE {condition} ORDER BY d.device_id",
            params,
        )
        return {device_id: [(t, w) for t, w in json.loads(points)] for device_id, points in rows}

    # ------------------------------------------------------------------ lineage

    @_spool_first
    def ancestors(self, run_id: str) -> list[str]:
        """Parent, grandparent, ... as far as this ledger knows them."""
        current = self._resolve(run_id)
        chain: list[str] = []
        seen = {current}
        while True:
            row = self._read("SELECT parent_run_id FROM runs WHERE run_id = ?", (current,))
            parent = row[0][0] if row else None
            if parent is None or parent in seen:
                return chain
            if not self._read("SELECT 1 FROM runs WHERE run_id = ?", (parent,)):
                logger.debug("run %s: parent %s is not in %s", current, parent, self.path)
                return chain
            chain.append(parent)
            seen.add(parent)
            current = parent

    @_spool_first
    def own_energy_j(self, run_id: str) -> float:
        """Device energy of this run alone (every phase, every device)."""
        condition, params = self._child_filter(run_id)
        return self._read(
            f"SELECT COALESCE(SUM(energy_j), 0.0) FROM phases WHERE {condition}", params
        )[0][0]

    @_spool_first
    def cumulative_energy_j(self, run_id: str) -> float:
        """This run's energy plus that of every ancestor in this ledger."""
        return sum(
            self.own_energy_j(rid) for rid in (self._resolve(run_id), *self.ancestors(run_id))
        )
