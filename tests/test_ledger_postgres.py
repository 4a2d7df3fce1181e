"""Issue 15: a PostgreSQL ledger (real server: tests/_postgres.py), the local spool and its
shipping, merge in both directions, credentials, and issue 14 item 4 (non-regular files)."""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import subprocess
import sys
import time

import pytest
from test_cli_runs import _fit, run_cli

from wattwise.errors import BadInput
from wattwise.ledger import Ledger, mask, parse_location
from wattwise.ledger.location import FileLocation, PgLocation


def server(url: str) -> Ledger:
    """The server's own view (no spool)."""
    return Ledger._direct(url)


def wait_for(condition, timeout_s: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


# --------------------------------------------------------------------- locations (no server)


def test_urls_and_paths_parse_and_passwords_are_masked(tmp_path):
    loc = parse_location("postgresql://ann:s3cr%40t@db.lab:5433/energy?sslmode=require")
    assert isinstance(loc, PgLocation)
    assert (loc.user, loc.host, loc.port, loc.database, loc.password) == (
        "ann",
        "db.lab",
        5433,
        "energy",
        "s3cr@t",
    )
    assert loc.masked == "postgresql://ann:***@db.lab:5433/energy?sslmode=require"
    assert "s3cr" not in loc.target and "s3cr" not in repr(Ledger(loc.url))
    assert isinstance(parse_location("postgres://ann@db/energy"), PgLocation)
    assert parse_location(tmp_path / "w.db") == FileLocation(tmp_path / "w.db")


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("mysql://u:pw@h/db", "unknown scheme 'mysql'"),
        ("postgresql://u:pw@h:5432/", "names no database"),
        ("postgresql://u:pw@h:99999/db", "cannot be read"),
        ("postgresql://u:pw@h:notaport/db", "cannot be read"),
        ("postgresql://u:pw@h/db?sslmode=sometimes", "sslmode='sometimes'"),
        ("postgresql://u@h/db?password=pw", "password= parameter"),
    ],
)
def test_bad_urls_are_refused_with_the_password_masked(url, named, capsys):
    with pytest.raises(BadInput, match="accepted") as err:
        Ledger(url)
    assert named in str(err.value) and ":pw@" not in str(err.value)
    code, out, errout = run_cli(capsys, "runs", "--ledger", url)
    assert code == 2 and named in errout and ":pw@" not in out + errout


