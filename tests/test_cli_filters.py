"""Run filters and scheduler metadata through the real CLI (`runs`, `runs show`, `report`,
`estimate`) on a lab ledger built with tests/_ledger_factory.py."""

from __future__ import annotations

import json
from datetime import timedelta

import pandas as pd
import pytest
from _ledger_factory import T0, RunSpec, add_run

from wattwise import scheduler
from wattwise.cli import main
from wattwise.ledger import Ledger


def slurm(user, job, task=None, partition="gpu"):
    section = {"job_id": job, "user": user, "partition": partition, "account": "ml-lab"}
    if task is not None:
        section |= {"array_job_id": job, "array_task_id": task, "job_id": str(int(job) + int(task))}
    return {
        "user": user,
        "job_id": f"{job}_{task}" if task is not None else job,
        "os_user": user,
        "slurm": section,
    }


# name -> (spec, start offset)
LAB = {
    "alice-sweep-0": (RunSpec("resnet", tags=("sweep",), scheduler=slurm("alice", "500", "0")), 0),
    "alice-sweep-1": (RunSpec("resnet", tags=("sweep",), scheduler=slurm("alice", "500", "1")), 1),
    "alice-vit": (RunSpec("vit", train_w=650.0, scheduler=slurm("alice", "5000")), 26),
    "bob-old": (RunSpec("mlp", epochs=2, scheduler=slurm("bob", "610")), 2),
    "bob-new": (RunSpec("mlp", epochs=4, scheduler=slurm("bob", "611")), 50),
    "carol-pod": (
        RunSpec(
            "mlp",
            scheduler={
                "user": "carol",
                "job_id": "train-7f9c",
                "os_user": "root",
                "kubernetes": {"pod": "train-7f9c", "namespace": "research", "node": "n3"},
            },
        ),
        3,
    ),
}


@pytest.fixture
def lab(tmp_path, no_wattwise_env):
    path = tmp_path / "lab.db"
    with Ledger(path) as book:
        ids = {
            name: add_run(book, spec, start=T0 + timedelta(hours=hours))
            for name, (spec, hours) in LAB.items()
        }
    return path, ids


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def listed(capsys, path, ids, *filters):
    code, out, err = cli(capsys, "runs", "--ledger", path, "--json", *filters)
    assert code == 0, err
    names = {v: k for k, v in ids.items()}
    return sorted(names[r["run_id"]] for r in json.loads(out))


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (["--user", "alice"], ["alice-sweep-0", "alice-sweep-1", "alice-vit"]),
        (["--job", "500"], ["alice-sweep-0", "alice-sweep-1"]),  # the array job: its tasks
        (["--job", "500_1"], ["alice-sweep-1"]),
        (["--job", "train-7f9c"], ["carol-pod"]),
        (["--tag", "sweep", "--user", "bob"], []),
        (["--architecture", "mlp"], ["bob-new", "bob-old", "carol-pod"]),
        (["--since", "2026-11-03"], ["alice-vit", "bob-new"]),
        (["--until", "2026-11-02T10:00"], ["alice-sweep-0", "alice-sweep-1"]),
        (["--user", "bob", "--since", "2026-11-02", "--until", "2026-11-02"], ["bob-old"]),
        (["--status", "failed"], []),
        (["--status", "finished", "--user", "carol"], ["carol-pod"]),
    ],
)
def test_runs_filters(capsys, lab, filters, expected):
    path, ids = lab
    assert listed(capsys, path, ids, *filters) == expected


def test_runs_json_carries_the_scheduler(capsys, lab):
    path, _ = lab
    _, out, _ = cli(capsys, "runs", "--ledger", path, "--json", "--job", "500_1")
    (run,) = json.loads(out)
    assert run["scheduler"] == LAB["alice-sweep-1"][0].scheduler
    assert (run["user"], run["job_id"]) == ("alice", "500_1")


def test_runs_table_shows_user_and_job_and_says_when_nothing_matches(capsys, lab):
    path, _ = lab
    code, out, _ = cli(capsys, "runs", "--ledger", path, "--user", "alice")
    assert code == 0
    assert "user" in out and "job" in out and "500_0" in out and "bob" not in out
    code, out, _ = cli(capsys, "runs", "--ledger", path, "--user", "nobody")
    assert code == 0 and "No runs matching --user nobody in" in out


@pytest.mark.parametrize(
    ("filters", "named"),
    [
        (["--since", "yesterday"], "--since 'yesterday' is not a time; accepted: an ISO date"),
        (["--until", "3 weeks"], "--until '3 weeks' is not a time"),
        (["--status", "done"], "--status 'done' is not one of running, finished, failed"),
        (["--since", "2d", "--until", "3d"], "is after --until"),
    ],
)
@pytest.mark.parametrize("command", [["runs"], ["report"], ["estimate", "--epochs", "3"]])
def test_bad_filters_exit_2_naming_the_value(capsys, lab, command, filters, named):
    path, _ = lab
    before = path.read_bytes()
    code, out, err = cli(capsys, *command, "--ledger", path, *filters)
    assert code == 2, (out, err)
    assert named in err and "Traceback" not in err
    assert path.read_bytes() == before


