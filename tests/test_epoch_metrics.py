"""Per-epoch metrics and training-sample counts: EnergyCallback records them, the ledger keeps
them, the report turns them into ``j_per_train_sample`` and ``wh_to_best_val`` and a chart.

Real Lightning fits on the CPU (the H200 trace replayed), real ledgers; expected numbers are
worked out from the ledger's own rows, never hard-coded energies."""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import sys
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from test_callback import TinyModel, loader, replay, trainer  # noqa: F401
from torch.utils.data import DataLoader, TensorDataset

from lightning_callbacks import EnergyCallback
from lightning_callbacks._compat import batch_size
from lightning_callbacks.energy import _RankReport, _sum_train_samples
from wattwise import config
from wattwise.cli import main
from wattwise.ledger import Ledger
from wattwise.report import build_report
from wattwise.report._data import is_validation_metric
from wattwise.types import ArchSnapshot, DeviceInfo, PhaseEnergy
from wattwise.units import J_PER_WH

VAL_LOSS = (0.9, 0.2, 0.5)  # scripted per epoch: the best epoch is 1
UNKNOWN = "cannot tell how many samples"
GPU = DeviceInfo("gpu:GPU-6c1d9a3e-0000-4000-8000-0000000000aa", "gpu", "NVIDIA H200", "counter")


class ScriptedValModel(TinyModel):
    """Validation loss VAL_LOSS[epoch] whatever the weights, so the best epoch is known."""

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", VAL_LOSS[self.current_epoch])


class PythonBatchModel(TinyModel):
    """Training batches of plain Python lists: no tensor for Lightning to take a size from."""

    def training_step(self, batch, batch_idx):
        x, y = torch.tensor(batch["x"]), torch.tensor(batch["y"])
        return torch.nn.functional.cross_entropy(self.layer(x), y)


def python_batches(n: int = 40) -> DataLoader:
    data = TensorDataset(torch.randn(n, 8), torch.randint(0, 2, (n,)))

    def collate(items):
        return {"x": [x.tolist() for x, _ in items], "y": [int(y) for _, y in items]}

    return DataLoader(data, batch_size=8, collate_fn=collate)


def report_table(db: pathlib.Path, out: pathlib.Path, tmp_path: pathlib.Path) -> pd.DataFrame:
    settings = config.load(env={}, cwd=tmp_path)
    result = build_report(db, out_dir=out, region="FRA", settings=settings)
    return pd.read_csv(result.runs_csv).set_index("run_id")


def epoch_energy_j(ledger: Ledger, run_id: str) -> pd.Series:
    phases = ledger.phases(run_id)
    return phases[phases["epoch"].notna()].groupby("epoch")["energy_j"].sum()


# ------------------------------------------------------------------------------ real fits


@pytest.mark.slow
def test_fit_records_val_loss_and_sample_counts_and_the_report_uses_them(
    tmp_path,
    replay,  # noqa: F811
):
    db = tmp_path / "w.db"
    cb = EnergyCallback(ledger=db)
    # 60 samples in batches of 8: the last batch holds 4, so batches x 8 would be wrong
    trainer(tmp_path, [cb], max_epochs=3).fit(ScriptedValModel(), loader(60), loader(32))

    assert cb.epoch_train_samples == [60, 60, 60]
    ledger = Ledger(db)
    snaps = ledger.snapshots(cb.run_id)
    assert list(snaps["train_samples"]) == [60, 60, 60]
    assert [m["val_loss"] for m in snaps["metrics"]] == pytest.approx(VAL_LOSS)
    assert all("train_loss" in m for m in snaps["metrics"])  # the epoch's training metric too
    assert not any(name.startswith("energy/") for m in snaps["metrics"] for name in m)

    table = report_table(db, tmp_path / "report", tmp_path)
    row = table.loc[cb.run_id]
    per_epoch_j = epoch_energy_j(ledger, cb.run_id)
    # the report works from phases rounded to the mJ: at most 0.5 mJ off per row
    n_rows = int(ledger.phases(cb.run_id)["epoch"].notna().sum())
    assert row["j_per_train_sample"] == pytest.approx(
        per_epoch_j.sum() / 180, abs=0.0005 * n_rows / 180
    )
    # best val_loss in epoch 1: every row recorded up to the end of epoch 1 (one fit: epochs
    # 0 and 1, nothing in between)
    phases = ledger.phases(cb.run_id)
    n_upto = int(phases["epoch"].isin([0, 1]).sum())
    assert row["wh_to_best_val"] == pytest.approx(
        per_epoch_j.loc[[0, 1]].sum() / J_PER_WH, abs=0.0005 * n_upto / J_PER_WH
    )
    assert row["wh_to_best_val"] < row["total_wh"]
    html = (tmp_path / "report" / "report.html").read_text()
    assert '<section id="val">' in html and "Wh to best val_loss" in html


