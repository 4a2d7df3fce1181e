"""The SQLite backend: opening, checking and migrating a ledger file.

- stdlib ``sqlite3`` in WAL mode (``synchronous=NORMAL``: a commit survives a killed process);
  files are marked with ``PRAGMA application_id`` and versioned with ``PRAGMA user_version``.
- Before anything is written, an existing file is checked through a read-only connection; a file
  that is not a wattwise ledger, or one from a newer wattwise, raises
  :class:`~wattwise.errors.LedgerFormatError` and is left exactly as it was.
- Writes are short ``BEGIN IMMEDIATE`` transactions under a busy timeout, retried on "database
  is locked" (:func:`retry`), so concurrent trainings sharing a file never see that error.
"""

from __future__ import annotations

import logging
import pathlib
import random
import sqlite3
import time
import urllib.parse
from collections.abc import Callable
from typing import TypeVar

from wattwise.errors import BadInput, LedgerFormatError
from wattwise.ledger.schema import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION

logger = logging.getLogger(__name__)

T = TypeVar("T")

_SQLITE_MAGIC = b"SQLite format 3\x00"
_BUSY_TIMEOUT_S = 30.0
_CACHE_KIB = 32768  # page cache per connection (SQLite's default 2 MiB makes big writes 2x slower)
_RETRY_FOR_S = 120.0


