"""Run filters on a lab-sized SQLite ledger: SQL narrowing (indexed user_name/job_id/started_at)
against reading every run and filtering in Python, side by side in one run.

Builds ``--runs`` runs (``--users`` users, one SLURM job each, starts spread over ``--days``),
``--epochs`` epochs x 2 stages x 2 devices each, through the Ledger API (one ``add_epochs``
transaction per run). Then, for ``--user U --since D`` (about runs / users / 2 runs):

- ``list_runs(filter)`` against ``[r for r in list_runs() if filter.matches(r)]``;
- the report's data step (``report._data.collect``: read and price) with ``run_filter`` against
  the same run ids given as ids, which reads every phase of the ledger (more than 50 selected
  runs are read in one pass); then the whole report with the filter (HTML charts dominate).

    python bench/filter_scale.py [--runs 20000] [--users 20] [--epochs 20] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import tempfile
import time
from datetime import UTC, datetime, timedelta

from wattwise import config
from wattwise.ledger import Ledger
from wattwise.report import _data, build_report
from wattwise.runfilter import RunFilter
from wattwise.types import ArchSnapshot, DeviceInfo, PhaseEnergy

DEVICES = (
    DeviceInfo("gpu:GPU-5f0b2c1e-8d6a-4f3b-9e21-7c4d8a9b0e12", "gpu", "NVIDIA H200", "counter"),
    DeviceInfo("cpu:machine", "cpu", "Intel Xeon", "estimate", flags=frozenset({"estimated"})),
)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def epoch_phases(epoch: int) -> list[PhaseEnergy]:
    phases = []
    t_s = epoch * 20.0
    for index, stage in enumerate(("train", "validate")):
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
                    power_w,
                    device.flags,
                )
            )
        t_s += 10.0
    return phases


def timed(action):
    t0 = time.perf_counter()
    result = action()
    return result, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20000)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--out", type=pathlib.Path, default=None, help="keep the files here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or pathlib.Path(tmp)
        path = out / "filter-scale.db"
        path.unlink(missing_ok=True)
        by_epoch = [epoch_phases(epoch) for epoch in range(args.epochs)]
        snapshot = ArchSnapshot(1_000_000, 1_000_000, "MLP", "baseline")
        step = timedelta(days=args.days) / args.runs
        t0 = time.perf_counter()
        with Ledger(path) as ledger:
            for i in range(args.runs):
                user = f"user{i % args.users:03d}"
                run_id = ledger.begin_run(
                    architecture=f"arch-{i % 3}",
                    devices=DEVICES,
                    started_at=T0 + i * step,
                    scheduler={"user": user, "job_id": str(100000 + i), "slurm": {"user": user}},
                )
                ledger.add_epochs(
                    run_id,
                    [(epoch, phases, snapshot) for epoch, phases in enumerate(by_epoch)],
                    epochs_completed=args.epochs,
                )
                ledger.finish_run(run_id, metrics={"val_loss": 0.1})
        write_s = time.perf_counter() - t0
        flt = RunFilter(
            user=f"user{min(7, args.users - 1):03d}", since=T0 + timedelta(days=args.days / 2)
        )
        settings = config.load(cwd=out, env={})
        with Ledger(path) as ledger:
            ledger.list_runs(RunFilter(user="warm-up"))  # open and migrate outside the timing
            sql_runs, sql_s = timed(lambda: ledger.list_runs(flt))
            py_runs, py_s = timed(lambda: [r for r in ledger.list_runs() if flt.matches(r)])
            assert [r.run_id for r in sql_runs] == [r.run_id for r in py_runs]
            ids = [r.run_id for r in sql_runs]
            # the report's data step (read + price), which the filter changes, side by side
            common = {"region": None, "pricing": None, "settings": settings}
            _data.collect(ledger, ids[:1], **common)  # imports and price tables, untimed
            data_sql, data_sql_s = timed(
                lambda: _data.collect(ledger, None, run_filter=flt, **common)
            )
            data_ids, data_ids_s = timed(lambda: _data.collect(ledger, ids, **common))
            assert len(data_sql.phases) == len(data_ids.phases) > 0
            report, report_s = timed(
                lambda: build_report(
                    ledger, out_dir=out / "filtered", run_filter=flt, settings=settings
                )
            )
            assert report.n_runs == len(ids)
        n_phases = args.runs * args.epochs * 2 * len(DEVICES)
        print(f"{args.runs} runs x {args.epochs} epochs = {n_phases} phase rows, written in "
              f"{write_s:.1f} s; file {path.stat().st_size / 2**20:.0f} MiB")  # fmt: skip
        print(f"filter {flt.describe()}: {len(ids)} runs")
        print(f"list_runs: SQL {sql_s:.3f} s, every run + matches() {py_s:.3f} s: "
              f"{py_s / sql_s:.0f}x")  # fmt: skip
        print(f"report data (read + price) of those runs: run_filter {data_sql_s:.2f} s, "
              f"by run ids {data_ids_s:.2f} s: {data_ids_s / data_sql_s:.1f}x")  # fmt: skip
        print(f"whole report (HTML, charts, CSV) with run_filter: {report_s:.2f} s")
        print(f"load average (1 min): {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
