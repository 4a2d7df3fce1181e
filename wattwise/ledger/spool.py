"""A server ledger's local spool and its shipper: training never waits on the server.

Every write to a ``postgresql://`` ledger (begin, each epoch, the end) is committed first to a
SQLite *spool* beside the job, in the same transaction as a mark in its ``ship_queue`` table
(run id, a counter bumped by each write). A daemon thread (one per Ledger object, started on
its first write, never the caller's thread) ships marked runs to the server: the whole run,
upserted by run id with its child rows replaced, in one server transaction, so a run shipped
twice is one run and each epoch is there once. A run's mark is cleared only if no write bumped
it meanwhile. Connects and statements have bounded timeouts; while the server is away the
shipper retries with back-off (1 s doubling to 30 s), logging one warning, and the spool keeps
everything: the next successful write, ``Ledger.close()`` (bounded) or ``wattwise runs sync``
deliver it. Runs that ended are removed from the spool once shipped.

Where: ``$WATTWISE_SPOOL`` (a folder) if set, else ``.wattwise-spool/`` in the working
directory; one file per server target, named after ``user@host:port/database`` (never the
password), so jobs started in one folder share it and ``wattwise runs`` there shows their runs
still waiting.
"""

from __future__ import annotations

import atexit
import logging
import os
import pathlib
import re
import sqlite3
import threading
import zlib
from typing import TYPE_CHECKING, Any

from wattwise.errors import BadInput
from wattwise.ledger.location import PgLocation, mask

if TYPE_CHECKING:  # pragma: no cover
    from wattwise.ledger.core import Ledger

logger = logging.getLogger(__name__)

SPOOL_ENV = "WATTWISE_SPOOL"
DEFAULT_DIR = ".wattwise-spool"
CLOSE_FLUSH_S = 5.0
"""How long ``close()`` (and interpreter exit) waits for a ship in progress; then one more
attempt, unless the last one failed (the server is away: the spool keeps it)."""
SHIP_CONNECT_TIMEOUT_S = 5
BACKOFF_S = (1.0, 30.0)
QUEUE_DDL = "CREATE TABLE IF NOT EXISTS ship_queue (run_id TEXT PRIMARY KEY, seq INTEGER NOT NULL)"

SHIP_LOCK_SPACE = 0x77617474
"""First key of the server's transaction-level advisory lock a shipper takes on a run (the
second is the run id's CRC-32): PostgreSQL keeps two-key locks apart from the one-key lock the
schema migration takes."""


def _lock_key(run_id: str) -> int:
    """The run id as a signed 32-bit advisory-lock key."""
    return zlib.crc32(run_id.encode()) - 2**31


_open_spools: set[Spool] = set()
"""Spools whose shipper runs: held until closed, so a Ledger dropped after its last write
still gets it delivered (at the latest at interpreter exit)."""
_exit_hook = threading.Lock()
_exit_hook_registered = False


def spool_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get(SPOOL_ENV) or DEFAULT_DIR).expanduser().absolute()


def spool_path(location: PgLocation) -> pathlib.Path:
    name = re.sub(r"[^A-Za-z0-9_.@-]+", "_", location.target).strip("_")
    return spool_dir() / f"{name}.db"


