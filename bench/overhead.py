"""What does measuring cost the training it measures? EnergyCallback against its peers.

The same small Lightning fit (an MLP on random data, fixed steps, several epochs) runs with no
tracker, with EnergyCallback at its default 10 Hz and at 100 Hz, with CodeCarbon's
OfflineEmissionsTracker (measure_power_secs 15 and 1, country FRA, nothing saved) and with Zeus's
ZeusMonitor where it is installed. Each run is a fresh Python process; the trackers are
interleaved, round after round, so drift of the machine hits them all alike. For each tracker it
prints the throughput ratio against the no-tracker run of the same round (median and range over
rounds) and its start-up time (import + construction + start; for EnergyCallback the callback's
set-up hook, where its meter starts), stop time and what energy it reported. Where NVML has GPUs,
EnergyCallback's GPU energy is also set against NVML's raw energy counters read just before and
just after its set-up hook and its teardown: its run starts inside set-up and ends inside
teardown, so its GPU energy must lie between the inner and the outer counter change (give or take
one ~0.1 s counter update at each end).

    python bench/overhead.py                      # a few minutes on a laptop CPU
    python bench/overhead.py --rounds 10 --steps 2000 --json bench/results/overhead.json
    python bench/overhead.py --zeus-path DIR      # Zeus installed with pip --target DIR

Identical runs vary by ~5% on a busy 2-core machine: judge the throughput target (median loss
<= 0.5% at default settings) on a GPU machine and on long runs (``--device cuda --steps ...``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

TRACKERS = ("none", "energy", "energy100", "codecarbon15", "codecarbon1", "zeus")


def _worker(args: argparse.Namespace) -> dict:
    """One fit with one tracker, in this (fresh) process; returns the measurements."""
    if args.zeus_path:
        sys.path.append(args.zeus_path)  # after site-packages: only what is missing comes from it
    import resource

    t0 = time.perf_counter()
    import pytorch_lightning as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    import_base_s = time.perf_counter() - t0
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)

    class Mlp(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(
                torch.nn.Linear(args.width, args.width),
                torch.nn.ReLU(),
                torch.nn.Linear(args.width, args.width),
                torch.nn.ReLU(),
                torch.nn.Linear(args.width, 10),
            )

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    class Clock(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            self.start = time.perf_counter()

        def on_train_end(self, trainer, pl_module):
            self.end = time.perf_counter()

    steps_per_epoch = max(1, args.steps // args.epochs)
    n = steps_per_epoch * args.batch
    data = TensorDataset(torch.randn(n, args.width), torch.randint(0, 10, (n,)))
    loader = DataLoader(data, batch_size=args.batch)
    out: dict = {"tracker": args.worker, "import_lightning_s": import_base_s}
    callbacks: list = [Clock()]
    tracker = None
    stop = lambda: None  # noqa: E731 - replaced per tracker
    workdir = tempfile.mkdtemp(prefix="wattwise-bench-")

    if args.worker in ("energy", "energy100"):
        t = time.perf_counter()
        from lightning_callbacks import EnergyCallback

        cb = EnergyCallback(
            ledger=os.path.join(workdir, "ledger.db"),
            sample_hz=100 if args.worker == "energy100" else 10,
            log_metrics=False,
        )
        out["construct_s"] = time.perf_counter() - t
        setup = cb.setup
        teardown = cb.teardown
        counter = _RawCounter()
        raw: list[float | None] = []
        stamps: list[float] = []

        def read_raw() -> None:
            raw.append(counter.read())
            stamps.append(time.perf_counter())

        def timed_setup(*a, **k):
            read_raw()  # outside the timed span: ~4 ms per GPU on Hopper
            t = time.perf_counter()
            setup(*a, **k)
            out["setup_s"] = time.perf_counter() - t
            read_raw()

        def timed_teardown(*a, **k):
            read_raw()
            t = time.perf_counter()
            teardown(*a, **k)
            out["stop_s"] = time.perf_counter() - t
            read_raw()
            if None not in raw:  # the run lies inside the outer reads, around the inner ones
                out["nvml_outer_wh"] = raw[3] - raw[0]
                out["nvml_inner_wh"] = raw[2] - raw[1]
                out["nvml_outer_s"] = stamps[3] - stamps[0]

        cb.setup, cb.teardown = timed_setup, timed_teardown
        callbacks.append(cb)
    elif args.worker.startswith("codecarbon"):
        t = time.perf_counter()
        try:
            from codecarbon import OfflineEmissionsTracker
        except ImportError as err:
            return {"tracker": args.worker, "skipped": f"codecarbon is not importable ({err})"}

        out["import_s"] = time.perf_counter() - t
        t = time.perf_counter()
        tracker = OfflineEmissionsTracker(
            country_iso_code="FRA",
            measure_power_secs=int(args.worker.removeprefix("codecarbon")),
            save_to_file=False,
            log_level="error",
        )
        tracker.start()
        out["construct_s"] = time.perf_counter() - t

        def stop() -> None:
            tracker.stop()
            data = tracker.final_emissions_data
            out["energy_wh"] = data.energy_consumed * 1000.0

    elif args.worker == "zeus":
        t = time.perf_counter()
        try:
            from zeus.monitor import ZeusMonitor
        except ImportError as err:
            return {"tracker": "zeus", "skipped": f"zeus is not importable ({err})"}
        out["import_s"] = time.perf_counter() - t
        t = time.perf_counter()
        gpus = [] if not torch.cuda.is_available() else None
        try:
            tracker = ZeusMonitor(gpu_indices=gpus)
            tracker.begin_window("fit")
        except Exception as err:  # e.g. no GPU and no RAPL: Zeus refuses to start
            return {"tracker": "zeus", "skipped": f"ZeusMonitor did not start: {err!r}"}
        out["construct_s"] = time.perf_counter() - t

        def stop() -> None:
            measurement = tracker.end_window("fit")
            out["energy_wh"] = measurement.total_energy / 3600.0

    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator=args.device,
        devices=1,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=workdir,
    )
    trainer.fit(Mlp(), loader)
    t = time.perf_counter()
    stop()
    if "stop_s" not in out:
        out["stop_s"] = time.perf_counter() - t
    clock = callbacks[0]
    out["steps"] = steps_per_epoch * args.epochs
    out["fit_s"] = clock.end - clock.start
    out["steps_per_s"] = out["steps"] / out["fit_s"]
    out["startup_s"] = out.get("import_s", 0.0) + out.get("construct_s", 0.0)
    if args.worker.startswith("energy"):
        out["startup_s"] += out.get("setup_s", 0.0)
        out["energy_wh"] = callbacks[1].summary.get("energy_wh")
        out["gpu_wh"] = callbacks[1].summary.get("energy_by_kind_wh", {}).get("gpu")
    out["max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return out


class _RawCounter:
    """NVML's own energy counters, summed over every GPU, read straight through pynvml: the
    yardstick for EnergyCallback's GPU energy. ``read()`` returns Wh since the first read
    (None where NVML or a counter is missing)."""

    def __init__(self) -> None:
        self.first_mj: int | None = None

    def read(self) -> float | None:
        try:
            import pynvml

            pynvml.nvmlInit()
            try:
                n = pynvml.nvmlDeviceGetCount()
                mj = sum(
                    pynvml.nvmlDeviceGetTotalEnergyConsumption(pynvml.nvmlDeviceGetHandleByIndex(i))
                    for i in range(n)
                )
            finally:
                pynvml.nvmlShutdown()
        except Exception:  # no NVML, no GPU, no counter: no yardstick
            return None
        if self.first_mj is None:
            self.first_mj = mj
        return (mj - self.first_mj) / 3.6e6


def _run_one(tracker: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", tracker]
    for name in ("steps", "epochs", "batch", "width", "threads", "device"):
        cmd += [f"--{name}", str(getattr(args, name))]
    if args.zeus_path:
        cmd += ["--zeus-path", args.zeus_path]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout_s)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"tracker": tracker, "skipped": f"exit {proc.returncode}: {' | '.join(tail)}"}
    return json.loads(lines[-1])


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    med = statistics.median(values)
    return f"{med:.4f} [{min(values):.4f}, {max(values):.4f}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=400, help="training steps per fit")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch default)")
    parser.add_argument("--device", default="cpu", help="Lightning accelerator: cpu or cuda")
    parser.add_argument("--trackers", default=",".join(TRACKERS))
    parser.add_argument("--zeus-path", default="", help="a pip --target folder holding zeus")
    parser.add_argument("--timeout-s", type=float, default=600.0)
    parser.add_argument("--json", default="", help="write every run's numbers to this file")
    parser.add_argument("--worker", choices=TRACKERS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args)))
        return 0

    trackers = [t.strip() for t in args.trackers.split(",") if t.strip()]
    unknown = sorted(set(trackers) - set(TRACKERS))
    if unknown:
        parser.error(f"unknown trackers {unknown}; accepted: {', '.join(TRACKERS)}")
    if "none" not in trackers:
        trackers.insert(0, "none")
    runs: list[dict] = []
    skipped: dict[str, str] = {}
    for round_ in range(args.rounds):
        # rotate the order each round so no tracker always runs first or last
        order = trackers[round_ % len(trackers) :] + trackers[: round_ % len(trackers)]
        for tracker in order:
            if tracker in skipped:
                continue
            result = _run_one(tracker, args)
            result["round"] = round_
            if "skipped" in result:
                skipped[tracker] = result["skipped"]
                print(f"skip {tracker}: {result['skipped']}", flush=True)
                continue
            runs.append(result)
            if args.json:  # after every run: a run cut short by a timeout keeps what it measured
                with open(args.json, "w") as fh:
                    json.dump({"args": vars(args), "runs": runs, "skipped": skipped}, fh, indent=1)
            print(
                f"round {round_} {tracker:>12}: {result['steps_per_s']:8.1f} steps/s, "
                f"start-up {result['startup_s'] * 1000:7.1f} ms",
                flush=True,
            )

    base = {r["round"]: r["steps_per_s"] for r in runs if r["tracker"] == "none"}
    print(
        f"\n{args.rounds} rounds, {args.steps} steps in {args.epochs} epochs, batch {args.batch}, "
        f"width {args.width}, device {args.device}, python {sys.version.split()[0]}"
    )
    print(
        f"{'tracker':>12}  {'throughput vs none: median [min, max]':>38}  "
        f"{'start-up ms':>11}  {'stop ms':>8}  {'energy Wh':>10}  {'RSS MiB':>8}"
    )
    for tracker in trackers:
        mine = [r for r in runs if r["tracker"] == tracker]
        if not mine:
            print(f"{tracker:>12}  skipped: {skipped.get(tracker, 'no runs')}")
            continue
        ratios = [r["steps_per_s"] / base[r["round"]] for r in mine if r["round"] in base]
        start_ms = statistics.median(r["startup_s"] for r in mine) * 1000
        stop_ms = statistics.median(r["stop_s"] for r in mine) * 1000
        energies = [r["energy_wh"] for r in mine if r.get("energy_wh") is not None]
        energy = f"{statistics.median(energies):.4f}" if energies else "-"
        rss = statistics.median(r["max_rss_mib"] for r in mine)
        print(
            f"{tracker:>12}  {_spread(ratios):>38}  {start_ms:11.1f}  {stop_ms:8.1f}  "
            f"{energy:>10}  {rss:8.0f}"
        )
    for r in runs:
        if r.get("gpu_wh") and r.get("nvml_outer_wh"):
            inner, wh, outer = r["nvml_inner_wh"], r["gpu_wh"], r["nvml_outer_wh"]
            # the raw counter moves in ~0.1 s steps: allow one step of mean power at each end
            step_wh = 0.1 * outer / r["nvml_outer_s"]
            verdict = "inside" if inner - 2 * step_wh <= wh <= outer + 2 * step_wh else "OUTSIDE"
            print(
                f"{r['tracker']:>12}  GPU {wh:.5f} Wh; NVML counter from after set-up to "
                f"before teardown {inner:.5f} Wh, from before set-up to after teardown "
                f"{outer:.5f} Wh: {verdict}"
            )
    setup = [r["setup_s"] * 1000 for r in runs if r["tracker"] == "energy" and "setup_s" in r]
    if setup:
        print(
            f"EnergyCallback set-up hook (meter start): median {statistics.median(setup):.1f} ms "
            f"(target <= 100 ms)"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "runs": runs, "skipped": skipped}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