def _is_busy(err: sqlite3.OperationalError) -> bool:
    code = getattr(err, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    text = str(err).lower()
    return "locked" in text or "busy" in text


def _retry(action: Callable[[], T]) -> T:
    """Run ``action``, retrying with jittered back-off while the file is locked by others."""
    deadline = time.monotonic() + _RETRY_FOR_S
    delay_s = 0.01
    while True:
        try:
            return action()
        except sqlite3.OperationalError as err:
            if not _is_busy(err) or time.monotonic() > deadline:
                raise
            logger.debug("ledger busy, retrying in %.3f s: %s", delay_s, err)
        time.sleep(delay_s * random.uniform(0.5, 1.5))
        delay_s = min(delay_s * 2, 0.5)


_UNWRITABLE_CODES = (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM)


def _is_unwritable(err: sqlite3.OperationalError) -> bool:
    """SQLite could not create or write the file or its WAL side files (a read-only folder,
    file or file system)."""
    code = getattr(err, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _UNWRITABLE_CODES
    text = str(err).lower()
    return "unable to open" in text or "readonly" in text or "read-only" in text


class _Unwritable(Exception):
    """Internal: the ledger cannot be opened for writing; ``bad_input`` says so to the user."""

    def __init__(self, path: pathlib.Path, why: str):
        super().__init__(why)
        self.bad_input = BadInput(
            f"ledger {str(path)!r} cannot be written ({why}): its folder, the file or the file "
            "system is read-only; accepted: a ledger in a writable folder (--ledger PATH or "
            "WATTWISE_LEDGER), or only reading commands here"
        )


_CREATION_GRACE_S = 1.0
"""How long a foreign-looking file is re-read in case a ledger is being created in it."""


def _read_only_uri(path: pathlib.Path) -> str:
    """URI that reads ``path`` without writing anything, not even WAL side files.

    With no ``-wal`` file beside it, everything is in the main file: open it immutable, so no
    ``-wal``/``-shm`` is created next to someone else's file. Otherwise a writer may be live, so
    read through its WAL (read-only).
    """
    uri = f"file:{urllib.parse.quote(str(path))}?mode=ro"
    return uri if path.with_name(path.name + "-wal").exists() else uri + "&immutable=1"


def _inspect(path: pathlib.Path) -> int | None:
    """Check, without writing, that ``path`` is usable as a ledger; return its schema version.

    None: nothing there yet (no file, or an empty file / SQLite database with no schema), so a
    new ledger may be created in it. Anything else that is not a wattwise ledger of a version
    this wattwise reads raises :class:`LedgerFormatError`.
    """
    expected = f"a wattwise ledger (SQLite, schema version <= {SCHEMA_VERSION})"
    if path.is_dir():
        raise LedgerFormatError(f"ledger path {str(path)!r} is a directory; expected {expected}")
    try:
        with path.open("rb") as handle:
            header = handle.read(len(_SQLITE_MAGIC))
    except FileNotFoundError:
        return None
    except OSError as err:
        raise LedgerFormatError(
            f"cannot read ledger {str(path)!r} ({err}); expected {expected}"
        ) from err
    if not header:
        return None
    if header != _SQLITE_MAGIC:
        raise LedgerFormatError(f"{str(path)!r} is not an SQLite file; expected {expected}")

    def query() -> tuple[int, int, int]:
        conn = sqlite3.connect(_read_only_uri(path), uri=True, timeout=_BUSY_TIMEOUT_S)
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            n_objects = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        finally:
            conn.close()
        return app_id, version, n_objects

    # A ledger being created by another process shows tables but no application_id yet to a
    # reader that catches it mid-way (immutable reads take no lock): look again for a moment
    # before calling it another application's database.
    deadline = time.monotonic() + _CREATION_GRACE_S
    while True:
        try:
            app_id, version, n_objects = _retry(query)
        except sqlite3.DatabaseError as err:
            raise LedgerFormatError(
                f"{str(path)!r} is not a readable SQLite database ({err}); expected {expected}"
            ) from err
        if app_id != 0 or n_objects == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if app_id == 0 and version == 0 and n_objects == 0:
        return None
    if app_id != APPLICATION_ID:
        raise LedgerFormatError(
            f"{str(path)!r} is an SQLite database of another application "
            f"(application_id {app_id:#x}, {n_objects} schema objects); expected {expected}"
        )
    if version > SCHEMA_VERSION:
        raise LedgerFormatError(
            f"ledger {str(path)!r} has schema version {version}, written by a newer wattwise; "
            f"this wattwise reads versions up to {SCHEMA_VERSION}: upgrade wattwise"
        )
    return version


class SqliteBackend:
    """Connections to one ledger file (the Ledger object serialises their use)."""

    dialect = "sqlite"
    begin_write = "BEGIN IMMEDIATE"
    begin_read = "BEGIN"
    """Deferred: the first SELECT takes the snapshot (WAL) the later ones see."""

    def __init__(self, path: pathlib.Path):
        self.path = path
        self.name = str(path)

    def check(self) -> None:
        _inspect(self.path)  # raises on a foreign or newer file; writes nothing

    def exists(self) -> bool:
        return self.path.exists()

    def retry(self, action: Callable[[], T]) -> T:
        return _retry(action)

    def open_read_write(self, read_only_ok: bool) -> tuple[sqlite3.Connection, bool]:
        """(connection, read_only): read-write, else (``read_only_ok``) read-only."""
        try:
            return self._open(), False
        except _Unwritable as unwritable:
            if not read_only_ok:
                raise unwritable.bad_input from None
            return self._open_read_only(unwritable.bad_input), True

    def _open(self) -> sqlite3.Connection:
        """A read-write connection, the file migrated to this schema version; _Unwritable when
        the file or its folder cannot be written (WAL needs its side files beside the file)."""
        _inspect(self.path)  # the file may have changed since __init__
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise _Unwritable(self.path, err.strerror or str(err)) from err
        try:
            conn = sqlite3.connect(
                str(self.path),
                timeout=_BUSY_TIMEOUT_S,
                isolation_level=None,  # transactions are explicit
                check_same_thread=False,  # guarded by self._lock instead
            )
        except sqlite3.OperationalError as err:  # a new file in a read-only folder
            if _is_unwritable(err):
                raise _Unwritable(self.path, str(err)) from err
            raise
        try:
            _retry(lambda: conn.execute("PRAGMA journal_mode=WAL").fetchone())
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
            _retry(lambda: self._migrate(conn))
        except sqlite3.OperationalError as err:
            conn.close()
            if _is_unwritable(err):
                raise _Unwritable(self.path, str(err)) from err
            raise
        except BaseException:
            conn.close()
            raise
        return conn

    def _open_read_only(self, unwritable: BadInput) -> sqlite3.Connection:
        """A connection that only reads the unwritable file (nothing is created beside it).
        A file with no schema yet reads as an empty ledger; one that needs an upgrade to this
        schema version cannot be read without writing it: BadInput says so."""
        try:
            conn = sqlite3.connect(
                _read_only_uri(self.path),
                uri=True,
                timeout=_BUSY_TIMEOUT_S,
                isolation_level=None,
                check_same_thread=False,
            )
            try:
                version = _retry(lambda: conn.execute("PRAGMA user_version").fetchone()[0])
            except BaseException:
                conn.close()
                raise
        except sqlite3.OperationalError as err:
            raise unwritable from err
        if version == SCHEMA_VERSION:
            return conn
        conn.close()
        if version == 0:  # no schema yet (_inspect let it through): an empty ledger
            empty = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            for step in MIGRATIONS:
                empty.executescript(step)
            return empty
        raise BadInput(
            f"ledger {str(self.path)!r} has schema version {version}: this wattwise reads "
            f"version {SCHEMA_VERSION} and must have it upgraded first, which writes the file, "
            "but its folder, the file or the file system is read-only; accepted: the ledger in "
            "a writable folder (a copy of it will do)"
        ) from None

    def _migrate(self, conn: sqlite3.Connection) -> None:
        if conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Checked again under the write lock: another process may have just done it.
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            n_objects = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if app_id == 0 and (version or n_objects):
                raise LedgerFormatError(
                    f"{str(self.path)!r} became another application's SQLite database while "
                    "it was being opened; expected a wattwise ledger"
                )
            for step in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[step].split(";"):
                    if statement.strip():
                        conn.execute(statement)
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
            if version != SCHEMA_VERSION:
                logger.info(
                    "ledger %s: schema version %d -> %d", self.path, version, SCHEMA_VERSION
                )
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