@pytest.mark.parametrize("kind", ["fifo", "devnull", "directory", "socket"])
def test_a_ledger_that_is_not_a_regular_file_exits_2_at_once(tmp_path, kind):
    """Issue 14 item 4: a FIFO hung forever (SQLite opened it and waited for a writer) and
    /dev/null gave an sqlite3 traceback and exit 1. Run in a subprocess with a timeout, so a
    regression hangs that process, not the suite."""
    if kind == "fifo":
        target = tmp_path / "pipe"
        os.mkfifo(target)
    elif kind == "devnull":
        target = "/dev/null"
    elif kind == "directory":
        target = tmp_path
    else:
        target = tmp_path / "s.sock"
        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(str(target))
    for command in (["runs"], ["runs", "sync"], ["report"]):
        proc = subprocess.run(
            [sys.executable, "-m", "wattwise", *command, "--ledger", str(target)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
        assert proc.returncode == 2, (command, proc.stderr)
        assert str(target) in proc.stderr and "accepted: a regular file" in proc.stderr
        assert "Traceback" not in proc.stderr
    if kind == "fifo":
        assert (tmp_path / "pipe").exists() and not (tmp_path / "pipe").is_file()


def test_env_and_config_name_a_server_ledger_and_config_masks_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WATTWISE_LEDGER", raising=False)
    url = "postgresql://ann:topsecret@db.lab:5433/energy"
    (tmp_path / "wattwise.toml").write_text(f'ledger = "{url}"\n')
    from wattwise.ledger import default_location

    assert default_location() == url  # not turned into a path under the config's folder
    code, out, err = run_cli(capsys, "config", "--json")
    assert code == 0 and "topsecret" not in out + err
    shown = json.loads(out)["settings"]["ledger"]
    assert shown["value"] == mask(url) and shown["source"].startswith("file:")
    code, out, err = run_cli(capsys, "config")
    assert code == 0 and "topsecret" not in out + err and "ann:***@db.lab" in out
    monkeypatch.setenv("WATTWISE_LEDGER", "postgres://bob@other/db")
    assert default_location() == "postgres://bob@other/db"


# --------------------------------------------------------------------- a real server


def test_a_server_ledger_is_created_on_first_use_and_reads_like_a_file(pg_url, tmp_path):
    with Ledger(pg_url) as book:
        run_id = _fit(book, "mlp")
        assert book.waiting_runs() == [run_id] or book.waiting_runs() == []
    # close() shipped it; the server has the same run a file would hold
    with Ledger(tmp_path / "twin.db") as twin:
        twin_id = _fit(twin, "mlp")
        expected = twin.get_run(twin_id)
    with server(pg_url) as direct:
        (got,) = direct.list_runs()
        assert got.run_id == run_id and got.waiting is False
        assert got.energy_j == expected.energy_j == 3600 + 7200 + 2 * 360
        assert got.epochs == 2 and got.status == "finished"
        assert got.methods == expected.methods and got.flags == expected.flags
        assert direct.snapshots(run_id)["epoch"].tolist() == [0, 1]
        assert len(direct.phases(run_id)) == 4
        # the schema's version is recorded, and opening it again migrates nothing
        conn = direct._connection()
        version = conn.execute("SELECT value FROM wattwise_meta WHERE name = 'schema_version'")
        from wattwise.ledger import SCHEMA_VERSION

        assert version.fetchone()[0] == str(SCHEMA_VERSION)


def test_training_writes_go_to_the_spool_first_and_sync_ships_them_once(pg_url, tmp_path):
    book = Ledger(pg_url)
    spool = book._spool
    spool._start = lambda: None  # no shipper thread: the test ships by hand
    run_id = book.begin_run(architecture="mlp")
    assert spool.path.parent == tmp_path / "spool" and spool.path.is_file()
    assert "ww-secret-pw" not in spool.path.name
    assert server(pg_url).list_runs() == []  # nothing reached the server yet
    (listed,) = book.list_runs()  # but the run is shown, as waiting
    assert listed.run_id == run_id and listed.waiting
    assert book.sync() == (1, 0)  # shipped (a running run stays in the spool, unmarked)
    assert book.waiting_runs() == []
    _, _, _ = _fit_epochs(book, run_id, 3)
    assert book.waiting_runs() == [run_id]
    assert book.sync() == (1, 0)
    assert book.sync() == (0, 0)  # nothing left: idempotent
    direct = server(pg_url)
    assert [r.run_id for r in direct.list_runs()] == [run_id]
    assert direct.get_run(run_id).epochs == 3
    # shipping the same run again (another process did not see the mark clear) changes nothing
    from wattwise.ledger.copy import read_run, write_run

    data = read_run(book._spool.ledger, run_id)
    write_run(direct, data, replace=True)
    write_run(direct, data, replace=True)
    assert len(direct.list_runs()) == 1 and len(direct.phases(run_id)) == 3
    assert direct.snapshots(run_id)["epoch"].tolist() == [0, 1, 2]
    book.finish_run(run_id)
    assert book.sync() == (1, 0)
    # a run that ended and was shipped leaves the spool
    assert book._spool.ledger._read("SELECT count(*) FROM runs") == [(0,)]
    assert direct.get_run(run_id).status == "finished"


def _fit_epochs(book, run_id, n):
    from test_cli_runs import CPU, _phase

    from wattwise.types import ArchSnapshot

    for epoch in range(n):
        book.add_phases(
            run_id,
            [_phase("train", CPU, 10.0 + epoch)],
            epoch=epoch,
            snapshot=ArchSnapshot(10, 10, "MLP", "mlp"),
            epochs_completed=epoch + 1,
        )
    return run_id, n, book


def test_server_outage_keeps_writing_warns_once_and_sync_delivers(
    pg_url, pg_cluster, caplog, capsys
):
    book = Ledger(pg_url)
    run_id = book.begin_run(architecture="mlp")
    wait_for(lambda: not book.waiting_runs(), what="the first ship")
    pg_cluster.stop()
    try:
        with caplog.at_level(logging.WARNING, logger="wattwise"):
            _fit_epochs(book, run_id, 4)  # no exception: each epoch lands in the spool
            book.finish_run(run_id)
            wait_for(lambda: book._spool.last_error is not None, what="a failed ship")
            time.sleep(1.5)  # the shipper retries (1 s back-off) and stays quiet
        warnings = [r for r in caplog.records if "ledger server unavailable" in r.getMessage()]
        assert len(warnings) == 1 and "ww-secret-pw" not in warnings[0].getMessage()
        assert book.waiting_runs() == [run_id]
        code, out, err = run_cli(capsys, "runs", "sync", "--ledger", pg_url)
        assert code == 2 and "cannot be reached" in err and "ww-secret-pw" not in out + err
        assert book.waiting_runs() == [run_id]  # nothing lost
    finally:
        pg_cluster.start()
    code, out, err = run_cli(capsys, "runs", "sync", "--ledger", pg_url, "--json")
    assert code == 0, err
    assert json.loads(out)["waiting"] == 0
    run = server(pg_url).get_run(run_id)
    assert run.epochs == 4 and run.status == "finished"
    assert server(pg_url).snapshots(run_id)["epoch"].tolist() == [0, 1, 2, 3]
    book.close()


def _unreachable_url() -> str:
    from _postgres import free_port

    return f"postgresql://wattwise:ww-secret-pw@127.0.0.1:{free_port()}/nothing"


@pytest.mark.parametrize("case", ["unreachable", "password", "database", "privileges", "nopw"])
def test_server_problems_exit_2_naming_what_was_tried(case, pg_url, pg_cluster, capsys):
    from _postgres import READER_PASSWORD

    database = pg_url.rsplit("/", 1)[1]
    url, named = {
        "unreachable": (_unreachable_url(), "cannot be reached"),
        "password": (pg_cluster.url(database, password="wrong-pw"), "refused the password"),
        "database": (pg_cluster.url("no_such_db"), "no database 'no_such_db'"),
        "privileges": (
            pg_cluster.url(database, user="reader", password=READER_PASSWORD),
            "lacks a privilege",
        ),
        "nopw": (pg_cluster.url(database, password=None), "none was given"),
    }[case]
    for argv in (["runs"], ["report"], ["estimate", "--run", "abc", "--epochs", "3"]):
        code, out, err = run_cli(capsys, *argv, "--ledger", url)
        assert code == 2, (argv, err)
        assert named in err and "accepted" in err and mask(url) in err
        for secret in ("ww-secret-pw", "wrong-pw", READER_PASSWORD):
            assert secret not in out + err


def test_pgpassword_and_pgpass_are_used(pg_url, tmp_path, monkeypatch, capsys):
    bare = pg_url.replace(":ww-secret-pw@", "@")
    with Ledger(pg_url) as book:
        _fit(book, "mlp")
    monkeypatch.setenv("PGPASSWORD", "ww-secret-pw")
    code, out, err = run_cli(capsys, "runs", "--ledger", bare, "--json")
    assert code == 0 and len(json.loads(out)) == 1, err
    monkeypatch.delenv("PGPASSWORD")
    loc = parse_location(bare)
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"{loc.host}:{loc.port}:{loc.database}:{loc.user}:ww-secret-pw\n")
    pgpass.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    code, out, err = run_cli(capsys, "runs", "--ledger", bare, "--json")
    assert code == 0 and len(json.loads(out)) == 1, err


def test_merge_a_file_into_the_server_and_the_server_into_a_file(pg_url, tmp_path, capsys):
    source = tmp_path / "node1.db"
    with Ledger(source) as book:
        first = _fit(book, "pretrain")
        second = _fit(book, "finetune", parent=first, gpu_j=(1440.0,))
    for expected in ({"added": 2, "skipped": 0}, {"added": 0, "skipped": 2}):
        code, out, err = run_cli(capsys, "runs", "merge", str(source), "--ledger", pg_url, "--json")
        assert code == 0, err
        got = json.loads(out)
        assert {k: got[k] for k in expected} == expected and "ww-secret-pw" not in out
    direct = server(pg_url)
    assert {r.run_id for r in direct.list_runs()} == {first, second}
    assert direct.ancestors(second) == [first]
    # and back: the server into a new file, twice
    back = tmp_path / "back.db"
    for expected in ((2, 0), (0, 2)):
        with Ledger(back) as book:
            assert book.merge(pg_url) == expected
    with Ledger(back) as book, Ledger(source) as original:
        for rec in original.list_runs():
            copy = book.get_run(rec.run_id)
            assert copy.energy_j == rec.energy_j and copy.epochs == rec.epochs
            assert copy.started_at == rec.started_at and copy.metrics == rec.metrics
        assert len(book.phases()) == len(original.phases())


def test_cli_runs_report_and_estimate_on_a_server_ledger(pg_url, tmp_path, capsys):
    with Ledger(pg_url) as book:
        pretrain = _fit(book, "pretrain")
    code, out, err = run_cli(capsys, "runs", "--ledger", pg_url, "--json")
    assert code == 0 and [r["run_id"] for r in json.loads(out)] == [pretrain]
    assert json.loads(out)[0]["waiting"] is False
    code, out, err = run_cli(capsys, "runs", "--ledger", pg_url)
    assert code == 0 and "ww-secret-pw" not in out and "shipped" in out
    code, out, err = run_cli(capsys, "runs", "show", pretrain[:8], "--ledger", pg_url)
    assert code == 0 and pretrain in out
    code, out, err = run_cli(
        capsys,
        "report",
        "--ledger",
        pg_url,
        "--html",
        str(tmp_path / "report.html"),
        "--csv",
        str(tmp_path / "csv"),
        "--json",
    )
    assert code == 0, err
    html = (tmp_path / "report.html").read_text()
    assert pretrain in (tmp_path / "csv" / "runs.csv").read_text()
    assert "ww-secret-pw" not in html and "ww-secret-pw" not in out
    code, out, err = run_cli(
        capsys, "estimate", "--run", pretrain, "--epochs", "10", "--ledger", pg_url, "--json"
    )
    assert code == 0, err
    assert json.loads(out)["targets"][0]["energy_kwh"] > 0


class _Meddling:
    """A connection that, right after the first statement containing ``when`` has run, lets
    another connection or process commit ``meddle`` (what a second shipper or a training
    writing into the same ledger does at that moment)."""

    def __init__(self, conn, when, meddle):
        self._conn, self._when, self._meddle = conn, when, meddle

    def execute(self, sql, params=()):
        cursor = self._conn.execute(sql, params)
        if self._meddle is not None and self._when in sql:
            rows = cursor.fetchall()
            meddle, self._meddle = self._meddle, None
            meddle()

            class Done:
                def fetchall(self):
                    return rows

                def fetchone(self):
                    return rows[0] if rows else None

            return Done()
        return cursor

    def __getattr__(self, name):
        return getattr(self._conn, name)


def _meddle_with(monkeypatch, book, when, meddle):
    opened = book._connection
    proxies = {}

    def connection(**kw):
        conn = opened(**kw)
        if id(conn) not in proxies:
            proxies[id(conn)] = _Meddling(conn, when, meddle)
        return proxies[id(conn)]

    monkeypatch.setattr(book, "_connection", connection)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_run_removed_while_it_is_read_is_read_whole(backend, tmp_path, request, monkeypatch):
    """A shipper read a spooled run in separate statements: the run's row, then (after another
    process's shipper had settled and removed it) no phases. Shipped with replace, that empty
    run wiped the run's epochs on the server (16 concurrent writers: 90 of 96 phases)."""
    from wattwise.ledger.copy import read_run

    location = tmp_path / "w.db" if backend == "sqlite" else request.getfixturevalue("pg_url")
    writer = Ledger._direct(str(location))
    run_id = _fit(writer, "mlp")

    def remove() -> None:
        def delete(conn):
            (key,) = conn.execute("SELECT key FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            for table in ("phases", "snapshots", "timeline", "devices"):
                conn.execute(f"DELETE FROM {table} WHERE run_key = ?", (key,))
            conn.execute("DELETE FROM runs WHERE key = ?", (key,))

        writer._write(delete)

    reader = Ledger._direct(str(location))
    _meddle_with(monkeypatch, reader, "FROM runs WHERE run_id", remove)
    data = read_run(reader, run_id)
    assert data is not None and data["run"]["epochs"] == 2
    assert len(data["phases"]) == 4 and len(data["snapshots"]) == 2  # as it was: whole
    assert read_run(Ledger._direct(str(location)), run_id) is None  # and it is gone now


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_runs_listed_while_a_run_is_shipped_again_are_whole(
    backend, tmp_path, request, monkeypatch
):
    """list_runs read the runs, their devices and their energy in separate statements; a
    shipper replacing a run in between (its devices deleted and inserted under new keys) left
    energy rows whose device was not among those read: KeyError (`wattwise runs` during 16
    concurrent fits)."""
    from wattwise.ledger.copy import read_run, write_run

    location = tmp_path / "w.db" if backend == "sqlite" else request.getfixturevalue("pg_url")
    writer = Ledger._direct(str(location))
    run_id = _fit(writer, "mlp")
    _fit(writer, "later")  # so that the first run's devices come back under new keys

    def ship_again() -> None:
        assert write_run(writer, read_run(writer, run_id), replace=True)

    reader = Ledger._direct(str(location))
    _meddle_with(monkeypatch, reader, "FROM devices", ship_again)
    runs = reader.list_runs()
    assert [r.architecture for r in runs] == ["mlp", "later"]
    assert [r.energy_j for r in runs] == [3600 + 7200 + 2 * 360] * 2
    assert [len(r.devices) for r in runs] == [2, 2]


def test_a_waiting_run_shipped_while_it_is_read_is_found(pg_url, tmp_path, monkeypatch):
    """A run waiting in the spool is read from the spool; a shipper (another process sharing
    the spool) could ship it and remove it between the check and the read: 'no run ... in
    ledger spool' for a run that exists (seen as trainer.test's run not found after a fit)."""
    book = Ledger(pg_url)
    book._spool._start = lambda: None
    run_id = _fit(book, "mlp")
    assert book.waiting_runs() == [run_id]
    other = Ledger(pg_url)  # the same spool file, its own shipper

    def ship() -> None:
        assert other.sync() == (1, 0)

    _meddle_with(monkeypatch, book._spool.ledger, "substr(run_id", ship)
    assert book.get_run(run_id).energy_j == 3600 + 7200 + 2 * 360
    assert book.waiting_runs() == []  # it was shipped meanwhile
    assert server(pg_url).get_run(run_id).epochs == 2


@pytest.mark.parametrize("write", ["reopen_run", "add_phases"])
def test_a_write_to_a_run_shipped_and_removed_meanwhile_pulls_it_back(write, pg_url, monkeypatch):
    """A write to an ended run (trainer.test after fit) first pulls it back into the spool if
    it left; a shipper in another process could remove it right after that check, and the
    write found no run ('no run ... in ledger spool')."""
    from test_cli_runs import CPU, _phase

    book = Ledger(pg_url)
    book._spool._start = lambda: None
    run_id = _fit(book, "mlp")  # ended, waiting in the spool
    other = Ledger(pg_url)  # the same spool file, its own shipper

    def ship() -> None:
        assert other.sync() == (1, 0)  # shipped, and removed from the spool (it ended)

    _meddle_with(monkeypatch, book._spool.ledger, "SELECT 1 FROM runs WHERE run_id", ship)
    if write == "reopen_run":
        book.reopen_run(run_id)
    else:
        book.add_phases(run_id, [_phase("test", CPU, 36.0)], epoch=None)
    assert book.sync() == (1, 0)
    run = server(pg_url).get_run(run_id)
    assert run.status == ("running" if write == "reopen_run" else "finished")
    assert run.energy_j == 3600 + 7200 + 2 * 360 + (36 if write == "add_phases" else 0)


def test_sixteen_concurrent_writers_lose_and_duplicate_nothing(pg_url, tmp_path):
    """16 processes, each a run of 6 epochs written through Ledger(url) (spool, shipper) as
    EnergyCallback writes them, all in one folder (one shared spool) and one server."""
    code = (
        "import sys\n"
        "from wattwise.ledger import Ledger\n"
        "from wattwise.types import ArchSnapshot, PhaseEnergy\n"
        "book = Ledger(sys.argv[1])\n"
        "rid = book.begin_run(architecture='w' + sys.argv[2])\n"
        "for e in range(6):\n"
        "    p = PhaseEnergy('train', 0, 'cpu:machine', 'cpu', e, e + 1.0, 10.0 + e, 'estimate')\n"
        "    book.add_phases(rid, [p], epoch=e, snapshot=ArchSnapshot(1, 1, 'M', 'm'),\n"
        "                    epochs_completed=e + 1)\n"
        "book.finish_run(rid)\n"
        "print(rid)\n"
    )
    env = {**os.environ, "WATTWISE_SPOOL": str(tmp_path / "spool")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, pg_url, str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        for i in range(16)
    ]
    ids = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        ids.append(out.strip())
    book = Ledger(pg_url)
    book.sync()  # whatever the exits left
    direct = server(pg_url)
    runs = direct.list_runs()
    assert sorted(r.run_id for r in runs) == sorted(ids) and len(set(ids)) == 16
    assert all(r.epochs == 6 and r.status == "finished" for r in runs)
    phases = direct.phases()
    assert len(phases) == 16 * 6
    assert (
        phases.groupby("run_id")["epoch"].apply(sorted).map(list).tolist() == [list(range(6))] * 16
    )
    assert phases["energy_j"].sum() == pytest.approx(16 * sum(10.0 + e for e in range(6)))
    assert book.waiting_runs() == []


def test_a_fit_into_a_server_ledger_finishes_through_an_outage(pg_url, pg_cluster, tmp_path):
    """EnergyCallback fit into postgresql://: the server is stopped after the first epoch and
    started again after the fit: the fit finishes, and after sync every epoch is there."""
    import pytorch_lightning as pl
    from test_callback import TinyModel, loader, trainer

    from lightning_callbacks import EnergyCallback

    class Outage(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 0:
                pg_cluster.stop()

    cb = EnergyCallback(ledger=pg_url)
    try:
        trainer(tmp_path, [cb, Outage()], max_epochs=3).fit(TinyModel(), loader(), loader(32))
    finally:
        pg_cluster.start()
    book = Ledger(pg_url)
    assert book.get_run(cb.run_id).epochs == 3  # from the spool, or already shipped
    book.sync()
    run = server(pg_url).get_run(cb.run_id)
    assert run.status == "finished" and run.epochs == 3 == cb.epochs_completed
    assert server(pg_url).snapshots(cb.run_id)["epoch"].tolist() == [0, 1, 2]
    assert run.energy_j == pytest.approx(cb.energy_j, rel=1e-9)


def test_a_sqlite_spool_is_an_ordinary_ledger_file(pg_url):
    """The spool is a wattwise ledger (readable by every tool) plus the ship_queue table."""
    with Ledger(pg_url) as book:
        book._spool._start = lambda: None
        book.begin_run(architecture="a")
        path = book.spool_path
        conn = sqlite3.connect(path)
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        conn.close()
        assert {"runs", "phases", "ship_queue"} <= tables
        assert len(Ledger(path).list_runs()) == 1


def test_copying_a_run_carries_every_column_of_the_schema(tmp_path):
    """copy.py names the columns it ships: a column added by a later migration and not named
    there would be silently dropped on the way to the server."""
    from wattwise.ledger import copy

    with Ledger(tmp_path / "w.db") as book:
        book.ensure_writable()
        conn = book._connection()

        def columns(table):
            return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}

        assert columns("runs") - {"key"} == set(copy.RUN_COLUMNS)
        assert columns("devices") - {"key", "run_key"} == set(copy.DEVICE_COLUMNS)
        assert columns("phases") - {"id", "run_key", "device_key"} == set(copy.PHASE_COLUMNS)
        assert columns("snapshots") - {"run_key"} == set(copy.SNAPSHOT_COLUMNS)
        assert columns("timeline") == {"run_key", "device_key", "points"}


def test_meter_and_wattwise_run_record_into_a_server_ledger(pg_url, tmp_path, capsys):
    from fakes import FakeSensor

    from wattwise.meter import Meter

    with Meter(ledger=pg_url, architecture="loop", sensors=[FakeSensor([(0.0, 50.0)])]) as meter:
        meter.mark("work")
    code, out, err = run_cli(capsys, "runs", "--ledger", pg_url, "--json")
    assert code == 0 and [r["run_id"] for r in json.loads(out)] == [meter.run_id], err
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "wattwise",
            "run",
            "--ledger",
            pg_url,
            "--json",
            "--",
            sys.executable,
            "-c",
            "pass",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "WATTWISE_SPOOL": str(tmp_path / "spool")},
    )
    assert proc.returncode == 0, proc.stderr
    assert "ww-secret-pw" not in proc.stdout + proc.stderr
    run_id = json.loads(proc.stdout)["run_id"]
    ids = {r.run_id for r in server(pg_url).list_runs()}  # shipped at the process's exit
    assert ids == {meter.run_id, run_id}


