"""Ledger: schema round trip, DataFrames, lineage, timeline, migration, bad files, merge."""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import math
import multiprocessing
import os
import pathlib
import pickle
import shutil
import sqlite3
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta

import pytest

from wattwise.errors import BadInput, LedgerFormatError
from wattwise.ledger import (
    APPLICATION_ID,
    MAX_TIMELINE_POINTS,
    PHASES_COLUMNS,
    RUNS_COLUMNS,
    SCHEMA_VERSION,
    SNAPSHOTS_COLUMNS,
    Ledger,
)
from wattwise.ledger import core as ledger_module
from wattwise.ledger import schema as ledger_schema
from wattwise.ledger import sqlite as ledger_sqlite
from wattwise.runfilter import RunFilter
from wattwise.types import ArchSnapshot, DeviceInfo, PhaseEnergy

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "ledger"
GPU_UUID = "GPU-5f0b2c1e-8d6a-4f3b-9e21-7c4d8a9b0e12"
GPU = DeviceInfo(
    f"gpu:{GPU_UUID}",
    "gpu",
    "NVIDIA H200",
    "counter",
    uuid=GPU_UUID,
    index=0,
    flags=frozenset({"averaged_power"}),
    details={"power_limit_w": 700.0},
)
CPU = DeviceInfo("cpu:machine", "cpu", "Intel Xeon", "estimate", flags=frozenset({"estimated"}))


def phase(stage, device, energy_j, *, start_s=0.0, end_s=10.0, flags=()):
    return PhaseEnergy(
        name=stage,
        index=0,
        device_id=device.device_id,
        kind=device.kind,
        start_s=start_s,
        end_s=end_s,
        energy_j=energy_j,
        method=device.method,
        mean_power_w=energy_j / (end_s - start_s),
        peak_power_w=1.5 * energy_j / (end_s - start_s),
        flags=frozenset(flags),
    )


class Clock:
    """The ledger's wall clock (``_now_iso``), set by the test."""

    def __init__(self, at: datetime):
        self.at = at

    def iso(self) -> str:
        return self.at.isoformat()

    def advance(self, seconds: float) -> datetime:
        self.at += timedelta(seconds=seconds)
        return self.at


@pytest.fixture
def clock(monkeypatch):
    fake = Clock(datetime(2026, 3, 1, 12, 0, tzinfo=UTC))
    monkeypatch.setattr(ledger_module, "_now_iso", fake.iso)
    return fake


def sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def book(ledger_location):
    """A ledger on each backend; the server one writes straight to the server (the spooled
    path has its own tests in test_ledger_postgres.py), so every query runs on both."""
    if ledger_location.startswith("postgresql://"):
        ledger = Ledger._direct(ledger_location)
    else:
        ledger = Ledger(ledger_location)
    with ledger:
        yield ledger


@pytest.fixture
def sqlite_book(tmp_path):
    """A SQLite ledger, for what only a file has (its pragmas, other sqlite3 connections)."""
    with Ledger(tmp_path / "ledger.db") as ledger:
        yield ledger


def record_fit(book, *, architecture="mlp", parent=None, gpu_j=(1000.0, 1200.0), **kwargs):
    """A run with one epoch per entry of gpu_j: train on GPU and CPU, then validate on the GPU."""
    run_id = book.begin_run(
        architecture=architecture, parent_run_id=parent, devices=[GPU, CPU], **kwargs
    )
    for epoch, energy_j in enumerate(gpu_j):
        book.add_phases(
            run_id,
            [
                phase("train", GPU, energy_j, flags={"averaged_power"}),
                phase("train", CPU, 50.0, flags={"estimated"}),
                phase("validate", GPU, 100.0, start_s=10.0, end_s=12.0, flags={"short_phase"}),
            ],
            epoch=epoch,
            snapshot=ArchSnapshot(1000 * (epoch + 1), 1000 * (epoch + 1) + 10, "MLP", architecture),
            epochs_completed=epoch + 1,
        )
    return run_id


