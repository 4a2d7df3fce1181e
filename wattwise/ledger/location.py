"""Where a ledger lives: one parsing function for every place a ledger is named.

A location is either a file path (SQLite, the embedded default) or a PostgreSQL URL,
``postgresql://user[:password]@host[:port]/db[?sslmode=...]`` (``postgres://`` too). The URL is
handed to libpq unchanged, so libpq's usual sources fill what it leaves out (``PGPASSWORD``,
``~/.pgpass``, ``PGSSLMODE``, ...). Whatever is shown to a person (messages, ``config``,
reports, logs) is :attr:`PgLocation.masked`: the password replaced by ``***``.
"""

from __future__ import annotations

import os
import pathlib
import re
import stat
import urllib.parse
from dataclasses import dataclass

from wattwise.errors import BadInput, LedgerFormatError

__all__ = ["FileLocation", "PgLocation", "mask", "parse_location"]

PG_SCHEMES = ("postgresql", "postgres")
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
ACCEPTED = (
    "accepted: a file path (SQLite ledger) or "
    "postgresql://user[:password]@host[:port]/database[?sslmode=...] (also postgres://)"
)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


@dataclass(frozen=True)
class FileLocation:
    path: pathlib.Path

    @property
    def masked(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class PgLocation:
    url: str
    """The URL as given (password included: only ever handed to libpq)."""
    user: str | None
    host: str | None
    port: int | None
    database: str
    password: str | None

    @property
    def masked(self) -> str:
        return mask(self.url)

    @property
    def target(self) -> str:
        """``user@host:port/database`` without the password (spool names, messages)."""
        who = f"{self.user}@" if self.user else ""
        where = self.host or "local socket"
        return f"{who}{where}{'' if self.port is None else f':{self.port}'}/{self.database}"


def mask(text: str) -> str:
    """``text`` with the password of any URL in it replaced by ``***``."""
    return re.sub(r"(://[^:/@\s]*):[^@\s]*@", r"\1:***@", text)


def parse_location(value: str | os.PathLike[str]) -> FileLocation | PgLocation:
    """A ledger location from a path or URL; BadInput (exit 2) names the bad value.

    A path that names something other than a regular file (a directory, a FIFO, a socket, a
    device such as ``/dev/null``) is refused here, at once: SQLite would block on a FIFO or
    fail with a traceback on a device.
    """
    if isinstance(value, FileLocation | PgLocation):
        return value
    text = os.fspath(value)
    if not isinstance(text, str):
        raise BadInput(f"ledger {text!r} is not text; {ACCEPTED}")
    if not text.strip():
        raise BadInput(f"ledger {text!r} is empty; {ACCEPTED}")
    scheme = _SCHEME.match(text)
    if scheme is None:
        return FileLocation(_check_file(pathlib.Path(text).expanduser().absolute()))
    if scheme.group(1).lower() not in PG_SCHEMES:
        raise BadInput(f"ledger {mask(text)!r}: unknown scheme {scheme.group(1)!r}; {ACCEPTED}")
    return _parse_url(text)


def _parse_url(text: str) -> PgLocation:
    shown = mask(text)
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError as err:
        raise BadInput(
            f"ledger URL {shown!r} cannot be read ({mask(str(err))}); {ACCEPTED}"
        ) from None
    database = urllib.parse.unquote(parts.path.lstrip("/"))
    if not database or "/" in database:
        raise BadInput(f"ledger URL {shown!r} names no database (the /database part); {ACCEPTED}")
    if parts.fragment:
        raise BadInput(
            f"ledger URL {shown!r} has a #fragment, which means nothing here; {ACCEPTED}"
        )
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    for mode in query.get("sslmode", []):
        if mode not in SSLMODES:
            raise BadInput(
                f"ledger URL {shown!r}: sslmode={mode!r} is not accepted; accepted: "
                f"{', '.join(SSLMODES)}"
            )
    if "password" in query:
        raise BadInput(
            f"ledger URL {shown!r} carries a password= parameter; accepted: the password in "
            "user:password@, PGPASSWORD or ~/.pgpass"
        )
    return PgLocation(
        url=text,
        user=urllib.parse.unquote(parts.username) if parts.username else None,
        host=parts.hostname,
        port=port,
        database=database,
        password=urllib.parse.unquote(parts.password) if parts.password is not None else None,
    )


def _check_file(path: pathlib.Path) -> pathlib.Path:
    try:
        mode = path.stat().st_mode  # follows links: the file they point to counts
    except FileNotFoundError:
        return path  # a new ledger
    except OSError as err:
        raise BadInput(
            f"ledger {str(path)!r} cannot be looked at ({err.strerror or err}); "
            "accepted: a regular file (SQLite ledger) or a PostgreSQL URL"
        ) from None
    if stat.S_ISREG(mode):
        return path
    kind = (
        "a directory"
        if stat.S_ISDIR(mode)
        else "a FIFO (named pipe)"
        if stat.S_ISFIFO(mode)
        else "a socket"
        if stat.S_ISSOCK(mode)
        else "a character device"
        if stat.S_ISCHR(mode)
        else "a block device"
        if stat.S_ISBLK(mode)
        else "not a regular file"
    )
    raise LedgerFormatError(
        f"ledger {str(path)!r} is {kind}; accepted: a regular file (an existing wattwise "
        "ledger, an empty file or a new path) or a PostgreSQL URL (postgresql://...)"
    )
