"""The ledger's one schema, in both dialects, and its migrations.

``MIGRATIONS[i]`` takes a ledger from version i to i + 1. They are written once, in SQLite's
dialect; :func:`postgres_steps` gives the same steps for PostgreSQL (identity keys, BIGINT,
DOUBLE PRECISION; JSON stays text in both, so every reader parses the same strings). SQLite
keeps the version in ``PRAGMA user_version`` (and marks its files with ``PRAGMA
application_id``); PostgreSQL in the table ``wattwise_meta`` (name ``schema_version``).
A new ledger is built by running every step from version 0, in both backends, so the upgrade
path of old ledgers is the path every ledger takes.
"""

from __future__ import annotations

import functools
import re

__all__ = ["APPLICATION_ID", "MIGRATIONS", "SCHEMA_VERSION", "postgres_steps", "statements"]

APPLICATION_ID = 0x57415454  # "WATT"

# Migrations: MIGRATIONS[i] takes a file from version i to i + 1. Never edit a released step;
# add a new one (and a fixture of the old version under tests/fixtures/ledger/).
MIGRATIONS: tuple[str, ...] = (
    # 0 -> 1: the first schema. Rows of a run refer to it (and to its devices) by integer key:
    # a phase row stays small and fast to read however long run ids and device ids are.
    """
    CREATE TABLE runs (
        key INTEGER PRIMARY KEY,
        run_id TEXT NOT NULL UNIQUE,
        architecture TEXT NOT NULL,
        status TEXT NOT NULL,
        started_at TEXT NOT NULL,
        ended_at TEXT,
        host TEXT,
        pid INTEGER,
        proc_started_at REAL,
        boot_id TEXT,
        tags TEXT NOT NULL DEFAULT '[]',
        settings TEXT NOT NULL DEFAULT '{}',
        region TEXT,
        pricing TEXT,
        versions TEXT NOT NULL DEFAULT '{}',
        git_commit TEXT,
        metrics TEXT NOT NULL DEFAULT '{}',
        parent_run_id TEXT,
        epochs INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE devices (
        key INTEGER PRIMARY KEY,
        run_key INTEGER NOT NULL,
        device_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        name TEXT,
        uuid TEXT,
        method TEXT,
        details TEXT NOT NULL DEFAULT '{}',
        flags TEXT NOT NULL DEFAULT '',
        UNIQUE (run_key, device_id)
    );
    CREATE TABLE phases (
        id INTEGER PRIMARY KEY,
        run_key INTEGER NOT NULL,
        device_key INTEGER NOT NULL,
        epoch INTEGER,
        stage TEXT NOT NULL,
        start_s REAL,
        end_s REAL,
        energy_j REAL NOT NULL,
        mean_power_w REAL,
        peak_power_w REAL,
        method TEXT NOT NULL,
        flags TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX phases_run ON phases (run_key);
    CREATE TABLE snapshots (
        run_key INTEGER NOT NULL,
        epoch INTEGER,
        trainable_params INTEGER,
        total_params INTEGER,
        model_class TEXT,
        label TEXT
    );
    CREATE UNIQUE INDEX snapshots_run_epoch ON snapshots (run_key, epoch);
    """,
    # 1 -> 2: why a run ended, when it was last written (duration of interrupted runs),
    # and the downsampled power timeline.
    """
    ALTER TABLE runs ADD COLUMN reason TEXT;
    ALTER TABLE runs ADD COLUMN updated_at TEXT;
    UPDATE runs SET updated_at = COALESCE(ended_at, started_at);
    CREATE TABLE timeline (
        run_key INTEGER NOT NULL,
        device_key INTEGER NOT NULL,
        points TEXT NOT NULL,
        PRIMARY KEY (run_key, device_key)
    );
    """,
    # 2 -> 3: per training epoch, the scalar metrics at its commit (JSON object text) and the
    # training samples it processed (NULL: unknown). Rows written before stay NULL: not recorded.
    """
    ALTER TABLE snapshots ADD COLUMN metrics TEXT;
    ALTER TABLE snapshots ADD COLUMN train_samples INTEGER;
    """,
    # 3 -> 4: seconds a run was not running (between a process that ended or crashed and the
    # one that continued it: reopen_run adds each gap). Durations are the span minus this;
    # runs recorded before keep their durations (0).
    """
    ALTER TABLE runs ADD COLUMN paused_s REAL NOT NULL DEFAULT 0;
    """,
    # 4 -> 5: scheduler metadata (wattwise.scheduler.collect(), JSON object text) and its two
    # join keys as indexed columns, so that a lab-sized ledger is filtered in SQL (RunFilter).
    # Runs recorded before have none: '{}' and NULL.
    """
    ALTER TABLE runs ADD COLUMN scheduler TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE runs ADD COLUMN user_name TEXT;
    ALTER TABLE runs ADD COLUMN job_id TEXT;
    CREATE INDEX runs_user ON runs (user_name, started_at);
    CREATE INDEX runs_job ON runs (job_id);
    CREATE INDEX runs_started ON runs (started_at);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


PG_META_DDL = (
    "CREATE TABLE IF NOT EXISTS wattwise_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)"
)


def statements(step: str) -> list[str]:
    """The statements of one migration step (they hold no ``;`` inside literals)."""
    return [s.strip() for s in step.split(";") if s.strip()]


def _to_postgres(statement: str) -> str:
    out = re.sub(
        r"\b(key|id) INTEGER PRIMARY KEY\b",
        r"\1 BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
        statement,
    )
    out = re.sub(r"\bINTEGER\b", "BIGINT", out)
    out = re.sub(r"\bTEXT\b", 'TEXT COLLATE "C"', out)  # byte order, as SQLite sorts
    return re.sub(r"\bREAL\b", "DOUBLE PRECISION", out)


@functools.cache
def postgres_steps() -> tuple[tuple[str, ...], ...]:
    """``MIGRATIONS`` in PostgreSQL's dialect: one tuple of statements per step."""
    return tuple(tuple(_to_postgres(s) for s in statements(step)) for step in MIGRATIONS)