def test_round_trip_keeps_every_field(book, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not a git repository: no commit recorded
    started = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    run_id = record_fit(
        book,
        tags=["sweep-1", "lr=3e-4"],
        settings={"sample_hz": 10, "cpu_mode": "machine"},
        region="FRA",
        pricing="aws:p5.48xlarge",
        started_at=started,
        versions={"torch": "9.9.9"},
    )
    book.finish_run(
        run_id,
        metrics={"val_loss": 0.25, "val_acc": 0.9},
        reason="max_epochs",
        ended_at=datetime(2026, 3, 1, 12, 30, tzinfo=UTC),
    )

    rec = book.get_run(run_id)
    assert rec.architecture == "mlp"
    assert rec.status == "finished"
    assert rec.started_at == "2026-03-01T12:00:00+00:00"
    assert rec.ended_at == "2026-03-01T12:30:00+00:00"
    assert rec.duration_s == pytest.approx(1800.0)
    assert rec.epochs == 2
    # 2 epochs: GPU 1000 + 1200 train + 2 x 100 validate = 2400 J, CPU 2 x 50 = 100 J.
    assert rec.energy_by_kind_j == pytest.approx({"gpu": 2400.0, "cpu": 100.0, "ram": 0.0})
    assert rec.energy_j == pytest.approx(2500.0)
    assert rec.energy_wh == pytest.approx(2500.0 / 3600.0)
    assert rec.methods == {GPU.device_id: "counter", CPU.device_id: "estimate"}
    assert rec.method_mix == "counter 96%, estimate 4%"
    assert rec.flags == ["averaged_power", "estimated", "short_phase"]
    assert rec.tags == ["sweep-1", "lr=3e-4"]
    assert rec.settings == {"sample_hz": 10, "cpu_mode": "machine"}
    assert (rec.region, rec.pricing) == ("FRA", "aws:p5.48xlarge")
    assert rec.metrics == {"val_loss": 0.25, "val_acc": 0.9}
    assert rec.reason == "max_epochs"
    assert rec.pid == os.getpid()
    assert rec.git_commit is None
    assert rec.versions["torch"] == "9.9.9"  # given versions win
    assert rec.versions["python"] == ".".join(map(str, sys.version_info[:3]))
    assert rec.versions["wattwise"] == "0.1.0"
    gpu = next(d for d in rec.devices if d["kind"] == "gpu")
    assert gpu == {
        "device_id": GPU.device_id,
        "kind": "gpu",
        "name": "NVIDIA H200",
        "uuid": GPU_UUID,
        "method": "counter",
        "details": {"power_limit_w": 700.0},
        "flags": ["averaged_power"],
    }
    as_json = rec.to_json()
    assert as_json["metrics"] == {"val_loss": 0.25, "val_acc": 0.9}
    for key in ("run_id", "architecture", "status", "epochs", "duration_s", "energy_wh"):
        assert as_json[key] == getattr(rec, key)
    assert as_json["started_at"] == rec.started_at

    # A new Ledger object (another process, say) reads the same thing back.
    with Ledger(book.location_text) as again:
        assert again.get_run(run_id) == rec


def test_dataframes_have_the_contract_columns_and_values(book):
    first = record_fit(book, gpu_j=(1000.0, 1200.0))
    book.finish_run(first, metrics={"val_loss": 0.5})
    second = record_fit(book, architecture="wide", gpu_j=(3600.0,))

    runs = book.runs()
    assert list(runs.columns) == [*RUNS_COLUMNS, "metric/val_loss"]
    row = runs.set_index("run_id").loc[first]
    assert row["energy_j"] == pytest.approx(2500.0)
    assert row["gpu_energy_j"] == pytest.approx(2400.0)
    assert row["cpu_energy_j"] == pytest.approx(100.0)
    assert row["ram_energy_j"] is None or row["ram_energy_j"] != row["ram_energy_j"]  # no RAM
    # device was measured: missing, never a silent 0 J
    assert book.get_run(first).to_json()["energy_by_kind_wh"]["ram"] is None
    assert row["n_gpus"] == 1
    assert row["gpu_name"] == "NVIDIA H200"
    assert row["cpu_name"] == "Intel Xeon"
    assert row["params_start"] == 1000 and row["params_end"] == 2000
    assert row["metric/val_loss"] == 0.5
    assert row["flags"] == "averaged_power,estimated,short_phase"
    wide = runs.set_index("run_id").loc[second]
    assert wide["energy_wh"] == pytest.approx((3600.0 + 50.0 + 100.0) / 3600.0)
    assert wide["status"] == "running"  # this process is alive

    phases = book.phases()
    assert list(phases.columns) == list(PHASES_COLUMNS)
    assert len(phases) == 3 * 3
    mine = book.phases(first[:8])  # a unique prefix works
    assert len(mine) == 6
    validate = mine[(mine["stage"] == "validate") & (mine["epoch"] == 1)].iloc[0]
    assert validate["device_id"] == GPU.device_id
    assert validate["kind"] == "gpu"
    assert validate["device_name"] == "NVIDIA H200"
    assert validate["duration_s"] == pytest.approx(2.0)
    assert validate["mean_power_w"] == pytest.approx(50.0)
    assert validate["peak_power_w"] == pytest.approx(75.0)
    assert validate["flags"] == "short_phase"
    assert mine["energy_j"].sum() == pytest.approx(2500.0)

    snaps = book.snapshots(first)
    assert list(snaps.columns) == list(SNAPSHOTS_COLUMNS)
    assert snaps["trainable_params"].tolist() == [1000, 2000]
    assert snaps["epoch"].tolist() == [0, 1]


def test_settle_replaces_a_provisional_row_in_place(book):
    """An epoch end writes its last phase provisional; the next commit settles that row (same
    device, stage, start and end) with the final figures instead of adding a second one."""
    run_id = book.begin_run(architecture="mlp", devices=[GPU, CPU])
    early = phase("validate", GPU, 90.0, start_s=10.0, end_s=12.0, flags={"provisional"})
    book.add_phases(run_id, [phase("train", GPU, 1000.0), early], epoch=0, epochs_completed=1)
    assert book.get_run(run_id).energy_j == pytest.approx(1090.0)
    final = phase("validate", GPU, 101.5, start_s=10.0, end_s=12.0)
    missing = phase("validate", CPU, 7.0, start_s=10.0, end_s=12.0)  # never written: added
    book.add_phases(
        run_id,
        [phase("train", GPU, 800.0, start_s=12.0, end_s=20.0)],
        epoch=1,
        epochs_completed=2,
        settle=[(0, final), (0, missing)],
    )
    rows = book.phases(run_id)
    assert len(rows) == 4
    validate = rows[(rows["stage"] == "validate") & (rows["kind"] == "gpu")].iloc[0]
    assert validate["energy_j"] == pytest.approx(101.5) and validate["flags"] == ""
    assert validate["epoch"] == 0 and validate["mean_power_w"] == pytest.approx(50.75)
    run = book.get_run(run_id)
    assert run.energy_j == pytest.approx(1000.0 + 101.5 + 7.0 + 800.0) and run.epochs == 2


def test_empty_ledger_gives_empty_frames_with_columns(book):
    assert book.list_runs() == []
    assert list(book.runs().columns) == list(RUNS_COLUMNS)
    assert book.phases().empty and list(book.phases().columns) == list(PHASES_COLUMNS)
    assert book.snapshots().empty


def test_reading_a_missing_ledger_creates_nothing(tmp_path):
    path = tmp_path / "typo.db"
    with Ledger(path) as book:
        assert book.list_runs() == []
        assert book.runs().empty and book.phases().empty
        with pytest.raises(BadInput, match="no run 'abc'"):
            book.get_run("abc")
    assert list(tmp_path.iterdir()) == []


def test_default_path_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("WATTWISE_LEDGER", str(tmp_path / "env.db"))
    assert Ledger().path == tmp_path / "env.db"
    monkeypatch.delenv("WATTWISE_LEDGER")
    monkeypatch.chdir(tmp_path)
    assert Ledger().path == tmp_path / "wattwise.db"
    assert not (tmp_path / "wattwise.db").exists()  # nothing is created before the first use


def test_prefix_lookup_unknown_and_ambiguous(book):
    a = book.begin_run(architecture="a", run_id="abc-1")
    book.begin_run(architecture="b", run_id="abd-2")
    assert book.get_run("abc").run_id == a
    with pytest.raises(BadInput, match=r"'ab' is ambiguous.*abc-1, abd-2"):
        book.get_run("ab")
    with pytest.raises(BadInput, match="no run 'zzz'"):
        book.get_run("zzz")
    with pytest.raises(BadInput, match="already in ledger"):
        book.begin_run(architecture="again", run_id="abc-1")


def test_non_finite_metrics_are_kept_but_null_in_json(book):
    run_id = book.begin_run(architecture="diverged")
    book.finish_run(run_id, status="failed", metrics={"val_loss": float("nan"), "lr": 0.1})
    rec = book.get_run(run_id)
    assert math.isnan(rec.metrics["val_loss"])
    assert rec.to_json()["metrics"] == {"val_loss": None, "lr": 0.1}
    json.dumps(rec.to_json(), allow_nan=False)  # strict JSON


def test_bad_values_are_refused(book):
    run_id = book.begin_run(architecture="a")
    with pytest.raises(BadInput, match="'done' is not one of running, finished"):
        book.finish_run(run_id, status="done")
    with pytest.raises(BadInput, match="energy_j=nan"):
        book.add_phases(run_id, [phase("train", GPU, float("nan"))], epoch=0)
    with pytest.raises(BadInput, match="no run 'nope'"):
        book.add_phases("nope", [phase("train", GPU, 1.0)], epoch=0)
    with pytest.raises(BadInput, match="architecture ''"):
        book.begin_run(architecture="")
    assert book.phases().empty  # nothing half-written


def test_lineage_sums_by_hand(book):
    pretrain = record_fit(book, architecture="pretrain", gpu_j=(1000.0, 1200.0))  # 2500 J
    finetune = record_fit(book, architecture="finetune", parent=pretrain, gpu_j=(400.0,))  # 550 J
    distill = record_fit(book, architecture="distill", parent=finetune, gpu_j=(100.0,))  # 250 J
    assert book.ancestors(distill) == [finetune, pretrain]
    assert book.ancestors(pretrain) == []
    assert book.own_energy_j(finetune) == pytest.approx(400.0 + 50.0 + 100.0)
    assert book.own_energy_j(distill) == pytest.approx(100.0 + 50.0 + 100.0)
    assert book.cumulative_energy_j(pretrain) == pytest.approx(2500.0)
    assert book.cumulative_energy_j(finetune) == pytest.approx(2500.0 + 550.0)
    assert book.cumulative_energy_j(distill) == pytest.approx(2500.0 + 550.0 + 250.0)
    # A parent from another ledger is kept as a reference but adds nothing here.
    orphan = record_fit(book, architecture="orphan", parent="elsewhere-123", gpu_j=(10.0,))
    assert book.get_run(orphan).parent_run_id == "elsewhere-123"
    assert book.ancestors(orphan) == []
    assert book.cumulative_energy_j(orphan) == pytest.approx(160.0)


def test_resume_reopens_and_continues(book):
    run_id = record_fit(book, gpu_j=(1000.0,))
    book.finish_run(run_id)
    # Begun by another process: resuming here makes this process its owner.
    book._connection().execute(
        "UPDATE runs SET host = 'another-host', pid = 1, proc_started_at = 0.0, boot_id = 'old'"
    )
    book.reopen_run(run_id)
    rec = book.get_run(run_id)
    assert (rec.status, rec.ended_at) == ("running", None)
    procinfo = ledger_module._procinfo
    assert book._read("SELECT host, pid, proc_started_at, boot_id FROM runs") == [
        (
            procinfo.host(),
            os.getpid(),
            procinfo.process_start_time(os.getpid()),
            procinfo.boot_id(),
        )
    ]
    book.add_phases(run_id, [phase("train", GPU, 500.0)], epoch=1, epochs_completed=2)
    book.finish_run(run_id)
    rec = book.get_run(run_id)
    assert (rec.status, rec.epochs) == ("finished", 2)
    assert rec.energy_j == pytest.approx(1150.0 + 500.0)


def test_a_resume_leaves_the_time_between_processes_out_of_the_duration(book, clock):
    """Regression: reopen_run kept started_at, so the hours between a finished (or crashed) fit
    and its resume counted as run time, in durations and rental costs."""
    t0 = clock.at
    run_id = record_fit(book, gpu_j=(1000.0,), started_at=t0)
    book.finish_run(run_id, ended_at=clock.advance(100.0))
    clock.advance(3600.0)  # the next process resumes an hour later
    book.reopen_run(run_id)
    clock.advance(20.0)
    assert book.get_run(run_id).duration_s == pytest.approx(100.0 + 20.0)  # while running
    book.add_phases(run_id, [phase("train", GPU, 500.0)], epoch=1, epochs_completed=2)
    book.finish_run(run_id, ended_at=clock.advance(30.0))
    rec = book.get_run(run_id)
    assert rec.duration_s == pytest.approx(100.0 + 50.0)
    assert rec.paused_s == pytest.approx(3600.0)
    assert rec.started_at == t0.isoformat()  # the run still began when it began
    # A second resume (e.g. trainer.test() after the fit) adds its own gap.
    clock.advance(600.0)
    book.reopen_run(run_id)
    book.finish_run(run_id, ended_at=clock.advance(25.0))
    rec = book.get_run(run_id)
    assert rec.duration_s == pytest.approx(175.0)
    assert rec.to_json()["duration_s"] == pytest.approx(175.0)
    assert book.runs().set_index("run_id").loc[run_id, "duration_s"] == pytest.approx(175.0)
    # A clock that went back before the run's end (another host's clock) adds no pause.
    clock.at = t0
    book.reopen_run(run_id)
    assert book.get_run(run_id).paused_s == pytest.approx(4200.0)


def test_a_crashed_run_resumed_later_leaves_out_the_time_since_its_last_write(book, clock):
    """A process that died mid-fit leaves no end: its last write (updated_at) is its end."""
    run_id = book.begin_run(architecture="mlp", started_at=clock.at)
    clock.advance(30.0)
    book.add_phases(run_id, [phase("train", GPU, 500.0)], epoch=0, epochs_completed=1)
    # The process is gone: same pid, but a process that started at another time holds it.
    book._connection().execute("UPDATE runs SET proc_started_at = proc_started_at - 3600")
    clock.advance(7200.0)  # found the next morning
    rec = book.get_run(run_id)
    assert (rec.status, rec.ended_at) == ("interrupted", None)
    assert rec.duration_s == pytest.approx(30.0)
    book.reopen_run(run_id)
    clock.advance(10.0)
    book.add_phases(run_id, [phase("train", GPU, 500.0)], epoch=1, epochs_completed=2)
    book.finish_run(run_id, ended_at=clock.advance(30.0))
    rec = book.get_run(run_id)
    assert rec.status == "finished"
    assert rec.duration_s == pytest.approx(30.0 + 40.0)
    assert rec.paused_s == pytest.approx(7200.0)


def test_update_settings_merges_keys_and_keeps_the_others(book):
    run_id = book.begin_run(architecture="a", settings={"precision": "bf16-mixed", "world_size": 2})
    other = book.begin_run(architecture="b", settings={"precision": "32-true"})
    book.update_settings(run_id, {"steps_per_epoch": 4, "peak_mem_gib": 3.5})
    book.update_settings(run_id, {"peak_mem_gib": 5.25})  # a later, larger figure replaces it
    assert book.get_run(run_id).settings == {
        "precision": "bf16-mixed",
        "world_size": 2,
        "steps_per_epoch": 4,
        "peak_mem_gib": 5.25,
    }
    assert book.get_run(other).settings == {"precision": "32-true"}
    assert book.get_run(run_id).status == "running"  # nothing else about the run changed


def test_update_settings_of_an_unknown_run_or_with_bad_values_is_refused(book):
    run_id = book.begin_run(architecture="a", settings={"precision": "32-true"})
    with pytest.raises(BadInput, match="no run 'nope'"):
        book.update_settings("nope", {"peak_mem_gib": 1.0})
    with pytest.raises(BadInput, match="must be a mapping"):
        book.update_settings(run_id, [("peak_mem_gib", 1.0)])
    assert book.get_run(run_id).settings == {"precision": "32-true"}
    assert len(book.list_runs()) == 1


def test_update_settings_beside_a_reader_in_another_connection(sqlite_book):
    """A reader holding a read transaction open (another process reading the ledger) neither
    blocks the merge nor sees half of it: its snapshot stays whole, the next read sees all."""
    run_id = sqlite_book.begin_run(architecture="a", settings={"precision": "32-true"})
    reader = sqlite3.connect(sqlite_book.path, isolation_level=None, check_same_thread=False)
    try:
        reader.execute("BEGIN")
        query = "SELECT settings FROM runs WHERE run_id = ?"
        assert json.loads(reader.execute(query, (run_id,)).fetchone()[0]) == {
            "precision": "32-true"
        }
        sqlite_book.update_settings(run_id, {"steps_per_epoch": 7})  # not blocked by the reader
        assert json.loads(reader.execute(query, (run_id,)).fetchone()[0]) == {
            "precision": "32-true"
        }
        reader.execute("COMMIT")
        assert json.loads(reader.execute(query, (run_id,)).fetchone()[0]) == {
            "precision": "32-true",
            "steps_per_epoch": 7,
        }
    finally:
        reader.close()

    # and a reader thread polling through its own Ledger while the run is updated 50 times
    seen: list[dict] = []
    stop, reading = threading.Event(), threading.Event()

    def poll():
        with Ledger(sqlite_book.location_text) as other:
            while not stop.is_set():
                seen.append(other.get_run(run_id).settings)
                reading.set()

    thread = threading.Thread(target=poll)
    thread.start()
    # on a loaded machine the 50 writes could all be done before the reader's first read
    assert reading.wait(timeout=60)
    try:
        # the updates start once the reader reads (on a loaded machine the thread may not
        # have run at all before 50 quick updates were over, leaving nothing to check)
        assert reading.wait(timeout=60)
        for i in range(1, 51):
            sqlite_book.update_settings(run_id, {"peak_mem_gib": float(i)})
    finally:
        stop.set()
        thread.join(timeout=60)
    assert seen and all(s["precision"] == "32-true" and s["steps_per_epoch"] == 7 for s in seen)
    peaks = [s.get("peak_mem_gib", 0.0) for s in seen]
    assert peaks == sorted(peaks)  # each read is one committed state, in commit order
    assert sqlite_book.get_run(run_id).settings["peak_mem_gib"] == 50.0


def test_add_epochs_writes_many_epochs_at_once(book):
    run_id = book.begin_run(architecture="replayed", devices=[GPU])
    book.add_epochs(
        run_id,
        [(epoch, [phase("train", GPU, 10.0 * (epoch + 1))], None) for epoch in range(4)],
        epochs_completed=4,
    )
    assert book.get_run(run_id).epochs == 4
    assert book.own_energy_j(run_id) == pytest.approx(10 + 20 + 30 + 40)


def test_phase_of_a_device_without_info_is_kept(book):
    run_id = book.begin_run(architecture="a")
    ram = DeviceInfo("ram", "ram", "DRAM", "estimate")
    book.add_phases(run_id, [phase("train", ram, 36.0)], epoch=0)
    rec = book.get_run(run_id)
    assert rec.energy_by_kind_j["ram"] == pytest.approx(36.0)
    assert rec.methods == {"ram": "estimate"}
    frame = book.phases(run_id)
    assert frame["kind"].tolist() == ["ram"]
    # Its DeviceInfo arriving later fills the name in.
    book.add_phases(run_id, [], epoch=1, devices=[ram])
    assert book.phases(run_id)["device_name"].tolist() == ["DRAM"]


def test_timeline_is_bounded_and_averaged(book):
    run_id = book.begin_run(architecture="a", devices=[GPU])
    n = 3 * MAX_TIMELINE_POINTS
    book.add_timeline(run_id, GPU.device_id, [(0.1 * i, 100.0 + i % 3) for i in range(n)])
    series = book.timeline(run_id)[GPU.device_id]
    assert len(series) == MAX_TIMELINE_POINTS
    # Buckets of three consecutive points: powers 100, 101, 102 average to 101.
    assert series[0] == pytest.approx((0.1, 101.0))
    assert all(p == pytest.approx(101.0) for _, p in series)
    book.add_timeline(run_id, GPU.device_id, [(1e6, 500.0)])
    assert len(book.timeline(run_id)[GPU.device_id]) <= MAX_TIMELINE_POINTS
    book.add_timeline(run_id, "cpu:machine", [(0.0, 20.0), (1.0, 22.0)])
    assert book.timeline(run_id)["cpu:machine"] == [(0.0, 20.0), (1.0, 22.0)]


def test_remove_deletes_only_that_run(book):
    keep = record_fit(book, architecture="keep")
    drop = record_fit(book, architecture="drop")
    book.add_timeline(drop, GPU.device_id, [(0.0, 1.0)])
    book.remove(drop[:10])
    assert [r.run_id for r in book.list_runs()] == [keep]
    assert set(book.phases()["run_id"]) == {keep}
    assert set(book.snapshots()["run_id"]) == {keep}
    counts = [book._read(f"SELECT count(*) FROM {t}")[0][0] for t in ("devices", "timeline")]
    assert counts == [2, 0]


def test_running_run_of_a_dead_process_shows_interrupted(book):
    child = (
        "import sys; from wattwise.ledger import Ledger; "
        "print(Ledger(sys.argv[1]).begin_run(architecture='gone'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", child, book.location_text],
        capture_output=True,
        text=True,
        check=True,
    )
    run_id = done.stdout.strip()
    rec = book.get_run(run_id)
    assert rec.status == "interrupted"
    assert rec.duration_s is not None and rec.duration_s >= 0
    assert book._read("SELECT status FROM runs")[0][0] == "running"  # reading changes nothing