def test_a_waiting_run_is_reported_and_removed_like_any_other(pg_url, tmp_path):
    with Ledger(pg_url) as book:
        book._spool._start = lambda: None  # nothing ships: both runs wait in the spool
        parent = _fit(book, "pretrain")
        child = _fit(book, "finetune", parent=parent, gpu_j=(1440.0,))
        assert set(book.waiting_runs()) == {parent, child}
        assert book.ancestors(child) == [parent]
        assert book.cumulative_energy_j(child) == book.own_energy_j(child) + book.own_energy_j(
            parent
        )
        from wattwise.report import build_report

        result = build_report(book, html_path=tmp_path / "r.html", csv_dir=tmp_path)
        assert result.n_runs == 2
        book.remove(child)
        assert book.waiting_runs() == [parent]
        assert book.sync() == (1, 0)
        assert [r.run_id for r in server(pg_url).list_runs()] == [parent]  # child never shipped
        book.remove(parent)
        assert server(pg_url).list_runs() == []


def test_a_checkpoint_of_a_fit_into_a_server_ledger_holds_no_password(pg_url, tmp_path):
    import torch
    from pytorch_lightning.callbacks import ModelCheckpoint
    from test_callback import TinyModel, loader, trainer

    from lightning_callbacks import EnergyCallback

    cb = EnergyCallback(ledger=pg_url)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer(tmp_path, [cb, ckpt], max_epochs=1).fit(TinyModel(), loader(), loader(32))
    (path,) = (tmp_path / "ckpt").glob("last*.ckpt")
    assert b"ww-secret-pw" not in path.read_bytes()
    state = torch.load(path, weights_only=False)["callbacks"]
    assert any("wattwise:***@" in key for key in state)
    # resuming with the same URL finds its state under the same (masked) key
    again = EnergyCallback(ledger=pg_url)
    resumed = trainer(tmp_path, [again, ModelCheckpoint(dirpath=tmp_path / "ckpt")], max_epochs=2)
    resumed.fit(TinyModel(), loader(), loader(32), ckpt_path=path)
    assert again.run_id == cb.run_id
    with Ledger(pg_url) as book:
        book.sync()
        assert book.get_run(cb.run_id).epochs == 2