class Spool:
    """The spool of one server ledger (see the module docstring)."""

    def __init__(self, location: PgLocation):
        self.location = location
        self.path = spool_path(location)
        self._ledger: Ledger | None = None
        self._server: Ledger | None = None
        self._lock = threading.Lock()
        self._ship_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._warned = False
        self.last_error: str | None = None

    # ------------------------------------------------------------------ the spool file

    @property
    def ledger(self) -> Ledger:
        """The spool as a SQLite Ledger whose run writes also mark the run for shipping."""
        with self._lock:
            if self._ledger is None:
                from wattwise.ledger.core import Ledger

                book = Ledger._direct(str(self.path))
                book._write(lambda conn: conn.execute(QUEUE_DDL))
                book._queue = True
                self._ledger = book
            return self._ledger

    def waiting(self) -> list[str]:
        """Run ids written here and not shipped yet (reading creates no spool)."""
        if self._ledger is None and not self.path.is_file():
            return []
        try:
            return [row[0] for row in self.ledger._read("SELECT run_id FROM ship_queue")]
        except sqlite3.OperationalError:
            return []

    def write(self, name: str, args: tuple, kwargs: dict) -> Any:
        """Run the Ledger write ``name`` on the spool, then wake the shipper."""
        book = self.ledger
        if name == "begin_run":
            result = book.begin_run(*args, **kwargs)
        else:
            # a run that ended was shipped and left the spool; a later write to it (reopen,
            # or trainer.test after fit) brings it back from the server first
            run_id = str(args[0] if args else kwargs["run_id"])
            self._pull(run_id)
            try:
                result = getattr(book, name)(*args, **kwargs)
            except BadInput:
                # A shipper (any process sharing the spool) may have shipped the ended run
                # and removed it right after the pull found it here: pull it back, once.
                # A pulled run is not marked for shipping, so no shipper removes it again
                # before this write.
                if book._read("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)):
                    raise  # the run is here: the write itself was refused
                self._pull(run_id)
                result = getattr(book, name)(*args, **kwargs)
        self._start()
        self._wake.set()
        return result

    def _pull(self, run_id: str) -> None:
        """A run to continue that this spool lacks (shipped and removed, or begun on another
        machine) is copied from the server first."""
        if self.ledger._read("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)):
            return
        from wattwise.ledger.copy import read_run, write_run

        data = read_run(self.server, run_id)
        if data is None:
            raise BadInput(f"no run {run_id!r} in ledger {self.location.masked!r}")
        write_run(self.ledger, data, replace=True)

    @property
    def server(self) -> Ledger:
        with self._lock:
            if self._server is None:
                from wattwise.ledger.core import Ledger

                self._server = Ledger._direct(self.location)
                self._server._backend.connect_timeout_s = SHIP_CONNECT_TIMEOUT_S
            return self._server

    # ------------------------------------------------------------------ shipping

    def ship(self) -> tuple[int, int]:
        """Ship every waiting run now, on this thread; (shipped, still waiting).

        Raises the server's error (ServerError, a BadInput) when it cannot be reached."""
        from wattwise.ledger.copy import read_run, write_rows

        with self._ship_lock:
            book = self.ledger
            shipped = 0
            for run_id, seq in book._read("SELECT run_id, seq FROM ship_queue ORDER BY run_id"):

                def ship_one(conn: Any, run_id: str = run_id) -> dict | None:
                    # Every process writing into one spool ships its runs, and may ship another
                    # process's too. The run is locked on the server first and read from the
                    # spool only then, so the server takes its states in the order the spool
                    # had them: a shipper holding an older state can no longer overwrite a newer
                    # one shipped (and removed from the spool) meanwhile.
                    conn.execute(
                        "SELECT pg_advisory_xact_lock(CAST(? AS integer), CAST(? AS integer))",
                        (SHIP_LOCK_SPACE, _lock_key(run_id)),
                    )
                    data = read_run(book, run_id)
                    if data is not None:
                        write_rows(conn, data, replace=True)
                    return data

                data = self.server._write(ship_one)
                shipped += data is not None
                ended = data is None or data["run"]["status"] != "running"

                def settle(conn: Any, run_id: str = run_id, seq: int = seq, ended: bool = ended):
                    gone = conn.execute(
                        "DELETE FROM ship_queue WHERE run_id = ? AND seq = ?", (run_id, seq)
                    ).rowcount
                    if gone and ended:  # shipped for good: the spool keeps running runs only
                        key = conn.execute(
                            "SELECT key FROM runs WHERE run_id = ?", (run_id,)
                        ).fetchone()
                        if key is not None:
                            for table in ("phases", "snapshots", "timeline", "devices"):
                                conn.execute(f"DELETE FROM {table} WHERE run_key = ?", key)
                            conn.execute("DELETE FROM runs WHERE key = ?", key)

                book._write(settle)
            return shipped, len(self.waiting())

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._loop, name="wattwise-ledger-shipper", daemon=True
            )
            self._thread.start()
            _open_spools.add(self)
        _register_exit_flush()

    def _loop(self) -> None:
        delay_s: float | None = None
        while not self._stop.is_set():
            self._wake.wait(delay_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            if self._try_ship():
                delay_s = None
            else:
                delay_s = BACKOFF_S[0] if delay_s is None else min(2 * delay_s, BACKOFF_S[1])

    def _try_ship(self) -> bool:
        try:
            self.ship()
        except Exception as err:  # the server, the network, anything: never the caller's
            self.last_error = mask(str(err))
            if not self._warned:
                self._warned = True
                logger.warning(
                    "ledger server unavailable, runs kept in the spool %s and shipped when it "
                    "answers (or by `wattwise runs sync`): %s",
                    self.path,
                    self.last_error,
                )
            return False
        if self._warned:
            logger.warning(
                "ledger server %s answers again: spooled runs shipped", self.location.masked
            )
            self._warned = False
        self.last_error = None
        return True

    def flush(self, timeout_s: float = CLOSE_FLUSH_S) -> bool:
        """Stop the shipper (waiting at most ``timeout_s`` for a ship in progress) and ship
        what is left, once, unless the last attempt failed: bounded, never a retry loop."""
        thread = self._thread
        self._stop.set()
        self._wake.set()
        if thread is not None:
            thread.join(timeout_s)
            if thread.is_alive():
                return False  # still talking to a slow server: what is left waits for sync
        if self._ledger is None or not self.waiting():
            return True
        if self.last_error is not None:
            return False
        return self._try_ship()

    def close(self) -> None:
        if self._thread is not None:
            self.flush()
        with self._lock:
            for book in (self._ledger, self._server):
                if book is not None:
                    book.close()
            self._thread = None
        _open_spools.discard(self)


def _register_exit_flush() -> None:
    """Registered at the first shipper's start, after the spool's SQLite connection set up its
    own exit finalizer: atexit runs last-in first, so the flush still finds it open."""
    global _exit_hook_registered
    with _exit_hook:
        if not _exit_hook_registered:
            atexit.register(_flush_at_exit)
            _exit_hook_registered = True


def _flush_at_exit() -> None:
    for spool in list(_open_spools):
        try:
            spool.flush()
        except Exception:  # nothing may fail at exit; what is left waits for `runs sync`
            logger.debug("spool flush at exit failed", exc_info=True)