def test_reused_pid_is_not_taken_for_the_run_process(book, monkeypatch):
    run_id = book.begin_run(architecture="a")
    live = book._read("SELECT pid, proc_started_at FROM runs WHERE run_id = ?", (run_id,))[0]
    assert book.get_run(run_id).status == "running"
    # Same pid, but the process holding it started at another time: the pid was reused.
    conn = book._connection()
    conn.execute("UPDATE runs SET proc_started_at = proc_started_at - 3600")
    assert book.get_run(run_id).status == "interrupted"
    # A run of another host cannot be judged from here: it stays running.
    conn.execute("UPDATE runs SET host = 'another-host', pid = 999999999")
    assert book.get_run(run_id).status == "running"
    # The same host after a reboot: interrupted, though a live process holds the recorded pid
    # (the boot id alone decides; a fixed one, so the check runs where /proc has none).
    monkeypatch.setattr(ledger_module._procinfo, "boot_id", lambda: "this-boot")
    conn.execute(
        "UPDATE runs SET host = ?, pid = ?, proc_started_at = ?, boot_id = 'this-boot'",
        (ledger_module._procinfo.host(), *live),
    )
    assert book.get_run(run_id).status == "running"
    conn.execute("UPDATE runs SET boot_id = 'an-older-boot'")
    assert book.get_run(run_id).status == "interrupted"


