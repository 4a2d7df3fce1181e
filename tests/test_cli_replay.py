"""`wattwise replay` through wattwise.cli.main."""

from __future__ import annotations

import json

import pytest
from fakes import check_against_counter

from wattwise.cli import main
from wattwise.sensors.replay import counter_reference, load_marks, load_trace
from wattwise.types import PhaseEnergy

FIT = "h200-lightning-fit-50hz.csv"
FIT_MARKS = "h200-lightning-fit-marks.json"
MLP = "h200-mlp6144-8epochs-20hz.csv"
MLP_MARKS = "h200-mlp6144-8epochs-marks.json"


def run_json(capsys, *args):
    assert main(["replay", *map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def as_phases(out):
    return [
        PhaseEnergy(p["name"], i, "gpu", "gpu", p["start_s"], p["end_s"], p["energy_j"], "counter")
        for i, p in enumerate(out["phases"])
    ]


@pytest.mark.parametrize(("method", "bounds"), [("counter", (1, 5, 1)), ("power", (3, 8, 3))])
@pytest.mark.parametrize(("trace_name", "marks_name"), [(FIT, FIT_MARKS), (MLP, MLP_MARKS)])
def test_json_phases_agree_with_the_counter(
    capsys, nvml_fixtures, trace_name, marks_name, method, bounds
):
    out = run_json(
        capsys,
        nvml_fixtures / trace_name,
        "--marks",
        nvml_fixtures / marks_name,
        "--method",
        method,
    )
    marks = load_marks(nvml_fixtures / marks_name)
    assert [p["name"] for p in out["phases"]] == [label for label, _ in marks.marks[:-1]]
    for p in out["phases"]:
        assert set(p) >= {"name", "start_s", "end_s", "energy_j", "method", "flags"}
        assert isinstance(p["energy_j"], float) and p["method"] == method
        assert ("short_phase" in p["flags"]) == (p["end_s"] - p["start_s"] < 0.1)
    assert out["total"]["method"] == method
    assert out["total"]["energy_j"] == pytest.approx(sum(p["energy_j"] for p in out["phases"]))
    trace = load_trace(nvml_fixtures / trace_name)
    reference = counter_reference(trace.t_s, trace.energy_j)
    long_pct, mid_pct, sum_pct = bounds
    check_against_counter(
        as_phases(out), reference, long_pct=long_pct, mid_pct=mid_pct, sum_pct=sum_pct
    )


def test_without_marks_one_phase_covers_the_trace(capsys, nvml_fixtures):
    out = run_json(capsys, nvml_fixtures / FIT)
    (phase,) = out["phases"]
    trace = load_trace(nvml_fixtures / FIT)
    assert (phase["start_s"], phase["end_s"]) == (trace.t_s[0], trace.t_s[-1])
    # the counter from first to last row (its last change lies within 0.1 s of the end)
    counter_j = trace.energy_j[-1] - trace.energy_j[0]
    assert phase["energy_j"] == pytest.approx(counter_j, rel=0.005)
    assert out["device"]["uuid"].startswith("GPU-")


def test_readable_table(capsys, nvml_fixtures):
    code = main(["replay", str(nvml_fixtures / FIT), "--marks", str(nvml_fixtures / FIT_MARKS)])
    assert code == 0
    text = capsys.readouterr().out
    assert "val_start" in text and "total" in text and "4,494.7" in text


def test_bad_inputs_exit_2_naming_the_problem(capsys, nvml_fixtures, tmp_path):
    missing = tmp_path / "missing.csv"
    assert main(["replay", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("t_s,energy_mJ\n0,1\n")
    assert main(["replay", str(bad), "--json"]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "power_mW" in err and "Traceback" not in err
    assert main(["replay", str(nvml_fixtures / FIT), "--method", "guess"]) == 2
    assert "'guess'" in capsys.readouterr().err
    marks = tmp_path / "marks.json"
    marks.write_text('{"marks": [["a", 1], ["b", 0]]}')
    assert main(["replay", str(nvml_fixtures / FIT), "--marks", str(marks)]) == 2
    assert str(marks) in capsys.readouterr().err


def test_ledger_records_a_finished_run_with_epochs(capsys, nvml_fixtures, tmp_path):
    from wattwise.ledger import Ledger

    db = tmp_path / "w.db"
    out = run_json(
        capsys,
        nvml_fixtures / MLP,
        "--marks",
        nvml_fixtures / MLP_MARKS,
        "--ledger",
        db,
        "--architecture",
        "mlp6144",
    )
    run_id = out["run_id"]
    with Ledger(db) as ledger:
        run = ledger.get_run(run_id)
        phases = ledger.phases(run_id)
    assert (run.status, run.architecture, run.epochs) == ("finished", "mlp6144", 8)
    assert run.devices[0]["name"] == "NVIDIA H200"  # from the marks file's "gpu"
    assert set(phases["stage"]) == {"train", "validate", "other"}
    assert sorted(phases["epoch"].dropna().unique()) == list(range(8))
    marks = load_marks(nvml_fixtures / MLP_MARKS)
    trace = load_trace(nvml_fixtures / MLP)
    # the run covers fit_start..fit_end: its energy is the counter over that span
    reference = counter_reference(trace.t_s, trace.energy_j)
    expected = reference(marks.fit_end_s) - reference(marks.fit_start_s)
    assert run.energy_j == pytest.approx(expected, rel=0.01)
    # regression: the run lasted as long as the replay command (~0.04 s), not the fit, so a
    # rented instance's cost (USD per hour x duration) in the report was ~200x too low
    assert run.duration_s == pytest.approx(marks.fit_end_s - marks.fit_start_s, abs=1e-3)
    # each epoch = its train + validate phases, close to the recorded epoch span's counter
    epoch0 = phases[phases["epoch"] == 0]
    t0, t1 = marks.marks[0][1], marks.marks[3][1]
    span = reference(t1) - reference(t0)
    assert epoch0["energy_j"].sum() == pytest.approx(span, rel=0.01)

    assert main(["estimate", "--run", run_id, "--ledger", str(db), "--epochs", "10", "--json"]) == 0
    estimate = json.loads(capsys.readouterr().out)
    (target,) = estimate["targets"]
    steady_s = (marks.marks[-1][1] - marks.marks[4][1]) / 7  # epochs 2..8
    assert target["seconds"] == pytest.approx(10 * steady_s, rel=0.1)


def test_ledger_needs_a_gpu_name(capsys, nvml_fixtures, tmp_path):
    db = tmp_path / "w.db"
    args = ["replay", str(nvml_fixtures / FIT), "--marks", str(nvml_fixtures / FIT_MARKS)]
    assert main([*args, "--ledger", str(db)]) == 2
    assert "--gpu" in capsys.readouterr().err
    assert main([*args, "--ledger", str(db), "--gpu", "NVIDIA H200", "--json"]) == 0
    run_id = json.loads(capsys.readouterr().out)["run_id"]
    from wattwise.ledger import Ledger

    with Ledger(db) as ledger:
        run = ledger.get_run(run_id)
    assert run.epochs == 2 and run.architecture == "h200-lightning-fit-50hz"


def test_marks_outside_the_trace_are_refused(capsys, nvml_fixtures, tmp_path):
    marks = tmp_path / "other.json"
    marks.write_text('{"marks": [["train_epoch_start", 1.0], ["train_epoch_end", 99.0]]}')
    assert main(["replay", str(nvml_fixtures / FIT), "--marks", str(marks)]) == 2
    err = capsys.readouterr().err
    assert "'train_epoch_end' at 99.0 s" in err and "outside the trace" in err


@pytest.mark.parametrize(
    ("marks_text", "message"),
    [
        ('{"marks": []}', "no marks"),
        ('{"marks": [["x", 2.0]], "fit_start": 3.0, "fit_end": 2.5}', "3.0-2.5 s"),
        ('{"marks": [["x", 2.0]], "fit_start": 1.0, "fit_end": 500.0}', "1.0-500.0 s"),
    ],
)
def test_ledger_refuses_a_fit_span_outside_the_trace(
    capsys, nvml_fixtures, tmp_path, marks_text, message
):
    """Regression: with --ledger, an empty marks list crashed with IndexError (exit 1), and a
    fit_start/fit_end outside the trace or reversed was recorded as a finished run with
    extrapolated or negative energy."""
    marks = tmp_path / "marks.json"
    marks.write_text(marks_text)
    db = tmp_path / "w.db"
    args = ["replay", str(nvml_fixtures / FIT), "--marks", str(marks), "--ledger", str(db)]
    assert main([*args, "--gpu", "H200"]) == 2
    err = capsys.readouterr().err
    assert str(marks) in err and message in err and "Traceback" not in err
    assert not db.exists()


def test_ledger_stages_nest_like_the_hooks(tmp_path):
    from wattwise.commands.replay import ledger_epochs
    from wattwise.sensors.replay import Marks

    marks = Marks(
        tmp_path / "m.json",
        [
            ("sanity_check_start", 1.0),
            ("sanity_check_end", 1.5),
            ("train_epoch_start", 2.0),
            ("val_start", 5.0),
            ("val_end", 6.0),
            ("train_epoch_end", 6.5),
            ("train_epoch_start", 6.5),  # back to back: the empty "other" between is dropped
            ("train_epoch_end", 9.0),
            ("checkpoint", 9.5),  # a plain label names what follows
            ("late", 20.0),  # outside the span: ignored
        ],
    )
    boundaries, epochs, completed = ledger_epochs(marks, 0.0, 10.0)
    assert boundaries == [
        ("other", 0.0),
        ("sanity_check", 1.0),
        ("other", 1.5),
        ("train", 2.0),
        ("validate", 5.0),
        ("train", 6.0),
        ("train", 6.5),
        ("other", 9.0),
        ("checkpoint", 9.5),
    ]
    assert epochs == [None, None, None, 0, 0, 0, 1, None, None]
    assert completed == 2


def test_ledger_warns_of_a_gpu_the_spec_table_lacks(
    capsys, nvml_fixtures, tmp_path, no_wattwise_env
):
    """Regression: `--gpu Nope` was recorded silently and `estimate --run` failed on it later."""
    db = tmp_path / "w.db"
    args = ["replay", str(nvml_fixtures / MLP), "--marks", str(nvml_fixtures / MLP_MARKS)]
    args += ["--ledger", str(db), "--json"]

    assert main([*args, "--gpu", "H10"]) == 0  # still recorded: a spec row may come later
    out, err = capsys.readouterr()
    run_id = json.loads(out)["run_id"]
    assert "warning" in err and "'H10'" in err and "H100 SXM 80 GB" in err  # the closest name
    assert "[gpus]" in err and "configuration file" in err
    assert len(err.strip().splitlines()) == 1
    estimate = ["estimate", "--run", run_id, "--ledger", str(db), "--epochs", "3", "--json"]
    assert main(estimate) == 2
    assert "'H10'" in capsys.readouterr().err

    # with a spec row in the configuration file the name is known: no warning, and it estimates
    (tmp_path / "wattwise.toml").write_text(
        "[gpus.H10]\ntdp_w = 300\nidle_w = 30\nbf16_tflops = 200\nfp32_tflops = 20\n"
        'memory_gib = 40\nmemory_bandwidth_gbs = 1000\nprice_usd = 9000\nsource = "lab"\n'
        'date = "2025-03"\n',
        encoding="utf-8",
    )
    assert main(estimate) == 0
    capsys.readouterr()
    assert main([*args, "--gpu", "H10"]) == 0
    assert capsys.readouterr().err == ""
    assert main([*args, "--gpu", "NVIDIA H200"]) == 0  # a built-in row: no warning either
    assert capsys.readouterr().err == ""
