"""A throw-away PostgreSQL cluster for the tests (Debian's postgresql package).

``initdb`` into a fresh folder under /tmp owned by the ``postgres`` user (PostgreSQL refuses to
run as root: as root every server command runs through ``runuser -u postgres --``), started by
``pg_ctl`` on a free port chosen now, listening on 127.0.0.1 with password (scram-sha-256)
authentication on TCP and trust on its own Unix socket (a private folder) for the set-up.
Roles: ``wattwise`` (password ``ww-secret-pw``, owns the test databases) and ``reader``
(password ``reader-pw``, may connect but not CREATE in the schema). Stopped and removed at exit.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pathlib
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

PASSWORD = "ww-secret-pw"
READER_PASSWORD = "reader-pw"


def pg_bin() -> pathlib.Path | None:
    """The newest /usr/lib/postgresql/<version>/bin that has initdb."""
    found = sorted(
        (pathlib.Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    return found[-1] if found else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Cluster:
    bin: pathlib.Path
    root: pathlib.Path
    port: int
    as_postgres: list[str]

    @property
    def data(self) -> pathlib.Path:
        return self.root / "data"

    @property
    def sockets(self) -> pathlib.Path:
        return self.root / "sock"

    def pg(self, tool: str, *args: str, check: bool = True, timeout: float = 120):
        return subprocess.run(
            [*self.as_postgres, str(self.bin / tool), *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )

    def admin_sql(self, sql: str, database: str = "postgres") -> None:
        self.pg(
            "psql",
            "-h",
            str(self.sockets),
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            database,
            "-v",
            "ON_ERROR_STOP=1",
            "-qc",
            sql,
        )

    def url(self, database: str, *, user: str = "wattwise", password: str | None = PASSWORD):
        secret = "" if password is None else f":{password}"
        return f"postgresql://{user}{secret}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        name = "t_" + uuid.uuid4().hex[:12]
        self.admin_sql(f"CREATE DATABASE {name} OWNER wattwise")
        self.admin_sql("REVOKE CREATE ON SCHEMA public FROM PUBLIC", database=name)
        self.admin_sql(f"GRANT CONNECT ON DATABASE {name} TO reader")
        return name

    def start(self) -> None:
        self.pg(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.root / "log"),
            "-w",
            "-t",
            "60",
            "-o",
            f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 "
            "-c max_connections=200 -c fsync=off",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self.pg("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)


def _as_postgres() -> list[str] | None:
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        return None
    return [runuser, "-u", "postgres", "--"] if runuser else None


@contextlib.contextmanager
def cluster() -> Iterator[Cluster | str]:
    """A started cluster, or a string saying why there is none."""
    binary = pg_bin()
    if binary is None:
        yield "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb)"
        return
    prefix = _as_postgres()
    if prefix is None:
        yield "running as root and there is no 'postgres' user / runuser to run PostgreSQL as"
        return
    root = pathlib.Path(tempfile.mkdtemp(prefix="wattwise-pg-"))
    os.chmod(root, 0o755)
    (root / "sock").mkdir()
    if prefix:
        shutil.chown(root, "postgres")
        shutil.chown(root / "sock", "postgres")
    pwfile = root / "pw"
    pwfile.write_text("admin-pw\n")
    if prefix:
        shutil.chown(pwfile, "postgres")
    box = Cluster(binary, root, 0, prefix)
    box.pg(
        "initdb",
        "-D",
        str(box.data),
        "-U",
        "postgres",
        "--pwfile",
        str(pwfile),
        "--auth-local=trust",
        "--auth-host=scram-sha-256",
        "-E",
        "UTF8",
        "--no-sync",
    )
    try:
        for attempt in range(5):
            box.port = free_port()
            try:
                box.start()
                break
            except subprocess.CalledProcessError:
                if attempt == 4:
                    raise
        box.admin_sql(f"CREATE ROLE wattwise LOGIN PASSWORD '{PASSWORD}'")
        box.admin_sql(f"CREATE ROLE reader LOGIN PASSWORD '{READER_PASSWORD}'")
        yield box
    finally:
        box.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