def test_ledger_pickles_and_is_usable_from_another_thread(book):
    run_id = book.begin_run(architecture="a")
    clone = pickle.loads(pickle.dumps(book))
    assert copy.deepcopy(book).path == book.path == clone.path
    errors = []

    def write():
        try:
            book.add_phases(run_id, [phase("train", GPU, 7.0)], epoch=0)
            clone.add_phases(run_id, [phase("train", CPU, 3.0)], epoch=0)
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    worker = threading.Thread(target=write)
    worker.start()
    worker.join()
    assert errors == []
    assert book.own_energy_j(run_id) == pytest.approx(10.0)
    clone.close()


def test_a_write_waits_out_a_lock_longer_than_the_busy_timeout(tmp_path, monkeypatch):
    monkeypatch.setattr(ledger_sqlite, "_BUSY_TIMEOUT_S", 0.01)
    with Ledger(tmp_path / "l.db") as book:
        run_id = book.begin_run(architecture="a")
        other = sqlite3.connect(book.path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")  # another process holding the write lock for 0.5 s
        release = threading.Timer(0.5, lambda: other.execute("COMMIT"))
        release.start()
        try:
            book.add_phases(run_id, [phase("train", GPU, 5.0)], epoch=0)  # retried, not raised
        finally:
            release.join()
            other.close()
        assert book.own_energy_j(run_id) == pytest.approx(5.0)


def test_threads_sharing_one_ledger_lose_nothing(book):
    run_ids = [book.begin_run(architecture=f"t{i}") for i in range(4)]

    def write(run_id):
        for epoch in range(25):
            book.add_phases(
                run_id, [phase("train", GPU, 1.0), phase("train", CPU, 1.0)], epoch=epoch
            )

    threads = [threading.Thread(target=write, args=(rid,)) for rid in run_ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert book.phases().groupby("run_id").size().to_dict() == dict.fromkeys(run_ids, 50)


def _write_in_child(book, run_id):
    book.add_phases(run_id, [phase("train", GPU, 1.0)], epoch=0)
    sys.exit(0 if book._conn_pid == os.getpid() else 1)  # it opened its own connection


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_uses_a_connection_of_its_own(book):
    run_id = book.begin_run(architecture="a")  # the parent's connection is open
    child = multiprocessing.get_context("fork").Process(target=_write_in_child, args=(book, run_id))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    book.add_phases(run_id, [phase("train", CPU, 2.0)], epoch=1)
    assert book.own_energy_j(run_id) == pytest.approx(3.0)
    assert sorted(book.phases(run_id)["epoch"]) == [0, 1]


# ---------------------------------------------------------------------------------- schema


def test_new_file_is_marked_and_current(sqlite_book):
    sqlite_book.begin_run(architecture="a")  # the first write creates the file
    conn = sqlite3.connect(sqlite_book.path)
    try:
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_released_migrations_are_the_frozen_fixture_schemas():
    """MIGRATIONS[0] to [3] are released: they must stay the DDL the fixtures were built from."""
    spec = importlib.util.spec_from_file_location("make_fixtures", FIXTURES / "make_fixtures.py")
    make_fixtures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_fixtures)

    def statements(ddl):
        return [" ".join(part.split()) for part in ddl.split(";") if part.strip()]

    assert statements(ledger_schema.MIGRATIONS[0]) == statements(make_fixtures.V1_DDL)
    assert statements(ledger_schema.MIGRATIONS[1]) == statements(make_fixtures.V2_STEP)
    assert statements(ledger_schema.MIGRATIONS[2]) == statements(make_fixtures.V3_STEP)
    assert statements(ledger_schema.MIGRATIONS[3]) == statements(make_fixtures.V4_STEP)
    assert make_fixtures.APPLICATION_ID == APPLICATION_ID


@pytest.mark.parametrize("version", range(1, SCHEMA_VERSION))
def test_every_earlier_schema_version_opens_and_upgrades(tmp_path, version, clock):
    fixture = FIXTURES / f"v{version}.db"
    assert fixture.is_file(), f"add {fixture.name} (tests/fixtures/ledger/make_fixtures.py)"
    path = tmp_path / fixture.name
    shutil.copy(fixture, path)
    with Ledger(path) as book:
        runs = book.runs().set_index("run_id")
        # The fixture's content, worked out by hand (see make_fixtures.py).
        pretrain, finetune = (
            "0b8f3c52-6a8e-4d0f-9a51-3f1c2e7d9b10",
            "7d41e0a9-2c3b-4f5e-8a6d-1b9c0e2f3a47",
        )
        assert runs.loc[pretrain, "energy_j"] == pytest.approx(3 * (1000 + 50 + 100 + 5))
        assert runs.loc[pretrain, "gpu_energy_j"] == pytest.approx(3 * 1100)
        assert runs.loc[pretrain, "params_end"] == 1500
        # durations stay what they were: rows from before version 4 were never paused; the
        # v4 fixture's pretraining run was paused 300 s
        paused = 300.0 if version >= 4 else 0.0
        assert runs.loc[pretrain, "duration_s"] == pytest.approx(1800.0 - paused)
        assert book.get_run(pretrain).paused_s == paused
        assert runs.loc[finetune, "duration_s"] == pytest.approx(600.0)
        assert book.get_run(finetune).paused_s == 0.0
        assert runs.loc[finetune, "status"] == "finished"
        assert book.cumulative_energy_j(finetune) == pytest.approx(3465.0 + 420.0)
        assert book.get_run(pretrain).reason is None
        if version >= 2:  # what version 2 added survives the upgrade
            assert book.get_run(finetune).reason == "max_epochs"
            assert book.timeline(pretrain)[f"gpu:{GPU_UUID}"] == [
                (0.0, 300.0),
                (1.0, 310.0),
                (2.0, 305.0),
            ]
        snaps = book.snapshots(pretrain)
        assert list(snaps["epoch"]) == [0, 1, 2]
        if version >= 3:  # what version 3 added survives the upgrade
            assert list(snaps["metrics"]) == [{"val_loss": v} for v in (0.5, 0.3, 0.25)]
            assert list(snaps["train_samples"]) == [640, 640, 640]
        else:  # epochs recorded before version 3 have no per-epoch metrics or sample counts
            assert snaps["metrics"].isna().all() and snaps["train_samples"].isna().all()
        # Runs recorded before version 5 have no scheduler metadata: unknown, never invented.
        assert book.get_run(pretrain).scheduler == {}
        assert runs.loc[pretrain, ["user", "job_id"]].isna().all()
        assert book.get_run(pretrain).to_json()["scheduler"] == {}
        # A resume after the upgrade leaves out the day since the run ended (09:10).
        clock.at = datetime(2026, 1, 12, 9, 10, tzinfo=UTC)
        book.reopen_run(finetune)
        book.finish_run(finetune, ended_at=datetime(2026, 1, 12, 9, 15, tzinfo=UTC))
        assert book.get_run(finetune).duration_s == pytest.approx(600.0 + 300.0)
        # New features work on the upgraded file.
        book.add_timeline(finetune, "gpu:GPU-5f0b2c1e-8d6a-4f3b-9e21-7c4d8a9b0e12", [(0.0, 1.0)])
        run_id = record_fit(book)
        assert book.get_run(run_id).energy_j == pytest.approx(2500.0)
        book.add_phases(run_id, [], epoch=2, metrics={"val_loss": 0.5}, train_samples=64)
        snap = book.snapshots(run_id).set_index("epoch").loc[2]
        assert (snap["metrics"], snap["train_samples"]) == ({"val_loss": 0.5}, 64)
        tagged = book.begin_run(architecture="x", scheduler={"user": "ann", "job_id": "9_1"})
        assert [r.run_id for r in book.list_runs(RunFilter(job="9"))] == [tagged]
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        conn.close()


# ---------------------------------------------------------------------------------- bad files


def _foreign_sqlite(path: pathlib.Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    conn.execute("INSERT INTO notes (text) VALUES ('keep me')")
    conn.commit()
    conn.close()


def _newer_ledger(path: pathlib.Path) -> None:
    with Ledger(path) as book:
        record_fit(book)
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.execute("PRAGMA journal_mode = DELETE")
    conn.close()


BAD_FILES = {
    "random bytes": (lambda p: p.write_bytes(os.urandom(8192)), "not an SQLite file"),
    "text": (lambda p: p.write_text("run_id,energy\n1,2\n"), "not an SQLite file"),
    "other sqlite": (_foreign_sqlite, "another application"),
    "newer schema": (_newer_ledger, f"schema version {SCHEMA_VERSION + 1}.*newer wattwise"),
    "sqlite header, garbage body": (
        lambda p: p.write_bytes(b"SQLite format 3\x00" + os.urandom(4096)),
        "not a readable SQLite database|another application",
    ),
}


@pytest.mark.parametrize("kind", BAD_FILES)
def test_bad_files_are_rejected_untouched(tmp_path, kind):
    make, message = BAD_FILES[kind]
    path = tmp_path / "bad.db"
    make(path)
    before = sha256(path)
    siblings = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(LedgerFormatError, match=message) as caught:
        Ledger(path).list_runs()
    assert str(path) in str(caught.value)
    assert "expected" in str(caught.value) or "upgrade wattwise" in str(caught.value)
    # Merging it in is refused the same way, and the target is not harmed either.
    with Ledger(tmp_path / "good.db") as good:
        run_id = record_fit(good)
        with pytest.raises(LedgerFormatError):
            good.merge(path)
        assert [r.run_id for r in good.list_runs()] == [run_id]
    assert sha256(path) == before
    assert sorted(p.name for p in tmp_path.iterdir() if "good" not in p.name) == siblings


def test_a_directory_is_rejected(tmp_path):
    with pytest.raises(LedgerFormatError, match="is a directory"):
        Ledger(tmp_path)


def test_an_empty_file_becomes_a_ledger(tmp_path):
    path = tmp_path / "empty.db"
    path.touch()
    with Ledger(path) as book:
        run_id = book.begin_run(architecture="a")
        assert book.get_run(run_id).status == "running"


# ---------------------------------------------------------------------------------- merge


def test_merge_twice_gives_no_duplicates(tmp_path):
    with Ledger(tmp_path / "a.db") as a, Ledger(tmp_path / "b.db") as b:
        shared = record_fit(a, architecture="shared")
        only_a = record_fit(a, architecture="only-a", parent=shared)
        a.add_timeline(only_a, GPU.device_id, [(0.0, 300.0), (1.0, 310.0)])
        a.finish_run(only_a, metrics={"val_loss": 0.1})
        only_b = record_fit(b, architecture="only-b", gpu_j=(7.0,))
        assert b.merge(a.path) == (2, 0)
        assert b.merge(a.path) == (0, 2)
        assert a.merge(b.path) == (1, 2)

        for book in (a, b):
            runs = book.runs().set_index("run_id")
            assert sorted(runs.index) == sorted([shared, only_a, only_b])
            assert len(book.phases()) == (2 + 2 + 1) * 3  # epochs x 3 phases each
            assert len(book.snapshots()) == 2 + 2 + 1
            assert runs.loc[only_a, "metric/val_loss"] == 0.1
            assert book.cumulative_energy_j(only_a) == pytest.approx(2 * 2500.0)
            assert book.timeline(only_a) == {GPU.device_id: [(0.0, 300.0), (1.0, 310.0)]}
        # The same phases, row for row, on both sides.
        key = ["run_id", "epoch", "stage", "device_id"]
        left = a.phases().sort_values(key).reset_index(drop=True)
        right = b.phases().sort_values(key).reset_index(drop=True)
        assert left.equals(right)


def test_merge_keeps_the_pauses_of_a_resumed_run(tmp_path, clock):
    with Ledger(tmp_path / "a.db") as a, Ledger(tmp_path / "b.db") as b:
        run_id = a.begin_run(architecture="resumed", started_at=clock.at)
        a.finish_run(run_id, ended_at=clock.advance(60.0))
        clock.advance(900.0)
        a.reopen_run(run_id)
        a.finish_run(run_id, ended_at=clock.advance(40.0))
        assert a.get_run(run_id).duration_s == pytest.approx(100.0)
        assert b.merge(a.path) == (1, 0)
        copied = b.get_run(run_id)
        assert (copied.duration_s, copied.paused_s) == pytest.approx((100.0, 900.0))


def test_merge_an_older_version_leaves_it_as_it_was(tmp_path):
    old = tmp_path / "v1.db"
    shutil.copy(FIXTURES / "v1.db", old)
    before = sha256(old)
    with Ledger(tmp_path / "now.db") as book:
        assert book.merge(old) == (2, 0)
        assert book.own_energy_j("0b8f3c52") == pytest.approx(3465.0)
    assert sha256(old) == before
    assert not old.with_name("v1.db-wal").exists() and not old.with_name("v1.db-shm").exists()
    conn = sqlite3.connect(f"file:{old}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    finally:
        conn.close()


def test_merge_of_a_missing_file_names_it(book, tmp_path):
    with pytest.raises(LedgerFormatError, match=r"no ledger file at .*missing\.db"):
        book.merge(tmp_path / "missing.db")


# ---------------------------------------------------------------------------------- process facts


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
@pytest.mark.parametrize("packed", [False, True])
def test_git_commit_of_the_working_directory(tmp_path, monkeypatch, packed):
    def git(*args):
        return subprocess.run(
            ["git", *args], cwd=tmp_path, check=True, capture_output=True, text=True
        ).stdout.strip()

    git("init", "-q")
    (tmp_path / "train.py").write_text("print('hi')\n")
    git("add", "train.py")
    git("-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-qm", "first")
    if packed:
        git("pack-refs", "--all")
    head = git("rev-parse", "HEAD")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")  # found from a sub-folder too
    assert ledger_module._procinfo.git_commit() == head
    assert ledger_module._procinfo._read_head(tmp_path / ".git") == head  # no git process needed
    with Ledger(tmp_path / "l.db") as book:
        assert book.get_run(book.begin_run(architecture="a")).git_commit == head


def test_a_ledger_caught_mid_creation_is_not_called_foreign(tmp_path):
    """Regression: `wattwise runs` reading a ledger while `wattwise run` was creating it saw the
    tables but not yet the application id, and refused the file as another application's
    database (CI, test_run_interrupted_by_ctrl_c)."""
    path = tmp_path / "creating.db"
    conn = sqlite3.connect(path, check_same_thread=False)  # the timer thread finishes creating
    for statement in ledger_schema.MIGRATIONS[0].split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.commit()  # tables there, application id not yet: what a mid-creation reader sees

    def finish_creating() -> None:  # in one transaction, as Ledger creates a file
        conn.isolation_level = None
        conn.execute("BEGIN IMMEDIATE")
        for step in range(1, SCHEMA_VERSION):
            for statement in ledger_schema.MIGRATIONS[step].split(";"):
                if statement.strip():
                    conn.execute(statement)
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")

    timer = threading.Timer(0.3, finish_creating)
    timer.start()
    try:
        with Ledger(path) as book:
            assert book.list_runs() == []
    finally:
        timer.join()
        conn.close()


def test_a_foreign_database_is_still_refused_after_the_grace(tmp_path):
    path = tmp_path / "foreign.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(LedgerFormatError, match="another application"):
        Ledger(path).list_runs()