def test_a_wrong_password_loses_nothing_the_right_one_ships_it(pg_url, pg_cluster, caplog, capsys):
    database = pg_url.rsplit("/", 1)[1]
    wrong = pg_cluster.url(database, password="wrong-pw")
    with caplog.at_level(logging.WARNING, logger="wattwise"):
        book = Ledger(wrong)
        run_id = _fit(book, "mlp")  # training writes: no exception
        wait_for(lambda: book._spool.last_error is not None, what="the refused ship")
        book.close()
    (warning,) = [r.getMessage() for r in caplog.records if "unavailable" in r.getMessage()]
    assert "refused the password" in warning and "wrong-pw" not in warning
    code, out, err = run_cli(capsys, "runs", "sync", "--ledger", wrong)
    assert code == 2 and "refused the password" in err and "wrong-pw" not in out + err
    code, out, err = run_cli(capsys, "runs", "sync", "--ledger", pg_url, "--json")
    assert code == 0 and json.loads(out)["shipped"] == 1, err
    assert server(pg_url).get_run(run_id).energy_j == 3600 + 7200 + 2 * 360


def test_run_filters_on_a_server_ledger_see_shipped_and_waiting_runs(pg_url, capsys):
    book = Ledger(pg_url)
    book._spool._start = lambda: None
    alice = book.begin_run(architecture="vit", scheduler={"user": "alice", "job_id": "77_1"})
    book.finish_run(alice)
    assert book.sync() == (1, 0)  # alice's run is on the server
    bob = book.begin_run(architecture="vit", scheduler={"user": "bob", "job_id": "78"})
    book.finish_run(bob)  # bob's waits in the spool
    assert book.waiting_runs() == [bob]
    for user, expected, waiting in (("alice", alice, False), ("bob", bob, True)):
        code, out, err = run_cli(capsys, "runs", "--ledger", pg_url, "--user", user, "--json")
        assert code == 0, err
        (row,) = json.loads(out)
        assert row["run_id"] == expected and row["waiting"] is waiting
        assert row["scheduler"]["user"] == user
    code, out, err = run_cli(capsys, "runs", "--ledger", pg_url, "--job", "77", "--json")
    assert code == 0 and [r["run_id"] for r in json.loads(out)] == [alice], err
    code, out, err = run_cli(
        capsys, "runs", "--ledger", pg_url, "--since", "1d", "--status", "finished", "--json"
    )
    assert code == 0 and {r["run_id"] for r in json.loads(out)} == {alice, bob}, err
    assert book.sync() == (1, 0)
    direct = server(pg_url)
    from wattwise.runfilter import RunFilter

    assert [r.run_id for r in direct.list_runs(RunFilter(user="bob"))] == [bob]
    assert direct.get_run(bob).scheduler == {"user": "bob", "job_id": "78"}