def test_runs_show_has_a_scheduler_section(capsys, lab):
    path, ids = lab
    code, out, _ = cli(capsys, "runs", "show", ids["alice-sweep-1"][:8], "--ledger", path)
    assert code == 0
    section = out[out.index("Scheduler") :]
    assert "alice" in section and "500_1" in section
    assert "partition=gpu" in section and "array_task_id=1" in section
    code, out, _ = cli(capsys, "runs", "show", ids["carol-pod"], "--ledger", path)
    assert "namespace=research" in out[out.index("Scheduler") :]
    code, out, _ = cli(capsys, "runs", "show", ids["carol-pod"], "--ledger", path, "--json")
    assert json.loads(out)["scheduler"]["kubernetes"]["pod"] == "train-7f9c"


def test_report_filters_and_scheduler_columns(capsys, lab, tmp_path):
    path, ids = lab
    out_dir = tmp_path / "out"
    code, out, err = cli(
        capsys, "report", "--ledger", path, "--csv", out_dir, "--html", out_dir / "r.html",
        "--user", "alice", "--since", "2026-11-02T09:30", "--json",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["n_runs"] == 2
    table = pd.read_csv(out_dir / "runs.csv", dtype=str).set_index("run_id")
    assert sorted(table.index) == sorted([ids["alice-sweep-1"], ids["alice-vit"]])
    row = table.loc[ids["alice-sweep-1"]]
    # the join with `sacct -j 500_1` and the flattened SLURM fields
    assert (row["user"], row["job_id"]) == ("alice", "500_1")
    assert (row["slurm_array_job_id"], row["slurm_array_task_id"]) == ("500", "1")
    assert (row["slurm_partition"], row["slurm_account"]) == ("gpu", "ml-lab")
    assert pd.isna(row["kubernetes_pod"])
    assert [c for c in table.columns if c.startswith(("slurm_", "kubernetes_", "torchrun_"))] == [
        c for c in scheduler.flatten({})
    ]
    phases = pd.read_csv(out_dir / "phases.csv", dtype={"run_id": str})
    assert set(phases["run_id"]) == set(table.index)
    # given ids are narrowed by the filters too
    code, _, err = cli(
        capsys, "report", ids["bob-old"], "--ledger", path, "--csv", out_dir,
        "--html", out_dir / "r.html", "--user", "alice",
    )  # fmt: skip
    assert code == 2 and "no run of the runs given" in err and "--user alice" in err


def test_report_with_filters_matching_nothing_is_bad_input(capsys, lab, tmp_path):
    path, _ = lab
    out_dir = tmp_path / "none"
    code, _, err = cli(capsys, "report", "--ledger", path, "--csv", out_dir, "--user", "nobody")
    assert code == 2 and "matches --user nobody" in err
    assert not (out_dir / "runs.csv").exists()


def test_estimate_picks_the_newest_finished_matching_run_and_says_so(capsys, lab):
    path, ids = lab
    code, out, err = cli(capsys, "estimate", "--ledger", path, "--user", "bob", "--epochs", "10",
                         "--json")  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert result["run"]["run_id"] == ids["bob-new"]
    assert (result["run"]["user"], result["run"]["job_id"]) == ("bob", "611")
    # --run latest with no filter: the newest finished run of the ledger (bob-new, +50 h)
    code, out, _ = cli(capsys, "estimate", "--ledger", path, "--run", "latest", "--epochs", "10",
                       "--json")  # fmt: skip
    assert json.loads(out)["run"]["run_id"] == ids["bob-new"]
    code, out, _ = cli(capsys, "estimate", "--ledger", path, "--run", "latest", "--user", "alice",
                       "--epochs", "10")  # fmt: skip
    assert code == 0
    assert f"rates from run {ids['alice-vit']}" in out
    assert "the newest finished run matching --user alice" in out


def test_estimate_run_prefix_is_resolved_among_the_matching_runs(capsys, lab):
    path, ids = lab
    target = ids["bob-old"]
    code, out, err = cli(capsys, "estimate", "--ledger", path, "--run", target[:8],
                         "--user", "bob", "--epochs", "10", "--json")  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["run"]["run_id"] == target
    code, _, err = cli(capsys, "estimate", "--ledger", path, "--run", target[:8],
                       "--user", "alice", "--epochs", "10")  # fmt: skip
    assert code == 2
    assert f"no run {target[:8]!r} among the runs" in err and "--user alice" in err
    code, _, err = cli(capsys, "estimate", "--ledger", path, "--user", "nobody", "--epochs", "1")
    assert code == 2 and "no run in ledger" in err and "--user nobody --status finished" in err


def test_report_keeps_torchrun_numbers_whole(tmp_path, settings):
    from wattwise.report import build_report

    with Ledger(tmp_path / "t.db") as book:
        ranked = {"user": "dan", "job_id": "exp42", "torchrun": {"run_id": "exp42", "rank": 0}}
        add_run(book, RunSpec("mlp", scheduler=ranked))
        add_run(book, RunSpec("mlp", scheduler={}), start=T0 + timedelta(hours=1))
        result = build_report(book, out_dir=tmp_path / "out", settings=settings)
    text = result.runs_csv.read_text()
    table = pd.read_csv(result.runs_csv, dtype=str)
    assert table["torchrun_rank"].tolist()[0] == "0" and ",0.0," not in text
    assert table["torchrun_run_id"].tolist()[0] == "exp42"
    assert pd.isna(table["user"].tolist()[1])  # nothing recorded: empty, not invented
