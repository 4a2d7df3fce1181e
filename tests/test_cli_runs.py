"""`wattwise runs ...` and `wattwise run -- COMMAND`: output shapes, exit codes, bad input."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import shutil
import sqlite3
import subprocess
import sys

import pytest

from wattwise.cli import main
from wattwise.ledger import Ledger
from wattwise.types import ArchSnapshot, DeviceInfo, PhaseEnergy

GPU = DeviceInfo("gpu:GPU-5f0b2c1e-8d6a-4f3b-9e21-7c4d8a9b0e12", "gpu", "NVIDIA H200", "counter")
CPU = DeviceInfo("cpu:machine", "cpu", "Intel Xeon", "estimate")


def _phase(stage, device, energy_j):
    return PhaseEnergy(stage, 0, device.device_id, device.kind, 0.0, 4.0, energy_j, device.method)


def _fit(book, architecture, parent=None, gpu_j=(3600.0, 7200.0)):
    run_id = book.begin_run(architecture=architecture, parent_run_id=parent, devices=[GPU, CPU])
    for epoch, energy_j in enumerate(gpu_j):
        book.add_phases(
            run_id,
            [_phase("train", GPU, energy_j), _phase("train", CPU, 360.0)],
            epoch=epoch,
            snapshot=ArchSnapshot(100 + epoch, 100 + epoch, "MLP", architecture),
            epochs_completed=epoch + 1,
        )
    book.finish_run(run_id, metrics={"val_loss": 0.5})
    return run_id


@pytest.fixture
def ledger_path(tmp_path):
    return tmp_path / "ledger.db"


@pytest.fixture
def two_runs(ledger_path):
    with Ledger(ledger_path) as book:
        pretrain = _fit(book, "pretrain")  # 3600 + 7200 + 2 x 360 = 11520 J = 3.2 Wh
        finetune = _fit(book, "finetune", parent=pretrain, gpu_j=(1440.0,))  # 1800 J = 0.5 Wh
    return pretrain, finetune


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def wattwise_run_argv(ledger_path, code):
    """`python -m wattwise run --ledger LEDGER -- python -c CODE`, for a real process of its own."""
    wattwise = [sys.executable, "-m", "wattwise", "run", "--ledger", str(ledger_path)]
    return [*wattwise, "--", sys.executable, "-c", code]


def test_runs_json_lists_every_run_with_the_fixed_fields(capsys, ledger_path, two_runs):
    pretrain, finetune = two_runs
    code, out, _ = run_cli(capsys, "runs", "--ledger", str(ledger_path), "--json")
    assert code == 0
    rows = {row["run_id"]: row for row in json.loads(out)}
    assert set(rows) == {pretrain, finetune}
    for row in rows.values():
        for key in ("run_id", "architecture", "status", "epochs", "duration_s", "energy_wh"):
            assert key in row
        assert row["started_at"].endswith("+00:00")
    assert rows[pretrain]["energy_wh"] == pytest.approx(3.2)
    assert rows[pretrain]["epochs"] == 2
    assert rows[finetune]["energy_wh"] == pytest.approx(0.5)
    assert rows[finetune]["status"] == "finished"
    assert rows[finetune]["parent_run_id"] == pretrain


def test_runs_json_shows_a_run_whose_process_died_as_interrupted(capsys, ledger_path):
    child = (
        "import sys; from wattwise.ledger import Ledger; "
        "print(Ledger(sys.argv[1]).begin_run(architecture='crashed'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", child, str(ledger_path)], capture_output=True, text=True, check=True
    )
    code, out, _ = run_cli(capsys, "runs", "--ledger", str(ledger_path), "--json")
    assert code == 0
    (row,) = json.loads(out)
    assert (row["run_id"], row["status"]) == (done.stdout.strip(), "interrupted")


def test_runs_uses_the_environment_ledger_and_prints_a_table(
    capsys, ledger_path, two_runs, monkeypatch
):
    monkeypatch.setenv("WATTWISE_LEDGER", str(ledger_path))
    code, out, _ = run_cli(capsys, "runs")
    assert code == 0
    for run_id in two_runs:
        assert run_id[:8] in out
    assert "pretrain" in out and "finetune" in out
    assert "3.2" in out and "0.5" in out


def test_runs_show_json_has_phases_snapshots_and_lineage(capsys, ledger_path, two_runs):
    pretrain, finetune = two_runs
    code, out, _ = run_cli(
        capsys, "runs", "show", finetune[:8], "--ledger", str(ledger_path), "--json"
    )
    assert code == 0
    shown = json.loads(out)
    assert shown["run_id"] == finetune
    assert [(p["epoch"], p["stage"], p["device_id"]) for p in shown["phases"]] == [
        (0, "train", GPU.device_id),
        (0, "train", CPU.device_id),
    ]
    assert sum(p["energy_j"] for p in shown["phases"]) == pytest.approx(1800.0)
    assert shown["snapshots"] == [
        {
            "run_id": finetune,
            "epoch": 0,
            "trainable_params": 100,
            "total_params": 100,
            "model_class": "MLP",
            "label": "finetune",
            # recorded through the Ledger API without them: not recorded (null), not {} or 0
            "metrics": None,
            "train_samples": None,
        }
    ]
    lineage = shown["lineage"]
    assert lineage["own_energy_wh"] == pytest.approx(0.5)
    assert lineage["cumulative_energy_wh"] == pytest.approx(3.7)
    assert lineage["ancestors"] == [
        {"run_id": pretrain, "architecture": "pretrain", "own_energy_wh": pytest.approx(3.2)}
    ]


def test_runs_show_text_and_group_level_options(capsys, ledger_path, two_runs):
    _, finetune = two_runs
    code, out, _ = run_cli(capsys, "runs", "--ledger", str(ledger_path), "show", finetune[:6])
    assert code == 0
    assert finetune in out
    assert "lineage" in out and "3.7 Wh" in out
    assert "Energy per epoch" in out
    # 1440 J GPU + 360 J CPU; no RAM device: missing, not 0 Wh
    assert "gpu 0.4, cpu 0.1, ram -" in out


def test_runs_rm_and_unknown_run(capsys, ledger_path, two_runs):
    pretrain, finetune = two_runs
    code, out, _ = run_cli(
        capsys, "runs", "rm", pretrain[:8], "--ledger", str(ledger_path), "--json"
    )
    assert (code, json.loads(out)) == (0, {"removed": pretrain})
    with Ledger(ledger_path) as book:
        assert [r.run_id for r in book.list_runs()] == [finetune]
    code, _, err = run_cli(capsys, "runs", "rm", pretrain[:8], "--ledger", str(ledger_path))
    assert code == 2
    assert f"no run '{pretrain[:8]}'" in err and "Traceback" not in err


def test_runs_merge_twice_adds_nothing_the_second_time(capsys, tmp_path, ledger_path, two_runs):
    target = tmp_path / "lab.db"
    argv = ["runs", "merge", str(ledger_path), "--ledger", str(target), "--json"]
    code, out, _ = run_cli(capsys, *argv)
    assert code == 0 and json.loads(out)["added"] == 2
    code, out, _ = run_cli(capsys, *argv)
    assert code == 0 and (json.loads(out)["added"], json.loads(out)["skipped"]) == (0, 2)
    with Ledger(target) as book:
        assert len(book.list_runs()) == 2
        assert len(book.phases()) == 3 * 2


@pytest.mark.parametrize(
    "content", [b"not a database at all\n" * 10, b"SQLite format 3\x00" + b"\x01" * 4000]
)
@pytest.mark.parametrize("how", ["list", "merge"])
def test_bad_ledger_file_exit_2_untouched(capsys, tmp_path, content, how):
    bad = tmp_path / "bad.db"
    bad.write_bytes(content)
    before = hashlib.sha256(bad.read_bytes()).hexdigest()
    if how == "list":
        argv = ["runs", "--ledger", str(bad)]
    else:
        argv = ["runs", "merge", str(bad), "--ledger", str(tmp_path / "good.db")]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    assert str(bad) in err and "expected a wattwise ledger" in err
    assert "Traceback" not in err
    assert hashlib.sha256(bad.read_bytes()).hexdigest() == before
    assert not (tmp_path / "bad.db-wal").exists()


def test_run_records_a_finished_command(capsys, ledger_path):
    code, out, err = run_cli(
        capsys,
        "run",
        "--ledger",
        str(ledger_path),
        "--architecture",
        "sleeper",
        "--json",
        "--",
        sys.executable,
        "-c",
        "import time; time.sleep(0.3)",
    )
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["status"], summary["exit_code"]) == ("finished", 0)
    assert summary["duration_s"] >= 0.3
    assert summary["energy_wh"] > 0
    with Ledger(ledger_path) as book:
        rec = book.get_run(summary["run_id"])
    assert (rec.architecture, rec.status) == ("sleeper", "finished")
    assert rec.energy_j == pytest.approx(summary["energy_j"])
    assert rec.energy_j > 0
    # `run --json` and `runs --json` agree per kind, a kind nothing measured being null in both
    recorded = rec.to_json()["energy_by_kind_wh"]
    assert summary["energy_by_kind_wh"].keys() == recorded.keys()
    for kind, wh in summary["energy_by_kind_wh"].items():
        measured = any(d["kind"] == kind for d in rec.devices)
        assert (wh is None) == (recorded[kind] is None) == (not measured), kind
        if measured:
            assert wh == pytest.approx(recorded[kind])


def test_run_passes_the_exit_code_through_and_marks_failed(tmp_path, ledger_path):
    done = subprocess.run(
        wattwise_run_argv(ledger_path, "import sys; print('child says hi'); sys.exit(3)"),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 3, done.stderr
    assert "child says hi" in done.stdout
    with Ledger(ledger_path) as book:
        (rec,) = book.list_runs()
    assert rec.status == "failed"
    assert rec.reason == "command exited with code 3"
    assert rec.architecture == os.path.basename(sys.executable)


def test_run_without_a_command_is_bad_input(capsys, ledger_path):
    code, _, err = run_cli(capsys, "run", "--ledger", str(ledger_path))
    assert code == 2
    assert "no command given" in err and "Traceback" not in err
    assert not ledger_path.exists()


def test_run_of_an_unknown_program_is_bad_input(capsys, ledger_path):
    code, _, err = run_cli(
        capsys, "run", "--ledger", str(ledger_path), "--", "no-such-program-wattwise"
    )
    assert code == 2
    assert "'no-such-program-wattwise' not found" in err
    assert not ledger_path.exists()


@pytest.fixture
def locked_ledger(tmp_path, read_only):
    """Two runs in a ledger whose folder is then made read-only, the file itself left
    writable."""
    folder = tmp_path / "locked"
    folder.mkdir()
    path = folder / "ledger.db"
    with Ledger(path) as book:
        ids = (_fit(book, "pretrain"), _fit(book, "finetune"))
    with read_only(folder):
        yield path, ids


def test_read_only_ledger_folder_reads_and_refuses_writes(capsys, locked_ledger):
    """Regression: a ledger in a folder that cannot be written (no -wal/-shm can be created) made
    every command, `runs` included, die with an sqlite3 traceback and exit code 1."""
    path, ids = locked_ledger
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    code, out, err = run_cli(capsys, "runs", "--json", "--ledger", str(path))
    assert code == 0, err
    assert {run["run_id"] for run in json.loads(out)} == set(ids)
    code, out, err = run_cli(capsys, "runs", "show", ids[0][:8], "--ledger", str(path))
    assert code == 0, err
    assert ids[0] in out
    new = path.parent / "new.db"
    for argv in (
        ["runs", "rm", ids[0], "--ledger", str(path)],
        ["runs", "merge", str(path), "--ledger", str(path)],
        ["run", "--ledger", str(new), "--", sys.executable, "-c", "pass"],
    ):
        code, out, err = run_cli(capsys, *argv)
        assert code == 2, err
        assert argv[argv.index("--ledger") + 1] in err
        assert "read-only" in err and "accepted" in err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert sorted(os.listdir(path.parent)) == ["ledger.db"]


def test_read_only_folder_an_old_ledger_is_refused_and_an_empty_file_reads_empty(
    capsys, tmp_path, read_only
):
    """The read-only paths besides a current ledger: a schema-3 ledger cannot be read without
    its upgrade (which writes it), so it is refused (exit 2) and left byte for byte as it was,
    rather than read with a schema this wattwise does not expect; an empty file (no schema yet)
    reads as an empty ledger; a ledger to be created in a folder that cannot be made is
    refused like one in a read-only folder."""
    folder = tmp_path / "locked"
    folder.mkdir()
    old, empty = folder / "v3.db", folder / "empty.db"
    shutil.copy(pathlib.Path(__file__).parent / "fixtures" / "ledger" / "v3.db", old)
    with contextlib.closing(sqlite3.connect(old)) as conn:  # as wattwise wrote it: WAL mode
        assert conn.execute("PRAGMA journal_mode=WAL").fetchone() == ("wal",)
    empty.touch()
    before = hashlib.sha256(old.read_bytes()).hexdigest()
    with read_only(folder):
        code, out, err = run_cli(capsys, "runs", "--json", "--ledger", str(old))
        assert code == 2, err
        assert str(old) in err and "schema version 3" in err and "upgraded" in err
        assert "accepted: the ledger in a writable folder" in err
        assert "reading commands" not in err  # this was one: no advice that contradicts it
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
        code, out, err = run_cli(capsys, "runs", "--json", "--ledger", str(empty))
        assert code == 0, err
        assert json.loads(out) == []
        new = folder / "sub" / "new.db"
        code, out, err = run_cli(
            capsys, "run", "--ledger", str(new), "--", sys.executable, "-c", "pass"
        )
        assert code == 2, err
        assert str(new) in err and "read-only" in err and "Traceback" not in err
    assert hashlib.sha256(old.read_bytes()).hexdigest() == before
    assert empty.stat().st_size == 0
    assert sorted(os.listdir(folder)) == ["empty.db", "v3.db"]