@pytest.mark.slow
def test_a_batch_without_a_size_leaves_the_count_unknown_and_warns_once(
    tmp_path,
    replay,  # noqa: F811
    caplog,
):
    db = tmp_path / "w.db"
    cb = EnergyCallback(ledger=db)
    with caplog.at_level(logging.WARNING, logger="lightning_callbacks.energy"):
        trainer(tmp_path, [cb], max_epochs=2).fit(PythonBatchModel(), python_batches(), loader(32))
    warnings = [r for r in caplog.records if UNKNOWN in r.getMessage()]
    assert len(warnings) == 1  # 2 epochs x 5 batches, one warning
    assert cb.epoch_train_samples == [None, None]
    ledger = Ledger(db)
    assert ledger.get_run(cb.run_id).status == "finished"  # training went on
    assert ledger.snapshots(cb.run_id)["train_samples"].isna().all()

    row = report_table(db, tmp_path / "report", tmp_path).loc[cb.run_id]
    assert pd.isna(row["j_per_train_sample"])
    assert not pd.isna(row["wh_to_best_val"])  # the validation metric is still per epoch


@pytest.mark.slow
def test_epoch_metrics_and_counts_survive_a_resume(tmp_path, replay):  # noqa: F811
    db = tmp_path / "w.db"
    ckpt_dir = tmp_path / "ckpt"
    first = EnergyCallback(ledger=db)
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, save_top_k=-1, every_n_epochs=1)
    trainer(tmp_path, [first, checkpoint], max_epochs=2).fit(
        ScriptedValModel(), loader(60), loader(32)
    )
    ckpt = ckpt_dir / "epoch=1-step=16.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["callbacks"][first.state_key]
    assert state["epoch_train_samples"] == [60, 60]

    second = EnergyCallback(ledger=db)  # a fresh callback, as in a new process
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, save_top_k=-1, every_n_epochs=1)
    trainer(tmp_path, [second, checkpoint], max_epochs=3).fit(
        ScriptedValModel(), loader(60), loader(32), ckpt_path=ckpt
    )
    assert second.run_id == first.run_id
    assert second.epoch_train_samples == [60, 60, 60]
    assert second.epoch_metrics[:2] == first.epoch_metrics
    assert [m["val_loss"] for m in second.epoch_metrics] == pytest.approx(VAL_LOSS)
    snaps = Ledger(db).snapshots(first.run_id)
    assert list(snaps["epoch"]) == [0, 1, 2] and list(snaps["train_samples"]) == [60, 60, 60]


def test_a_checkpoint_from_before_the_lists_loads_as_unknown_epochs():
    cb = EnergyCallback(ledger=None)
    cb.load_state_dict({"run_id": "r", "epochs_completed": 2, "epoch_energy_j": [1.0, 2.0]})
    assert cb.epoch_train_samples == [None, None] and cb.epoch_metrics == [{}, {}]


# ------------------------------------------------------------------------------ counting


def test_batch_size_is_lightnings_size_or_none_when_it_cannot_be_sure():
    fit = SimpleNamespace()  # not a lightning.* trainer: the pytorch_lightning namespace
    x8, y8 = torch.zeros(8, 3), torch.zeros(8)
    assert batch_size(fit, (x8, y8)) == 8
    assert batch_size(fit, {"x": x8, "extra": [y8], "name": "batch"}) == 8

    @dataclasses.dataclass
    class Batch:
        x: torch.Tensor
        ids: list

    assert batch_size(fit, Batch(torch.zeros(5, 2), ["a"] * 5)) == 5
    assert batch_size(fit, (x8, torch.zeros(3))) is None  # ambiguous: Lightning would say 8
    assert batch_size(fit, {"x": [[0.0, 1.0]], "y": [1]}) is None  # no tensor at all
    assert batch_size(fit, "text") is None


def test_ranks_add_up_and_one_unknown_rank_makes_the_epoch_unknown(tmp_path):
    def report(samples):
        return _RankReport(0, (), (), train_samples=samples)

    assert _sum_train_samples([report(32), report(32)]) == 64
    assert _sum_train_samples([report(32), report(None)]) is None
    assert _sum_train_samples([report(32), None]) is None  # a rank whose report failed
    # a rank that measures nothing (no meter) still reports what it trained on
    cb = EnergyCallback(ledger=tmp_path / "w.db")
    cb._epoch_samples = 24
    rank = SimpleNamespace(node_rank=0)
    assert cb._local_report(rank, True).train_samples == 24
    assert cb._local_report(rank, False).train_samples is None  # teardown: not an epoch


# ------------------------------------------------------------------------------ report


def phases_of(epoch_j: float, index: int) -> list[PhaseEnergy]:
    return [PhaseEnergy("train", index, GPU.device_id, "gpu", 0.0, 10.0, epoch_j, "counter")]


