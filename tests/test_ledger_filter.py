"""Scheduler metadata in the ledger (schema 5); RunFilter: SQL narrowing agrees with matches()."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from wattwise.errors import BadInput
from wattwise.ledger import Ledger
from wattwise.runfilter import RunFilter

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
ALICE_ARRAY = {
    "user": "alice",
    "job_id": "81234_4",
    "os_user": "alice",
    "slurm": {"job_id": "81238", "array_job_id": "81234", "array_task_id": "4", "user": "alice"},
}


@pytest.fixture
def book(ledger_location):
    """A ledger on each backend (the server one written directly: filters run in its SQL)."""
    if ledger_location.startswith("postgresql://"):
        ledger = Ledger._direct(ledger_location)
    else:
        ledger = Ledger(ledger_location)
    with ledger:
        yield ledger


def add(book, architecture, *, user, job, start, status="finished", tags=()):
    run_id = book.begin_run(
        architecture=architecture,
        tags=tags,
        started_at=start,
        scheduler={"user": user, "job_id": job, "os_user": user},
    )
    if status != "running":
        book.finish_run(run_id, status=status, ended_at=start + timedelta(minutes=5))
    return run_id


@pytest.fixture
def lab(book):
    """Nine runs of four users over six days; returns name -> run id."""
    runs = {
        "a1": add(book, "resnet", user="alice", job="123", start=T0, tags=("sweep",)),
        "a2": add(book, "resnet", user="alice", job="123_4", start=T0 + timedelta(days=1)),
        "a3": add(book, "vit", user="alice", job="1234", start=T0 + timedelta(days=2)),
        "b1": add(book, "vit", user="bob", job="124", start=T0, status="failed", tags=("sweep",)),
        "b2": add(book, "mlp", user="bob", job=None, start=T0 + timedelta(days=3, hours=5)),
        "c1": add(book, "mlp", user="carol", job="pod-x", start=T0 + timedelta(hours=1)),
        "c2": add(book, "mlp", user="carol", job="pod-x_2", start=T0, status="running"),
        # stored as interrupted (a Meter stopped by Ctrl-C), not derived
        "d1": add(
            book, "cnn", user="dave", job=None, start=T0 + timedelta(days=5), status="interrupted"
        ),
    }
    # a run whose process is gone: written by a child process that has ended
    child = (
        "import sys; from wattwise.ledger import Ledger; "
        "print(Ledger(sys.argv[1]).begin_run(architecture='mlp', "
        "scheduler={'user': 'carol', 'job_id': '999'}))"
    )
    runs["gone"] = subprocess.run(
        [sys.executable, "-c", child, book.location_text],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return runs


def ids(book, flt, lab):
    names = {v: k for k, v in lab.items()}
    return sorted(names[r.run_id] for r in book.list_runs(flt))


def test_scheduler_round_trips_and_fills_the_join_columns(book):
    run_id = book.begin_run(architecture="resnet", scheduler=ALICE_ARRAY, started_at=T0)
    rec = book.get_run(run_id)
    assert rec.scheduler == ALICE_ARRAY
    assert (rec.user, rec.job_id) == ("alice", "81234_4")
    as_json = rec.to_json()
    assert as_json["scheduler"] == ALICE_ARRAY
    assert (as_json["user"], as_json["job_id"]) == ("alice", "81234_4")
    row = book.runs().set_index("run_id").loc[run_id]
    assert (row["user"], row["job_id"]) == ("alice", "81234_4")
    assert book._read("SELECT user_name, job_id FROM runs") == [("alice", "81234_4")]


def test_begin_run_collects_this_process_scheduler_by_default(book, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "5551")
    monkeypatch.setenv("SLURM_JOB_USER", "dora")
    monkeypatch.setenv("SLURM_JOB_PARTITION", "gpu")
    rec = book.get_run(book.begin_run(architecture="x"))
    assert (rec.user, rec.job_id) == ("dora", "5551")
    assert rec.scheduler["slurm"]["partition"] == "gpu"
    # an explicit {} records nothing
    assert book.get_run(book.begin_run(architecture="y", scheduler={})).scheduler == {}


def test_a_bad_scheduler_is_refused_and_nothing_written(book):
    with pytest.raises(BadInput, match="scheduler"):
        book.begin_run(architecture="x", scheduler=["alice"])
    assert book.list_runs() == []


def test_merge_carries_the_scheduler(tmp_path):
    with Ledger(tmp_path / "a.db") as a, Ledger(tmp_path / "b.db") as b:
        run_id = a.begin_run(architecture="x", scheduler=ALICE_ARRAY)
        assert b.merge(a.path) == (1, 0)
        assert b.get_run(run_id).scheduler == ALICE_ARRAY
        assert [r.run_id for r in b.list_runs(RunFilter(user="alice", job="81234"))] == [run_id]


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        (RunFilter(user="alice"), ["a1", "a2", "a3"]),
        (RunFilter(job="123"), ["a1", "a2"]),  # 123 and its array task 123_4, not 1234
        (RunFilter(job="pod-x"), ["c1", "c2"]),
        (RunFilter(job="123_4"), ["a2"]),
        (RunFilter(tag="sweep"), ["a1", "b1"]),
        (RunFilter(architecture="mlp"), ["b2", "c1", "c2", "gone"]),
        (RunFilter(status="failed"), ["b1"]),
        (RunFilter(status="running"), ["c2"]),  # this process is alive
        (RunFilter(status="interrupted"), ["d1", "gone"]),
        (RunFilter(user="carol", status="running"), ["c2"]),
        (RunFilter.from_cli(since="2026-11-03", until="2026-11-04"), ["a2", "a3"]),
        (RunFilter.from_cli(until="2026-11-02"), ["a1", "b1", "c1", "c2"]),
        (RunFilter.from_cli(since="2026-11-02T09:30"), ["a2", "a3", "b2", "c1", "d1", "gone"]),
        (RunFilter.from_cli(user="alice", since="2026-11-03T00:00:00+00:00"), ["a2", "a3"]),
        (RunFilter(user="nobody"), []),
        (RunFilter(), ["a1", "a2", "a3", "b1", "b2", "c1", "c2", "d1", "gone"]),
    ],
)
def test_list_runs_filters(book, lab, flt, expected):
    assert ids(book, flt, lab) == expected
    # the SQL narrowing and the in-memory check agree
    assert ids(book, flt, lab) == sorted(
        {v: k for k, v in lab.items()}[r.run_id] for r in book.list_runs() if flt.matches(r)
    )
    frame = book.runs(flt)
    assert sorted({v: k for k, v in lab.items()}[r] for r in frame["run_id"]) == expected


@pytest.mark.parametrize("ledger_location", ["sqlite"], indirect=True)  # SQLite's query plan
def test_filters_use_the_indexes(book, lab):
    for flt, index in (
        (RunFilter(user="alice", since=T0), "runs_user"),
        (RunFilter(job="123"), "runs_job"),
        (RunFilter(since=T0), "runs_started"),
    ):
        condition, params = flt.sql()
        plan = " ".join(
            row[-1]
            for row in book._read(
                f"EXPLAIN QUERY PLAN SELECT key FROM runs WHERE {condition}", params
            )
        )
        assert index in plan, plan


NOW = datetime(2026, 12, 4, 17, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7d", NOW - timedelta(days=7)),
        ("12h", NOW - timedelta(hours=12)),
        ("30m", NOW - timedelta(minutes=30)),
        ("90s", NOW - timedelta(seconds=90)),
        ("2w", NOW - timedelta(weeks=2)),
        ("1.5d", NOW - timedelta(hours=36)),
        ("2026-11-02", datetime(2026, 11, 2, tzinfo=UTC)),
        ("2026-11-02T09:30", datetime(2026, 11, 2, 9, 30, tzinfo=UTC)),
        ("2026-11-02T10:30+01:00", datetime(2026, 11, 2, 9, 30, tzinfo=UTC)),
        ("2026-11-02 09:30:00Z", datetime(2026, 11, 2, 9, 30, tzinfo=UTC)),
    ],
)
def test_since_forms(text, expected):
    assert RunFilter.from_cli(since=text, now=NOW).since == expected


def test_a_date_alone_until_covers_that_whole_day():
    until = RunFilter.from_cli(until="2026-11-02", now=NOW).until
    assert until == datetime(2026, 11, 2, 23, 59, 59, 999999, tzinfo=UTC)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"since": "yesterday"}, r"--since 'yesterday' is not a time; accepted: an ISO date"),
        ({"until": "7x"}, r"--until '7x' is not a time; accepted:.*12h, 7d"),
        ({"since": "2026-13-01"}, r"--since '2026-13-01' is not a time"),
        ({"status": "done"}, r"--status 'done' is not one of running, finished, failed, inter"),
        ({"user": " "}, r"--user ' ' is empty"),
        ({"since": "2026-11-03", "until": "2026-11-02"}, r"--since .* is after --until"),
    ],
)
def test_bad_cli_values_name_the_value_and_what_is_accepted(kwargs, message):
    with pytest.raises(BadInput, match=message):
        RunFilter.from_cli(**kwargs, now=NOW)


def test_empty_and_describe():
    assert RunFilter().empty and RunFilter.from_cli().empty
    flt = RunFilter.from_cli(user="alice", status="Finished", since="2026-11-02", now=NOW)
    assert not flt.empty and flt.status == "finished"
    assert flt.describe() == "--user alice --since 2026-11-02T00:00:00+00:00 --status finished"
