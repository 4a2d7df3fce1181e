"""Concurrency: several processes writing one ledger at once lose nothing and never fail."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from wattwise.ledger import Ledger

N_WRITERS = 8
RUNS_PER_WRITER = 20
EPOCHS = 3
PHASES_PER_EPOCH = 4  # 2 stages x 2 devices

# Waits for the start signal so all writers hit the (not yet created) file together.
WRITER = f"""
import os, sys, time
from wattwise.ledger import Ledger
from wattwise.types import PhaseEnergy

path, go, writer = sys.argv[1], sys.argv[2], int(sys.argv[3])
open(f"{{go}}.ready-{{writer}}", "w").close()
while not os.path.exists(go):
    time.sleep(0.002)
book = Ledger(path)
for i in range({RUNS_PER_WRITER}):
    run_id = book.begin_run(architecture=f"writer-{{writer}}", tags=[str(i)])
    for epoch in range({EPOCHS}):
        phases = [
            PhaseEnergy(stage, 0, device, device[:3], 0.0, 1.0, 1.0, "estimate")
            for stage in ("train", "validate")
            for device in ("cpu:machine", "ram")
        ]
        book.add_phases(run_id, phases, epoch=epoch, epochs_completed=epoch + 1)
    book.finish_run(run_id, metrics={{"writer": writer}})
book.close()
"""


def _wait_ready(go, names, procs: list[subprocess.Popen]) -> None:
    """Wait until every writer has imported and waits at the line (each says so with a file),
    however long a loaded machine takes: then the go signal starts them together."""
    deadline = time.monotonic() + 240
    while not all(go.with_name(f"{go.name}.ready-{name}").exists() for name in names):
        assert all(proc.poll() is None for proc in procs), [p.communicate() for p in procs]
        assert time.monotonic() < deadline, "the writers did not get ready"
        time.sleep(0.01)


def _start_writers(script: str, args: list[list[str]]) -> list[subprocess.Popen]:
    return [
        subprocess.Popen(
            [sys.executable, "-c", script, *a],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for a in args
    ]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_eight_writer_processes_lose_no_row(tmp_path):
    path = tmp_path / "shared.db"
    go = tmp_path / "go"
    procs = _start_writers(WRITER, [[str(path), str(go), str(w)] for w in range(N_WRITERS)])
    _wait_ready(go, range(N_WRITERS), procs)
    go.touch()
    outputs = [proc.communicate(timeout=480) for proc in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert "locked" not in err.lower() and "busy" not in err.lower(), err
        assert proc.returncode == 0, err

    with Ledger(path) as book:
        runs = book.runs()
        assert len(runs) == N_WRITERS * RUNS_PER_WRITER
        assert runs["run_id"].is_unique
        assert (runs["status"] == "finished").all()
        assert (runs["epochs"] == EPOCHS).all()
        assert sorted(runs["architecture"].value_counts()) == [RUNS_PER_WRITER] * N_WRITERS
        phases = book.phases()
        assert len(phases) == N_WRITERS * RUNS_PER_WRITER * EPOCHS * PHASES_PER_EPOCH
        assert (phases.groupby("run_id").size() == EPOCHS * PHASES_PER_EPOCH).all()
        assert runs["energy_j"].sum() == pytest.approx(float(len(phases)))


# Three real Lightning fits with the EnergyCallback, sharing one ledger.
FIT = """
import os, sys, time
import torch
from torch.utils.data import DataLoader, TensorDataset
import lightning.pytorch as pl
from lightning_callbacks import EnergyCallback

path, go, label = sys.argv[1], sys.argv[2], sys.argv[3]
open(f"{go}.ready-{label}", "w").close()

class Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(8, 1)
    def training_step(self, batch, _):
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)
    def validation_step(self, batch, _):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.layer(x), y))
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

torch.manual_seed(0)
data = TensorDataset(torch.randn(64, 8), torch.randn(64, 1))
while not os.path.exists(go):
    time.sleep(0.01)
callback = EnergyCallback(ledger=path, architecture=label, sample_hz=20)
trainer = pl.Trainer(
    max_epochs=3, limit_train_batches=4, limit_val_batches=2, callbacks=[callback],
    enable_progress_bar=False, enable_model_summary=False, logger=False,
    enable_checkpointing=False, default_root_dir=sys.argv[4], accelerator="cpu",
)
trainer.fit(Tiny(), DataLoader(data, batch_size=16), DataLoader(data, batch_size=16))
print(callback.run_id)
"""


@pytest.mark.slow
@pytest.mark.timeout(600)  # 147 s with two CPU-bound processes beside the suite
def test_concurrent_lightning_fits_lose_nothing(tmp_path):
    path = tmp_path / "shared.db"
    go = tmp_path / "go"
    labels = ["fit-a", "fit-b", "fit-c"]
    procs = _start_writers(
        FIT, [[str(path), str(go), label, str(tmp_path / label)] for label in labels]
    )
    _wait_ready(go, labels, procs)
    go.touch()
    outputs = [proc.communicate(timeout=560) for proc in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-3000:]
        assert "database is locked" not in err
    run_ids = [out.strip().splitlines()[-1] for out, _ in outputs]

    with Ledger(path) as book:
        runs = book.runs().set_index("run_id")
        assert sorted(runs.index) == sorted(run_ids)
        assert sorted(runs["architecture"]) == labels
        assert (runs["status"] == "finished").all()
        assert (runs["epochs"] == 3).all()
        assert (runs["energy_j"] > 0).all()
        phases = book.phases()
        for run_id in run_ids:
            train = phases[(phases["run_id"] == run_id) & (phases["stage"] == "train")]
            assert sorted(set(train["epoch"])) == [0, 1, 2]
            assert train["energy_j"].gt(0).all()
