"""Copying whole runs from one ledger to another, whatever their backends.

Used by ``runs merge`` (a file into a server, a server into a file: runs the target already
holds, by id, are skipped) and by the spool's shipper (``replace=True``: the run's row is
upserted by id and its child rows replaced in the same transaction, so shipping a run twice
leaves one run with each epoch once). Rows are read through the source's ``_read`` and written
through the target's ``_write``: one transaction per run on the target.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from wattwise.ledger.core import Ledger

RUN_COLUMNS = (
    "run_id",
    "architecture",
    "status",
    "started_at",
    "ended_at",
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
    "updated_at",
    "paused_s",
    "scheduler",
    "user_name",
    "job_id",
)
DEVICE_COLUMNS = ("device_id", "kind", "name", "uuid", "method", "details", "flags")
PHASE_COLUMNS = (
    "epoch",
    "stage",
    "start_s",
    "end_s",
    "energy_j",
    "mean_power_w",
    "peak_power_w",
    "method",
    "flags",
)
SNAPSHOT_COLUMNS = (
    "epoch",
    "trainable_params",
    "total_params",
    "model_class",
    "label",
    "metrics",
    "train_samples",
)


def read_run(source: Ledger, run_id: str) -> dict[str, Any] | None:
    """Every stored row of one run (None if the source lacks it), all read in one read
    transaction: another process may remove the run meanwhile (a shipper settling it in a
    shared spool), and rows read around that would be a run without its epochs."""
    if source._conn is None and not source._backend.exists():
        return None  # reading creates no file
    return source._read_tx(lambda conn: read_rows(conn, run_id))


def read_rows(conn: Any, run_id: str) -> dict[str, Any] | None:
    """:func:`read_run` inside a transaction the caller holds on ``conn``."""

    def rows(sql: str, params: tuple) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in conn.execute(sql, params).fetchall()]

    found = rows(f"SELECT key, {', '.join(RUN_COLUMNS)} FROM runs WHERE run_id = ?", (run_id,))
    if not found:
        return None
    key, *values = found[0]
    devices = rows(
        f"SELECT key, {', '.join(DEVICE_COLUMNS)} FROM devices WHERE run_key = ? ORDER BY key",
        (key,),
    )
    phases = rows(
        f"SELECT device_key, {', '.join(PHASE_COLUMNS)} FROM phases WHERE run_key = ? ORDER BY id",
        (key,),
    )
    snapshots = rows(
        f"SELECT {', '.join(SNAPSHOT_COLUMNS)} FROM snapshots WHERE run_key = ?", (key,)
    )
    timeline = rows("SELECT device_key, points FROM timeline WHERE run_key = ?", (key,))
    return {
        "run": dict(zip(RUN_COLUMNS, values, strict=True)),
        "devices": devices,
        "phases": phases,
        "snapshots": snapshots,
        "timeline": timeline,
    }


def write_run(target: Ledger, data: dict[str, Any], *, replace: bool) -> bool:
    """Store one run read by :func:`read_run`; False if the target has it and not ``replace``."""
    return target._write(lambda conn: write_rows(conn, data, replace=replace))


def write_rows(conn: Any, data: dict[str, Any], *, replace: bool) -> bool:
    """:func:`write_run` inside a write transaction the caller holds on ``conn``."""
    run = data["run"]
    columns = ", ".join(RUN_COLUMNS)
    marks = ", ".join("?" for _ in RUN_COLUMNS)
    updates = ", ".join(f"{c} = excluded.{c}" for c in RUN_COLUMNS if c != "run_id")

    if replace:
        run_key = conn.execute(
            f"INSERT INTO runs ({columns}) VALUES ({marks}) ON CONFLICT (run_id) DO UPDATE "
            f"SET {updates} RETURNING key",
            tuple(run.values()),
        ).fetchone()[0]
        for table in ("phases", "snapshots", "timeline", "devices"):
            conn.execute(f"DELETE FROM {table} WHERE run_key = ?", (run_key,))
    else:
        row = conn.execute(
            f"INSERT INTO runs ({columns}) VALUES ({marks}) ON CONFLICT (run_id) DO NOTHING "
            "RETURNING key",
            tuple(run.values()),
        ).fetchone()
        if row is None:
            return False
        run_key = row[0]
    device_key: dict[Any, Any] = {}
    for old_key, *values in data["devices"]:
        device_key[old_key] = conn.execute(
            f"INSERT INTO devices (run_key, {', '.join(DEVICE_COLUMNS)}) "
            f"VALUES (?, {', '.join('?' for _ in DEVICE_COLUMNS)}) RETURNING key",
            (run_key, *values),
        ).fetchone()[0]
    conn.executemany(
        f"INSERT INTO phases (run_key, device_key, {', '.join(PHASE_COLUMNS)}) "
        f"VALUES (?, ?, {', '.join('?' for _ in PHASE_COLUMNS)})",
        [(run_key, device_key[dev], *values) for dev, *values in data["phases"]],
    )
    conn.executemany(
        f"INSERT INTO snapshots (run_key, {', '.join(SNAPSHOT_COLUMNS)}) "
        f"VALUES (?, {', '.join('?' for _ in SNAPSHOT_COLUMNS)})",
        [(run_key, *values) for values in data["snapshots"]],
    )
    conn.executemany(
        "INSERT INTO timeline (run_key, device_key, points) VALUES (?, ?, ?)",
        [(run_key, device_key[dev], points) for dev, points in data["timeline"]],
    )
    return True


def copy_runs(
    source: Ledger, target: Ledger, run_ids: Iterable[str] | None = None, *, replace: bool = False
) -> tuple[int, int]:
    """Copy runs (default: all) from ``source`` to ``target``; (added, skipped)."""
    if run_ids is None:
        run_ids = [row[0] for row in source._read("SELECT run_id FROM runs ORDER BY key")]
    added = skipped = 0
    for run_id in run_ids:
        data = read_run(source, run_id)
        if data is None:
            continue
        if write_run(target, data, replace=replace):
            added += 1
        else:
            skipped += 1
    return added, skipped
