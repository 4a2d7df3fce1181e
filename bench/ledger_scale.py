"""Ledger scale: write and read back 1,000 runs x 100 epochs x 4 stages x 2 devices.

Write: ``begin_run``, one ``add_epochs`` transaction (executemany) per run, ``finish_run``, as a
replayed or imported recording is stored. Read back: the ``runs()`` and ``phases()`` DataFrames.
Prints both times and the file size (target: each under 5 s on a 2-core laptop). It also times
the live-training path, one ``add_phases`` transaction per epoch, on ``--live-runs`` more runs.

    python bench/ledger_scale.py [--runs 1000] [--epochs 100] [--live-runs 20] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import tempfile
import time

from wattwise.ledger import Ledger
from wattwise.types import ArchSnapshot, DeviceInfo, PhaseEnergy

STAGES = ("train", "validate", "test", "predict")
DEVICES = (
    DeviceInfo("gpu:GPU-5f0b2c1e-8d6a-4f3b-9e21-7c4d8a9b0e12", "gpu", "NVIDIA H200", "counter"),
    DeviceInfo("cpu:machine", "cpu", "Intel Xeon", "estimate", flags=frozenset({"estimated"})),
)


def epoch_phases(epoch: int) -> list[PhaseEnergy]:
    phases = []
    t_s = epoch * 40.0
    for index, stage in enumerate(STAGES):
        for device in DEVICES:
            power_w = 650.0 if device.kind == "gpu" else 45.0
            phases.append(
                PhaseEnergy(
                    stage,
                    index,
                    device.device_id,
                    device.kind,
                    t_s,
                    t_s + 10.0,
                    power_w * 10.0,
                    device.method,
                    power_w,
                    power_w * 1.05,
                    device.flags,
                )
            )
        t_s += 10.0
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--live-runs", type=int, default=20)
    parser.add_argument("--out", type=pathlib.Path, default=None, help="keep the file here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = (args.out or pathlib.Path(tmp)) / "ledger-scale.db"
        path.unlink(missing_ok=True)
        by_epoch = [epoch_phases(epoch) for epoch in range(args.epochs)]
        snapshot = ArchSnapshot(1_000_000, 1_000_000, "MLP", "baseline")

        t0, c0 = time.perf_counter(), time.process_time()
        with Ledger(path) as ledger:
            for i in range(args.runs):
                run_id = ledger.begin_run(architecture=f"arch-{i % 3}", devices=DEVICES)
                ledger.add_epochs(
                    run_id,
                    [(epoch, phases, snapshot) for epoch, phases in enumerate(by_epoch)],
                    epochs_completed=args.epochs,
                )
                ledger.finish_run(run_id, metrics={"val_loss": 0.1})
        write_s, write_cpu_s = time.perf_counter() - t0, time.process_time() - c0

        t0, c0 = time.perf_counter(), time.process_time()
        with Ledger(path) as ledger:
            runs = ledger.runs()
            phases = ledger.phases()
        read_s, read_cpu_s = time.perf_counter() - t0, time.process_time() - c0
        size_mib = path.stat().st_size / 2**20

        live_path = path.with_name("ledger-live.db")
        live_path.unlink(missing_ok=True)
        t0, c0 = time.perf_counter(), time.process_time()
        with Ledger(live_path) as ledger:
            for i in range(args.live_runs):
                run_id = ledger.begin_run(architecture=f"arch-{i % 3}", devices=DEVICES)
                for epoch, epoch_rows in enumerate(by_epoch):
                    ledger.add_phases(
                        run_id,
                        epoch_rows,
                        epoch=epoch,
                        snapshot=snapshot,
                        epochs_completed=epoch + 1,
                    )
                ledger.finish_run(run_id)
        live_s = time.perf_counter() - t0
        n_live_commits = args.live_runs * args.epochs

        n_phases = args.runs * args.epochs * len(STAGES) * len(DEVICES)
        assert len(runs) == args.runs and len(phases) == n_phases, (len(runs), len(phases))
        print(
            f"{args.runs} runs x {args.epochs} epochs x {len(STAGES)} stages x "
            f"{len(DEVICES)} devices = {n_phases} phase rows"
        )
        print(f"write: {write_s:.2f} s wall, {write_cpu_s:.2f} s CPU")
        print(
            f"read back (runs() + phases() DataFrames): {read_s:.2f} s wall, {read_cpu_s:.2f} s CPU"
        )
        print(
            f"load average (1 min) while it ran: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
        )
        print(f"file size: {size_mib:.1f} MiB")
        if n_live_commits:
            print(
                f"live path: {n_live_commits} add_phases commits (one per epoch) in {live_s:.2f} s"
                f" = {1e6 * live_s / n_live_commits:.0f} us per epoch"
            )


if __name__ == "__main__":
    main()
