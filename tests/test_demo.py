"""`wattwise demo` and the accounting of a model that grows while it trains."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import warnings

import pytest
import pytorch_lightning as pl

from wattwise.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--epochs", "0"], "epochs=0"),
        (["--epochs", "-3"], "epochs=-3"),
        (["--region", "XYZ"], "'XYZ'"),
        (["--pricing", "aws:nope"], "'aws:nope'"),
        # regression: a seed outside NumPy's range was a ValueError traceback (exit 1)
        (["--seed", "-1"], "seed=-1"),
        (["--seed", "4294967296"], "seed=4294967296"),
    ],
)
def test_bad_flags_exit_2_before_anything_is_written(tmp_path, capsys, args, named, no_training):
    ledger, out = tmp_path / "demo.db", tmp_path / "out"
    code = main(["demo", "--quick", "--ledger", str(ledger), "--out", str(out), *args])
    assert code == 2
    err = capsys.readouterr().err
    assert named in err and ("accepted" in err or "expected" in err)
    assert "Traceback" not in err
    assert not ledger.exists() and not out.exists()


@pytest.fixture
def no_training(monkeypatch):
    """Training fails the test: an output check must come before it (it took a minute before)."""
    from wattwise.zoo import demo

    def train(*args, **kwargs):
        raise AssertionError("trained before the output folder was checked")

    monkeypatch.setattr(demo, "_train_all", train)


def _unwritable_outs(tmp_path):
    """An existing file given as --out, and (unless root, who may write anywhere) a folder to
    create under a read-only one."""
    a_file = tmp_path / "taken"
    a_file.write_text("not a folder")
    html_folder = tmp_path / "html-taken"
    (html_folder / "report.html").mkdir(parents=True)  # the report's own file is a folder
    outs = [a_file, a_file / "sub", html_folder]
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        outs.append(locked / "out")
    return outs


def test_unwritable_out_exits_2_before_training(tmp_path, capsys, no_training):
    for out in _unwritable_outs(tmp_path):
        ledger = tmp_path / "demo.db"
        code = main(["demo", "--quick", "--ledger", str(ledger), "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2, err
        assert str(out) in err and "--out" in err and "accepted" in err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert not ledger.exists()


def test_a_ledger_that_cannot_be_written_exits_2_before_training(
    tmp_path, capsys, no_training, read_only
):
    """Regression: a ledger in a read-only folder trained every model (minutes), recorded
    nothing, and ended in exit code 1 (read_only: see conftest.py)."""
    folder = tmp_path / "locked"
    folder.mkdir()
    ledger, out = folder / "demo.db", tmp_path / "out"
    with read_only(folder):
        code = main(["demo", "--quick", "--ledger", str(ledger), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert str(ledger) in err and "read-only" in err and "accepted" in err
    assert "Traceback" not in err
    assert not ledger.exists()


def test_run_demo_checks_its_output_folder_before_training(tmp_path, no_training):
    from wattwise.errors import BadInput
    from wattwise.zoo.demo import run_demo

    for out in _unwritable_outs(tmp_path):
        with pytest.raises(BadInput, match=re.escape(str(out))):
            run_demo(epochs=1, ledger=tmp_path / "demo.db", out_dir=out)
    writable = tmp_path / "new" / "out"
    with pytest.raises(AssertionError, match="trained before"):  # a good folder gets that far
        run_demo(epochs=1, ledger=tmp_path / "demo.db", out_dir=writable)
    assert writable.is_dir() and not any(writable.iterdir())  # the check leaves nothing behind


def test_bad_flags_do_not_import_torch(tmp_path):
    code = (
        "import sys\n"
        "from wattwise.cli import main\n"
        f"rc = main(['demo', '--epochs', '0', '--ledger', {str(tmp_path / 'x.db')!r}])\n"
        "print(rc, 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["2", "False"]


def test_quiet_lightning_restores_levels_and_keeps_other_warnings():
    from wattwise.zoo.demo import quiet_lightning

    logger = logging.getLogger("pytorch_lightning")
    before = logger.level
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_lightning():
            assert logger.getEffectiveLevel() == logging.WARNING
            warnings.warn(
                "The 'train_dataloader' does not have many workers", UserWarning, stacklevel=1
            )
            warnings.warn("something else", UserWarning, stacklevel=1)
    assert logger.level == before
    assert [str(w.message) for w in caught] == ["something else"]


@pytest.mark.slow
def test_growth_shows_in_snapshots_and_energy_spans_it(tmp_path):
    from lightning_callbacks import EnergyCallback
    from wattwise.ledger import Ledger
    from wattwise.zoo import AdaptiveMLP, build_datamodule, count_parameters
    from wattwise.zoo.demo import demo_trainer

    pl.seed_everything(0, verbose=False)
    model = AdaptiveMLP(hidden=(8, 8), max_width=32, patience=1, min_delta=10.0)
    start = count_parameters(model)
    with Ledger(tmp_path / "grow.db") as ledger:
        energy = EnergyCallback(ledger=ledger, architecture="adaptive", sample_hz=20)
        trainer = demo_trainer(4, [energy], root_dir=tmp_path, accelerator="cpu")
        trainer.fit(model, datamodule=build_datamodule(seed=0))
        run_id = energy.run_id
        snaps = ledger.snapshots(run_id).sort_values("epoch")
        phases = ledger.phases(run_id)
        run = ledger.get_run(run_id)
    assert run.status == "finished" and run.epochs == 4
    # Each epoch's snapshot is taken at its end, before the model widens for the next epoch:
    # widened after epochs 1 and 2 -> 8, 8, 16, 32 units per hidden layer.
    sizes = {8: start, 16: 65 * 16 + 17 * 16 + 17 * 10, 32: 65 * 32 + 33 * 32 + 33 * 10}
    assert list(snaps["epoch"]) == [0, 1, 2, 3]
    assert list(snaps["trainable_params"]) == [sizes[8], sizes[8], sizes[16], sizes[32]]
    # Energy attributed to every training epoch, before and after each growth.
    train = phases[phases["stage"] == "train"].groupby("epoch")["energy_j"].sum()
    assert set(train.index) >= {0, 1, 2, 3}
    assert (train.loc[[0, 1, 2, 3]] > 0).all()
    assert phases["energy_j"].sum() == pytest.approx(run.energy_j, rel=1e-6)


@pytest.mark.slow
@pytest.mark.timeout(600)  # 244 s with two CPU-bound processes beside the suite
@pytest.mark.parametrize("replay", [None, "h200-lightning-fit-50hz.csv"])
def test_demo_quick_end_to_end(tmp_path, nvml_fixtures, replay):
    """On this CPU, and with a recorded H200 replayed as the machine's GPU (the GPU path)."""
    from wattwise.ledger import Ledger

    ledger, out = tmp_path / "demo.db", tmp_path / "reports"
    with Ledger(ledger) as store:  # an earlier run the demo must neither touch nor report
        earlier = store.begin_run(architecture="baseline")
        store.finish_run(earlier)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATTWISE_")}
    if replay is not None:
        env["WATTWISE_REPLAY_NVML"] = str(nvml_fixtures / replay)
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "wattwise", "demo", "--quick", "--json"),
            *("--ledger", str(ledger), "--out", str(out), "--region", "FRA"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=560,  # a hang ends at this, not a slow machine
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)  # stdout is nothing but the JSON
    for noise in ("GPU available", "Tip:", "Warning", "LeafSpec", "Traceback"):
        assert noise not in proc.stderr, proc.stderr

    with Ledger(ledger) as store:
        runs = [r for r in store.list_runs() if r.run_id != earlier]
        snaps = store.snapshots()
        assert store.get_run(earlier).status == "finished"
    assert sorted(r.architecture for r in runs) == ["adaptive", "baseline", "constrained"]
    assert all(r.status == "finished" for r in runs)
    assert all(r.energy_j > 0 and r.epochs == 10 for r in runs)
    # With the replayed GPU, each run carries GPU energy beside the CPU and RAM estimates.
    assert all((r.energy_by_kind_j.get("gpu", 0) > 0) == (replay is not None) for r in runs)
    assert all("test_acc" in r.metrics and "val_acc" in r.metrics for r in runs)
    assert {r.run_id for r in runs} == {r["run_id"] for r in result["runs"]}
    by_arch = {r["architecture"]: r for r in result["runs"]}
    assert by_arch["baseline"]["params_start"] == by_arch["baseline"]["params_end"]
    assert by_arch["adaptive"]["params_end"] > by_arch["adaptive"]["params_start"]
    adaptive_id = by_arch["adaptive"]["run_id"]
    grown = snaps[snaps["run_id"] == adaptive_id]["trainable_params"]
    assert grown.max() > grown.min()
    assert all(r["test_acc"] > 0.8 for r in result["runs"])

    html = out / "report.html"
    assert result["report"]["html_path"] == str(html) and html.stat().st_size > 0
    text = html.read_text()
    for name in ("baseline", "constrained", "adaptive"):
        assert name in text
    import pandas as pd

    reported = pd.read_csv(out / "runs.csv")
    assert sorted(reported["run_id"]) == sorted(r.run_id for r in runs)  # the demo's runs only
    assert (out / "phases.csv").stat().st_size > 0


