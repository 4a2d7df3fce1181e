"""The PostgreSQL backend: connections through psycopg 3, the schema in its dialect, and one
place where libpq's and the server's errors become messages a person can act on.

psycopg is imported here only, and this module only when a ``postgresql://`` ledger is used
(``import wattwise`` never pulls it in). Connections run in autocommit mode with explicit
``BEGIN``/``COMMIT`` (as the SQLite connections do), a bounded connect timeout and a statement
timeout, so no caller can hang on a server that stopped answering.

:class:`PgConnection` gives the SQL the Ledger writes (SQLite's ``?`` placeholders and
``GROUP_CONCAT``) to the server in its dialect, with the small part of ``sqlite3.Connection``'s
interface the Ledger uses.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from wattwise.errors import BadInput, LedgerFormatError
from wattwise.ledger.location import PgLocation, mask
from wattwise.ledger.schema import APPLICATION_ID, PG_META_DDL, SCHEMA_VERSION, postgres_steps

logger = logging.getLogger(__name__)

T = TypeVar("T")

CONNECT_TIMEOUT_S = 10
STATEMENT_TIMEOUT_MS = 120_000


class ServerError(BadInput):
    """The ledger server cannot be used (unreachable, refused login, missing privileges)."""


@functools.lru_cache(maxsize=512)
def translate(sql: str) -> str:
    """SQLite-dialect SQL (as the Ledger writes it) -> PostgreSQL."""
    if sql == "BEGIN IMMEDIATE":
        return "BEGIN"
    out = sql.replace("%", "%%")
    out = out.replace("GROUP_CONCAT(DISTINCT flags)", "string_agg(DISTINCT flags, ',')")
    # SQLite's JSON table function over a JSON text array, and a bare "WHERE 1"
    out = re.sub(
        r"json_each\(([\w.]+)\)", r"json_array_elements_text(\1::json) AS json_each(value)", out
    )
    out = re.sub(r"\b(WHERE|AND) 1\b(?!\s*=)", r"\1 TRUE", out)
    out = re.sub(r":([a-z_]+)\b", r"%(\1)s", out) if ":" in out and "?" not in out else out
    return out.replace("?", "%s")


class _Cursor:
    def __init__(self, cursor: Any):
        self._cursor = cursor

    def fetchone(self) -> tuple | None:
        return self._cursor.fetchone() if self._cursor.description else None

    def fetchall(self) -> list[tuple]:
        return self._cursor.fetchall() if self._cursor.description else []

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    def __iter__(self):
        return iter(self.fetchall())


class PgConnection:
    """A psycopg connection that takes the Ledger's SQL."""

    def __init__(self, raw: Any):
        self.raw = raw

    def execute(self, sql: str, params: Sequence[Any] | dict = ()) -> _Cursor:
        return _Cursor(self.raw.execute(translate(sql), params or None))

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        rows = list(rows)
        if rows:
            with self.raw.cursor() as cur:
                cur.executemany(translate(sql), rows)

    @property
    def in_transaction(self) -> bool:
        from psycopg.pq import TransactionStatus

        return self.raw.info.transaction_status != TransactionStatus.IDLE

    def close(self) -> None:
        self.raw.close()


def explain(err: Exception, location: PgLocation, doing: str) -> ServerError:
    """A libpq or server error as a message naming what was tried (masked) and what works."""
    import psycopg

    text = mask(str(err)).strip().replace(location.password or "\0", "***")
    first = text.splitlines()[0] if text else type(err).__name__
    where = f"ledger server {location.masked!r}"
    low = text.lower()
    if isinstance(err, psycopg.errors.InsufficientPrivilege) or "permission denied" in low:
        why = (
            f"the role {location.user or '(default)'!r} lacks a privilege for {doing} ({first}); "
            "accepted: a role that may CREATE in the database's schema (for the first use, "
            "which creates the tables) and SELECT/INSERT/UPDATE/DELETE on them afterwards"
        )
    elif "password authentication failed" in low:
        why = (
            f"the server refused the password of role {location.user or '(default)'!r}; accepted: "
            "the right password in the URL (user:password@), in PGPASSWORD or in ~/.pgpass"
        )
    elif "no password supplied" in low or "fe_sendauth" in low:
        why = (
            "the server asks for a password and none was given; accepted: user:password@ in the "
            "URL, PGPASSWORD or a ~/.pgpass line for this host, port, database and user"
        )
    elif "does not exist" in low and "database" in low:
        why = (
            f"there is no database {location.database!r} on that server ({first}); accepted: an "
            "existing database (CREATE DATABASE it first)"
        )
    elif "does not exist" in low and "role" in low:
        why = f"the server knows no role {location.user!r} ({first}); accepted: an existing role"
    elif "ssl" in low:
        why = f"the TLS set-up failed ({first}); accepted: an sslmode the server supports"
    elif isinstance(err, psycopg.OperationalError):
        why = (
            f"the server cannot be reached ({first}); accepted: a running PostgreSQL server at "
            "that host and port (the spool keeps what training wrote: `wattwise runs sync` ships "
            "it later)"
        )
    else:
        why = f"{doing} failed ({first})"
    return ServerError(f"{where}: {why}")


