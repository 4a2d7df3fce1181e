"""Report scale: `build_report` over a ledger of 1,000 runs x 100 epochs.

Builds the ledger through the Ledger API (``begin_run``, one ``add_epochs`` transaction per run,
``add_timeline``, ``finish_run``): 5 architectures, train + validate stages on a GPU, CPU and RAM
(600,000 phase rows), a stored power timeline per device, models that grow, fine-tunes with a
parent, final metrics, and per epoch the validation metrics and training-sample count that
EnergyCallback records (for ``wh_to_best_val``, ``j_per_train_sample`` and the
validation-vs-energy chart). Then times ``build_report`` with two pricing scenarios and prints
the time and the sizes of the HTML and CSV files (targets: under 10 s, HTML under 3 MB), and
the CPU time the ledger reads alone take. Timelines, per-epoch, growth and validation charts show
at most 12 runs or 10 architectures; the tables and CSV files stay complete.

    python bench/report_scale.py [--runs 1000] [--epochs 100] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import random
import tempfile
import time
from datetime import UTC, datetime, timedelta

from wattwise.ledger import Ledger
from wattwise.report import build_report
from wattwise.types import ArchSnapshot, DeviceInfo, PhaseEnergy

ARCHITECTURES = ("baseline", "constrained", "adaptive", "resnet18", "vit-tiny")
DEVICES = (
    DeviceInfo(
        "gpu:GPU-5f0b2c1e-8d6a-4f3b-9e21-7c4d8a9b0e12",
        "gpu",
        "NVIDIA H200",
        "counter",
        flags=frozenset({"averaged_power"}),
    ),
    DeviceInfo("cpu:machine", "cpu", "AMD EPYC 9454", "estimate", flags=frozenset({"estimated"})),
    DeviceInfo("ram", "ram", "DRAM 512 GiB", "estimate", flags=frozenset({"estimated"})),
)
POWER_W = {"gpu": (640.0, 310.0), "cpu": (120.0, 90.0), "ram": (40.0, 40.0)}  # train, validate
T0 = datetime(2026, 10, 1, tzinfo=UTC)


def add_run(ledger: Ledger, i: int, epochs: int, rng: random.Random, parent: str | None) -> str:
    arch = ARCHITECTURES[i % len(ARCHITECTURES)]
    train_s, val_s = rng.uniform(20, 40), rng.uniform(3, 6)
    start = T0 + timedelta(hours=i)
    run_id = ledger.begin_run(
        architecture=arch,
        parent_run_id=parent,
        tags=("scale",),
        settings={"sample_hz": 10.0},
        region="FRA" if i % 2 else None,
        devices=DEVICES,
        started_at=start,
    )
    rows = []
    t_s = 0.0
    params = 1_000_000
    accuracy = 0.80 + 0.1 * rng.random() + 0.02 * ARCHITECTURES.index(arch)
    for epoch in range(epochs):
        phases = []
        for index, (stage, seconds) in enumerate((("train", train_s), ("validate", val_s))):
            for device in DEVICES:
                power_w = POWER_W[device.kind][index] * rng.uniform(0.95, 1.05)
                phases.append(
                    PhaseEnergy(
                        stage,
                        2 * epoch + index,
                        device.device_id,
                        device.kind,
                        t_s,
                        t_s + seconds,
                        power_w * seconds,
                        device.method,
                        power_w,
                        power_w * 1.1,
                        device.flags,
                    )
                )
            t_s += seconds
        if arch == "adaptive" and epoch % 25 == 24:
            params = int(params * 1.5)  # widened when validation loss plateaued
        # validation accuracy rising towards the run's final value, with noise
        val_acc = accuracy * (1 - 0.5 / (1 + epoch)) + rng.uniform(-0.01, 0.01)
        metrics = {"val_acc": val_acc, "val_loss": 1.0 - val_acc, "train_loss": 0.9 - val_acc}
        snapshot = ArchSnapshot(params, params, arch, arch)
        rows.append((epoch, phases, snapshot, metrics, 50_000))
    ledger.add_epochs(run_id, rows, epochs_completed=epochs)
    for device in DEVICES:
        points = [
            (k * t_s / 200, POWER_W[device.kind][0] * rng.uniform(0.9, 1.1)) for k in range(200)
        ]
        ledger.add_timeline(run_id, device.device_id, points)
    ledger.finish_run(
        run_id,
        metrics={"val_acc": accuracy, "val_loss": 1.0 - accuracy},
        ended_at=start + timedelta(seconds=t_s),
    )
    return run_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--out", type=pathlib.Path, default=None, help="keep the outputs here")
    args = parser.parse_args()

    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        where = args.out or pathlib.Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        path = where / "report-scale.db"
        path.unlink(missing_ok=True)
        t0 = time.perf_counter()
        with Ledger(path) as ledger:
            ids: list[str] = []
            for i in range(args.runs):
                parent = ids[i - 7] if i % 50 == 49 else None  # a fine-tune now and then
                ids.append(add_run(ledger, i, args.epochs, rng, parent))
        build_s = time.perf_counter() - t0

        t0, c0 = time.perf_counter(), time.process_time()
        with Ledger(path) as ledger:
            result = build_report(
                ledger, out_dir=where / "report", pricing=["onprem", "aws:p5.48xlarge"]
            )
        report_s, report_cpu_s = time.perf_counter() - t0, time.process_time() - c0

        # for context: the part of that time spent reading the ledger back
        t0 = time.process_time()
        with Ledger(path) as ledger:
            ledger.list_runs()
            ledger.phases()
        read_cpu_s = time.process_time() - t0

        def mb(p: pathlib.Path) -> float:
            return p.stat().st_size / 1e6

        print(f"ledger: {args.runs} runs x {args.epochs} epochs x 2 stages x 3 devices "
              f"({args.runs * args.epochs * 6} phase rows), built in {build_s:.1f} s")  # fmt: skip
        print(f"build_report: {report_s:.2f} s wall, {report_cpu_s:.2f} s CPU (target < 10 s)")
        print(f"  of which reading the ledger (list_runs + phases): about {read_cpu_s:.2f} s CPU")
        print(f"report.html: {mb(result.html_path):.2f} MB (target < 3 MB)")
        print(f"runs.csv: {mb(result.runs_csv):.2f} MB, phases.csv: {mb(result.phases_csv):.1f} MB")
        print(f"load average (1 min): {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
        if args.out:
            print(f"outputs under {where}")


if __name__ == "__main__":
    main()
