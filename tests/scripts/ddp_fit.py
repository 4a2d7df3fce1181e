"""A real ``strategy="ddp"`` fit on 2 CPU ranks, for tests/test_callback_ddp_launcher.py.

Lightning's ``ddp`` launcher (``_SubprocessScriptLauncher``) starts the other ranks by running
this file again (``sys.argv``) with ``LOCAL_RANK`` / ``NODE_RANK`` / ``WORLD_SIZE`` set, so it
cannot run inside pytest: the tests run this script in a subprocess.

    python tests/scripts/ddp_fit.py LEDGER OUT_DIR [--epochs N] [--budget-kwh X] [--step-s S]
        [--num-nodes N --devices N] [--fault-rank R] [--fake-peak-gib RANK=GIB,...]

Set ``WATTWISE_REPLAY_NVML`` (the GPU every rank sees), ``MASTER_ADDR`` and ``MASTER_PORT`` in the
environment. Each process writes ``OUT_DIR/rank<global rank>.json`` after the fit: its ranks, the
run id and numbers it ended with, the epoch it stopped at, the devices each of its Meters
measured, and when each replayed GPU sensor it opened started (``t_open_s``, the sampler's
monotonic clock, shared by every process on the machine) so the test can integrate the trace.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_callbacks import BudgetGuard, EnergyCallback
from wattwise.meter import Meter
from wattwise.sensors.replay import ReplayNvmlSensor


class TinyModel(pl.LightningModule):
    """8 -> 2 linear classifier; each training step takes at least ``step_s``."""

    def __init__(self, step_s: float) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(8, 2)
        self.step_s = step_s

    def training_step(self, batch, batch_idx):
        time.sleep(self.step_s)
        x, y = batch
        return torch.nn.functional.cross_entropy(self.layer(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.cross_entropy(self.layer(x), y), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader(n: int) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(n, 8, generator=generator), torch.randint(0, 2, (n,)))
    return DataLoader(data, batch_size=8)


def record_measurements() -> tuple[list[list[str]], list[dict]]:
    """Note what this process measures: the device ids of each Meter it starts, and each
    replayed GPU it opens (device id and the sampler clock at open)."""
    meters: list[list[str]] = []
    opened: list[dict] = []
    real_start, real_open = Meter.start, ReplayNvmlSensor.open

    def recording_start(self, *args, **kwargs):
        out = real_start(self, *args, **kwargs)
        meters.append([d.device_id for d in self.devices])
        return out

    def recording_open(self):
        devices = real_open(self)
        opened.append({"device_id": self.info.device_id, "t_open_s": self.t_open_s})
        return devices

    Meter.start = recording_start
    ReplayNvmlSensor.open = recording_open
    return meters, opened


def inject_fault(trainer: pl.Trainer, rank: int) -> None:
    """Make the callback's per-epoch metrics read fail on global rank ``rank`` only (a fault the
    callback guards: training must go on, and the run must say so)."""
    import lightning_callbacks.energy as energy

    real = energy._scalar_metrics

    def failing(t):
        if t.global_rank == rank:
            raise RuntimeError(f"injected fault on rank {rank}")
        return real(t)

    energy._scalar_metrics = failing


def fake_peaks(peaks: str) -> None:
    """Make each rank's CUDA peak-memory read return the figure given for its global rank
    (``0=2.5,1=7.5``; reserved: 1.25 x that), as CUDA ranks would report it."""
    import lightning_callbacks.energy as energy

    by_rank = {int(r): float(g) for r, g in (item.split("=") for item in peaks.split(","))}
    energy._cuda_peak_gib = lambda t: (by_rank[t.global_rank], 1.25 * by_rank[t.global_rank])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("ledger")
    parser.add_argument("out_dir")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--budget-kwh", type=float, default=None)
    parser.add_argument("--step-s", type=float, default=0.0)
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--num-nodes", type=int, default=1)
    parser.add_argument("--fault-rank", type=int, default=None)
    parser.add_argument("--fake-peak-gib", default=None)
    args = parser.parse_args()

    torch.set_num_threads(1)  # two ranks on a 2-core machine
    meters, opened = record_measurements()
    energy = EnergyCallback(ledger=args.ledger)
    callbacks: list = [energy]
    guard = None
    if args.budget_kwh is not None:
        guard = BudgetGuard(max_kwh=args.budget_kwh)
        callbacks.append(guard)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=args.devices,
        num_nodes=args.num_nodes,
        strategy="ddp",
        max_epochs=args.epochs,
        num_sanity_val_steps=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=callbacks,
    )
    if args.fault_rank is not None:
        inject_fault(trainer, args.fault_rank)
    if args.fake_peak_gib is not None:
        fake_peaks(args.fake_peak_gib)
    started_s = time.monotonic()
    trainer.fit(TinyModel(args.step_s), loader(32), loader(16))
    ended_s = time.monotonic()

    out = {
        "global_rank": trainer.global_rank,
        "local_rank": trainer.local_rank,
        "node_rank": trainer.node_rank,
        "world_size": trainer.world_size,
        "run_id": energy.run_id,
        "epochs_completed": energy.epochs_completed,
        "current_epoch": trainer.current_epoch,
        "should_stop": bool(trainer.should_stop),
        "energy_j": energy.energy_j,
        "energy_by_kind_j": energy.energy_by_kind_j,
        "flags": sorted(energy.flags),
        "guard_reason": guard.reason if guard is not None else None,
        "meters": meters,
        "replay_opens": opened,
        "fit_started_s": started_s,
        "fit_ended_s": ended_s,
    }
    path = pathlib.Path(args.out_dir) / f"rank{trainer.global_rank}.json"
    path.write_text(json.dumps(out, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