@pytest.mark.slow
def test_sixteen_concurrent_lightning_fits_into_one_server(pg_url, tmp_path):
    """16 processes, each a real Lightning fit with EnergyCallback (3 epochs) into the server
    ledger, all from one folder (one shared spool): every run and every epoch arrives once."""
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    code = (
        "import sys\n"
        f"sys.path.insert(0, {tests_dir!r})\n"
        "from test_callback import TinyModel, loader, trainer\n"
        "from lightning_callbacks import EnergyCallback\n"
        "cb = EnergyCallback(ledger=sys.argv[1], architecture='fit' + sys.argv[2],\n"
        "                    log_metrics=False)\n"
        "trainer(sys.argv[3], [cb], max_epochs=3).fit(TinyModel(), loader(), loader(16))\n"
        "print(cb.run_id)\n"
    )
    env = {**os.environ, "WATTWISE_SPOOL": str(tmp_path / "spool"), "OMP_NUM_THREADS": "1"}
    env.pop("WATTWISE_REPLAY_NVML", None)
    procs = []
    for i in range(16):
        workdir = tmp_path / f"fit{i}"
        workdir.mkdir()
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", code, pg_url, str(i), str(workdir)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                cwd=tmp_path,
            )
        )
    ids = []
    for proc in procs:
        out, err = proc.communicate(timeout=900)  # hang detection only: 16 fits on 2 cores
        assert proc.returncode == 0, err[-3000:]
        ids.append(out.strip().splitlines()[-1])
    Ledger(pg_url).sync()  # whatever the exits left
    direct = server(pg_url)
    runs = direct.list_runs()
    assert sorted(r.run_id for r in runs) == sorted(ids) and len(set(ids)) == 16
    assert {r.architecture for r in runs} == {f"fit{i}" for i in range(16)}
    assert [(r.epochs, r.status) for r in runs] == [(3, "finished")] * 16, [
        (r.architecture, r.epochs, r.status, r.energy_j, r.reason) for r in runs
    ]
    snapshots = direct.snapshots()
    per_run = snapshots.groupby("run_id")["epoch"].apply(sorted).map(list)
    assert per_run.tolist() == [[0, 1, 2]] * 16  # each epoch once, none lost
    phases = direct.phases()
    train = phases[phases["stage"] == "train"]
    per_device = train.groupby(["run_id", "device_id"])["epoch"].nunique()
    assert (per_device == 3).all() and set(train["run_id"]) == set(ids)
    # a run whose phases never shipped showed 0 J (a shipper clearing a newer ship mark)
    assert all(r.energy_j > 0 for r in runs), [(r.architecture, r.energy_j) for r in runs]
    assert not phases.duplicated(["run_id", "epoch", "stage", "device_id", "start_s"]).any()