def connect(location: PgLocation, *, timeout_s: float = CONNECT_TIMEOUT_S) -> PgConnection:
    """An autocommit connection with bounded connect and statement timeouts; ServerError."""
    import psycopg

    try:
        raw = psycopg.connect(
            location.url,
            autocommit=True,
            connect_timeout=max(1, int(timeout_s)),
            options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
            application_name="wattwise",
        )
    except psycopg.Error as err:
        raise explain(err, location, "connecting") from None
    return PgConnection(raw)


class PgBackend:
    """Connections to one ledger database; the schema is created or migrated on first use."""

    dialect = "postgresql"
    begin_write = "BEGIN"
    begin_read = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"
    """Every statement of a read transaction sees one snapshot (READ COMMITTED, the default,
    gives each statement its own)."""

    def __init__(self, location: PgLocation):
        self.location = location
        self.name = location.masked
        self.connect_timeout_s: float = CONNECT_TIMEOUT_S

    def check(self) -> None:
        """Nothing is checked before first use: opening a Ledger never waits on the server."""

    def exists(self) -> bool:
        return True

    def retry(self, action: Callable[[], T]) -> T:
        import psycopg

        try:
            return action()
        except psycopg.Error as err:
            raise explain(err, self.location, "a ledger query") from err

    def open_read_write(self, read_only_ok: bool) -> tuple[PgConnection, bool]:
        conn = connect(self.location, timeout_s=self.connect_timeout_s)
        try:
            self.migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn, False

    def migrate(self, conn: PgConnection) -> None:
        import psycopg

        try:
            version = self._version(conn)
            if version == SCHEMA_VERSION:
                return
            conn.execute("BEGIN")
            try:
                # one migrator at a time across every client of this database
                conn.execute(f"SELECT pg_advisory_xact_lock({APPLICATION_ID})")
                conn.execute(PG_META_DDL)
                version = self._version(conn, checked=True)
                steps = postgres_steps()
                for step in range(version, SCHEMA_VERSION):
                    for statement in steps[step]:
                        conn.raw.execute(statement)
                conn.raw.execute(
                    "INSERT INTO wattwise_meta (name, value) VALUES ('application', %s), "
                    "('schema_version', %s) "
                    "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    (hex(APPLICATION_ID), str(SCHEMA_VERSION)),
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.raw.execute("ROLLBACK")
                raise
            if version != SCHEMA_VERSION:
                logger.info(
                    "ledger %s: schema version %d -> %d", self.name, version, SCHEMA_VERSION
                )
        except psycopg.Error as err:
            raise explain(err, self.location, "creating or upgrading the ledger tables") from None

    def _version(self, conn: PgConnection, *, checked: bool = False) -> int:
        """The schema version (0: no wattwise tables yet); LedgerFormatError for a database
        whose tables are another application's or a newer wattwise's."""
        meta, runs = conn.raw.execute(
            "SELECT to_regclass('wattwise_meta') IS NOT NULL, to_regclass('runs') IS NOT NULL"
        ).fetchone()
        if not meta:
            if runs:
                raise LedgerFormatError(
                    f"ledger server {self.name!r}: the database has a table 'runs' but no "
                    "wattwise_meta table: it is not a wattwise ledger; accepted: a database "
                    "without those tables, or one wattwise created"
                )
            return 0
        row = conn.raw.execute(
            "SELECT value FROM wattwise_meta WHERE name = 'schema_version'"
        ).fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise LedgerFormatError(
                f"ledger server {self.name!r} has schema version {version}, written by a newer "
                f"wattwise; this wattwise reads versions up to {SCHEMA_VERSION}: upgrade wattwise"
            )
        del checked
        return version