def test_a_run_the_ledger_did_not_record_is_an_error_not_a_silent_gap(tmp_path, monkeypatch):
    import sqlite3

    from wattwise.errors import WattwiseError
    from wattwise.ledger import Ledger
    from wattwise.zoo.demo import run_demo

    def refuse(self, **kwargs):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(Ledger, "begin_run", refuse)
    with pytest.raises(WattwiseError, match="baseline: trained, but no run was recorded"):
        run_demo(
            epochs=1, ledger=tmp_path / "d.db", out_dir=tmp_path / "out", architectures=["baseline"]
        )
    assert not (tmp_path / "out" / "report.html").exists()


@pytest.mark.slow
def test_demo_prints_a_summary_table_and_the_report_path(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("WATTWISE_REPLAY_NVML", raising=False)
    monkeypatch.chdir(tmp_path)
    code = main(["demo", "--epochs", "2", "--ledger", "d.db", "--out", "out"])
    assert code == 0
    captured = capsys.readouterr()
    out, err = captured.out, captured.err
    for name in ("baseline", "constrained", "adaptive"):  # the progress display, on stderr
        assert re.search(rf"{name}: done .* 2/2 epochs .* val_acc 0\.\d{{3}} +[\d.e-]+ Wh", err)
    lines = out.splitlines()
    for name in ("baseline", "constrained", "adaptive"):
        row = next(line for line in lines if f" {name} " in line)
        cells = [c.strip() for c in row.strip("│ ").split("│")]
        assert cells[0] == name and 0.0 < float(cells[1]) <= 1.0  # model, test accuracy
        assert float(cells[3]) > 0  # Wh
    assert "report: out/report.html" in out
    assert (tmp_path / "out" / "report.html").exists()


@pytest.mark.parametrize("architectures", [["nope"], [], ["baseline", "Baseline"]])
def test_run_demo_refuses_unknown_architectures(tmp_path, architectures):
    from wattwise.errors import BadInput
    from wattwise.zoo.demo import run_demo

    with pytest.raises(BadInput, match="expected names among"):
        run_demo(epochs=1, ledger=tmp_path / "d.db", architectures=architectures)
    assert not (tmp_path / "d.db").exists()
