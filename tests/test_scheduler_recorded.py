"""Every way a run is made records the scheduler metadata of the process that makes it:
EnergyCallback (rank 0, at on_fit_start), Meter, `wattwise run`, `wattwise replay --ledger`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from fakes import FakeSensor

from wattwise.cli import main
from wattwise.ledger import Ledger
from wattwise.meter import Meter

SLURM = {
    "SLURM_JOB_ID": "81238",
    "SLURM_ARRAY_JOB_ID": "81234",
    "SLURM_ARRAY_TASK_ID": "4",
    "SLURM_JOB_USER": "alice",
    "SLURM_JOB_PARTITION": "gpu",
    "SLURM_JOB_ACCOUNT": "ml-lab",
}


@pytest.fixture
def in_slurm(monkeypatch):
    for name in list(os.environ):
        if name.startswith(("SLURM", "KUBERNETES", "TORCHELASTIC")):
            monkeypatch.delenv(name)
    for name, value in SLURM.items():
        monkeypatch.setenv(name, value)


def assert_slurm_run(path, run_id):
    with Ledger(path) as book:
        rec = book.get_run(run_id)
        assert (rec.user, rec.job_id) == ("alice", "81234_4")
        assert rec.scheduler["slurm"]["partition"] == "gpu"
        assert rec.scheduler["slurm"]["account"] == "ml-lab"
        assert [r.run_id for r in book.list_runs(book_filter())] == [run_id]


def book_filter():
    from wattwise.runfilter import RunFilter

    return RunFilter(user="alice", job="81234")


def test_meter(tmp_path, in_slurm):
    with Meter(ledger=tmp_path / "w.db", architecture="m", sensors=[FakeSensor(10.0)]) as meter:
        pass
    assert_slurm_run(tmp_path / "w.db", meter.run_id)


def test_wattwise_run_records_its_own_process_environment(tmp_path, in_slurm):
    db = tmp_path / "w.db"
    cmd = [sys.executable, "-m", "wattwise", "run", "--ledger", str(db), "--json", "--"]
    done = subprocess.run(
        [*cmd, sys.executable, "-c", "pass"], capture_output=True, text=True, check=True
    )
    assert_slurm_run(db, json.loads(done.stdout)["run_id"])


def test_replay_into_the_ledger(tmp_path, in_slurm, capsys, nvml_fixtures):
    db = tmp_path / "w.db"
    args = ["replay", str(nvml_fixtures / "h200-mlp6144-8epochs-20hz.csv")]
    args += ["--marks", str(nvml_fixtures / "h200-mlp6144-8epochs-marks.json")]
    assert main([*args, "--ledger", str(db), "--json"]) == 0
    assert_slurm_run(db, json.loads(capsys.readouterr().out)["run_id"])


@pytest.mark.slow
def test_energy_callback(tmp_path, in_slurm, monkeypatch):
    import pytorch_lightning as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    import wattwise.meter as meter_module
    from lightning_callbacks import EnergyCallback

    real = meter_module.Meter

    class FakeMeter(real):
        def __init__(self, *args, **kwargs):
            kwargs["sensors"] = [FakeSensor(100.0)]
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(meter_module, "Meter", FakeMeter)

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 2)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.layer(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,)))
    cb = EnergyCallback(ledger=tmp_path / "w.db")
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        callbacks=[cb],
    )
    trainer.fit(Tiny(), DataLoader(data, batch_size=8))
    assert_slurm_run(tmp_path / "w.db", cb.run_id)