def record(ledger, architecture, epochs, *, final=None, tail_after=None):
    """A run of ``epochs`` = [(energy_j, metrics, train_samples)], optionally a 500 J row with
    epoch=None after epoch ``tail_after`` (the tail of a call before a resume)."""
    run_id = ledger.begin_run(architecture=architecture, devices=[GPU])
    for epoch, (energy_j, metrics, samples) in enumerate(epochs):
        ledger.add_phases(
            run_id,
            phases_of(energy_j, epoch),
            epoch=epoch,
            snapshot=ArchSnapshot(10, 10, "M", architecture),
            epochs_completed=epoch + 1,
            metrics=metrics,
            train_samples=samples,
        )
        if epoch == tail_after:
            ledger.add_phases(run_id, phases_of(500.0, 99), epoch=None)
    ledger.finish_run(run_id, metrics=final or {})
    return run_id


def test_best_epoch_follows_the_headline_metric_and_its_direction(tmp_path):
    db = tmp_path / "w.db"
    with Ledger(db) as ledger:
        acc = [{"val_acc": a, "val_loss": 1 - a} for a in (0.5, 0.8, 0.8, 0.6)]
        # val_acc is the headline (higher is better); the tie goes to the earlier epoch 1
        run_a = record(ledger, "a", [(1000.0, m, 100) for m in acc], final={"val_acc": 0.6})
        # best in epoch 2, after a tail row of an earlier call: the tail is energy spent before
        run_b = record(
            ledger,
            "b",
            [(2000.0, {"val_acc": a}, 100) for a in (0.1, 0.2, 0.9)],
            final={"val_acc": 0.9},
            tail_after=1,
        )
        # one epoch's count unknown: no J per sample rather than a wrong one
        run_c = record(ledger, "c", [(1000.0, acc[0], 100), (1000.0, acc[1], None)])
    table = report_table(db, tmp_path / "out", tmp_path)
    ledger = Ledger(db)
    a_j = epoch_energy_j(ledger, run_a)
    assert table.loc[run_a, "wh_to_best_val"] == pytest.approx(a_j.loc[[0, 1]].sum() / J_PER_WH)
    assert table.loc[run_a, "j_per_train_sample"] == pytest.approx(a_j.sum() / 400)
    b_j = epoch_energy_j(ledger, run_b)
    b_total_j = ledger.get_run(run_b).energy_j
    assert b_total_j == pytest.approx(b_j.sum() + 500.0)
    assert table.loc[run_b, "wh_to_best_val"] == pytest.approx(b_total_j / J_PER_WH)
    # J per sample counts the training epochs' rows only, not the tail
    assert table.loc[run_b, "j_per_train_sample"] == pytest.approx(b_j.sum() / 300)
    assert pd.isna(table.loc[run_c, "j_per_train_sample"])
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Wh to best val_acc" in html and "highest per-epoch val_acc" in html


def test_a_headline_metric_not_recorded_per_epoch_falls_back_to_val_loss(tmp_path):
    db = tmp_path / "w.db"
    with Ledger(db) as ledger:
        losses = [{"val_loss": v} for v in (0.7, 0.3, 0.4)]
        run_id = record(ledger, "a", [(1000.0, m, 10) for m in losses], final={"test_acc": 0.9})
    table = report_table(db, tmp_path / "out", tmp_path)
    j = epoch_energy_j(Ledger(db), run_id)
    assert table.loc[run_id, "wh_to_best_val"] == pytest.approx(j.loc[[0, 1]].sum() / J_PER_WH)
    html = (tmp_path / "out" / "report.html").read_text()
    assert "lowest per-epoch val_loss" in html


def test_validation_metric_names():
    assert all(map(is_validation_metric, ("val_loss", "val/acc", "valid_f1", "validation_loss")))
    assert not any(map(is_validation_metric, ("value", "train_loss", "test_acc", "interval")))


@pytest.mark.slow
def test_replay_and_run_leave_both_columns_empty(tmp_path, nvml_fixtures, capsys):
    db = tmp_path / "w.db"
    replay_args = [
        "replay",
        str(nvml_fixtures / "h200-mlp6144-8epochs-20hz.csv"),
        "--marks",
        str(nvml_fixtures / "h200-mlp6144-8epochs-marks.json"),
        "--ledger",
        str(db),
        "--architecture",
        "mlp6144",
    ]
    assert main(replay_args) == 0
    assert main(["run", "--ledger", str(db), "--", sys.executable, "-c", "pass"]) == 0
    capsys.readouterr()
    with Ledger(db) as ledger:
        snaps = ledger.snapshots()
        assert len(ledger.list_runs()) == 2
    assert snaps["train_samples"].isna().all() and snaps["metrics"].isna().all()
    table = report_table(db, tmp_path / "out", tmp_path)
    assert table["j_per_train_sample"].isna().all()
    assert table["wh_to_best_val"].isna().all()
    html = (tmp_path / "out" / "report.html").read_text()
    assert '<section id="val">' not in html  # no per-epoch metrics: no chart
    assert "wh_to_best_val is empty" in html
