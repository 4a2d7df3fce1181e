"""The run ledger: every measured run, its phases and architecture snapshots.

A ledger is a SQLite file (the embedded default) or a PostgreSQL database
(``postgresql://user@host:port/db``); :func:`location.parse_location` reads either, wherever a
ledger is named. The parts:

- :mod:`.location`  one parser for paths and URLs; masking of passwords
- :mod:`.schema`    the one schema and its migrations, in both dialects
- :mod:`.sqlite`    the SQLite backend (opening, checking, migrating a file; lock retries)
- :mod:`.postgres`  the PostgreSQL backend (psycopg 3, lazily imported; server errors -> messages)
- :mod:`.core`      :class:`Ledger`: writing and reading runs, the same SQL on both backends
- :mod:`.copy`      copying whole runs between ledgers (``runs merge`` in either direction,
  shipping from the spool)
- :mod:`.spool`     a server ledger's local SQLite spool and its background shipper

Guarantees: a file that is not a wattwise ledger, or one from a newer wattwise, raises
:class:`~wattwise.errors.LedgerFormatError` and is left as it was; writes are short
transactions (one per epoch); a server ledger commits every write to the local spool first and
ships it off the caller's thread, so training never waits on or fails because of the server.
"""

from wattwise.ledger.core import (
    MAX_TIMELINE_POINTS,
    PHASES_COLUMNS,
    RUNS_COLUMNS,
    SNAPSHOTS_COLUMNS,
    STATUSES,
    Ledger,
    RunRecord,
    default_location,
    default_path,
)
from wattwise.ledger.location import FileLocation, PgLocation, mask, parse_location
from wattwise.ledger.schema import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION

__all__ = [
    "APPLICATION_ID",
    "MAX_TIMELINE_POINTS",
    "MIGRATIONS",
    "PHASES_COLUMNS",
    "RUNS_COLUMNS",
    "SCHEMA_VERSION",
    "SNAPSHOTS_COLUMNS",
    "STATUSES",
    "FileLocation",
    "Ledger",
    "PgLocation",
    "RunRecord",
    "default_location",
    "default_path",
    "mask",
    "parse_location",
]
