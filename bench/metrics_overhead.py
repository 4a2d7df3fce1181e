"""Fit time with and without live metrics: the same tiny CPU fit (the zoo's BaselineMLP on the
digits, the H200 trace replayed as the GPU) with EnergyCallback alone, and with
``metrics_port`` served and scraped by a separate process every second (as Prometheus does),
and every 0.1 s (ten times as often, to magnify a scrape's cost). Interleaved rounds in one
run, so every variant sees the same machine; prints each variant's fit-time ratio to the
plain fit (median and spread over the rounds) and the scrapes made.

    python bench/metrics_overhead.py [--epochs 6] [--rounds 5] [--device cpu|cuda]

``--device cuda`` fits on the GPU and measures it through NVML (no replayed trace). Also
printed: the ratio of the training process's CPU time (all its threads: the metrics server's
work shows there however loaded the machine is).
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

TRACE = pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/nvml"
SCRAPER = """
import sys, time, urllib.request
url, period, n = sys.argv[1], float(sys.argv[2]), 0
print("ready", flush=True)
while True:
    try:
        urllib.request.urlopen(url, timeout=5).read()
        n += 1
        print(n, flush=True)
    except OSError:
        pass
    time.sleep(period)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fit(epochs: int, scrape_every_s: float | None, device: str) -> tuple[float, float, int]:
    """(fit seconds, process CPU seconds, scrapes made during it) of one fit; no metrics when
    ``scrape_every_s`` is None."""
    import pytorch_lightning as pl

    from lightning_callbacks import EnergyCallback
    from wattwise.zoo import BaselineMLP, build_datamodule

    port = free_port()
    scraper = None
    with tempfile.TemporaryDirectory() as tmp:
        pl.seed_everything(0, verbose=False)
        kwargs = {} if scrape_every_s is None else {"metrics_port": f"127.0.0.1:{port}"}
        cb = EnergyCallback(ledger=pathlib.Path(tmp) / "w.db", **kwargs)
        trainer = pl.Trainer(
            max_epochs=epochs,
            accelerator=device,
            devices=1,
            callbacks=[cb],
            enable_progress_bar=False,
            enable_model_summary=False,
            logger=False,
            enable_checkpointing=False,
            default_root_dir=tmp,
        )
        if scrape_every_s is not None:
            url = f"http://127.0.0.1:{port}/metrics"
            scraper = subprocess.Popen(
                [sys.executable, "-c", SCRAPER, url, str(scrape_every_s)],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert scraper.stdout is not None
            scraper.stdout.readline()  # started (its interpreter's start-up is not timed)
        try:
            t0, c0 = time.perf_counter(), time.process_time()
            trainer.fit(BaselineMLP(), build_datamodule(seed=0))
            fit_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0
        finally:
            scrapes = 0
            if scraper is not None:
                scraper.terminate()
                out, _ = scraper.communicate()
                scrapes = len(out.split())  # "ready" was read before
            if cb._metrics is not None:
                cb._metrics.close()
    return fit_s, cpu_s, scrapes


def scrape_cost(n: int = 300) -> None:
    """Per-scrape cost in isolation, a Meter running on the replayed trace: what the server
    thread does (the sampler's live figures, the exporter's snapshot, rendering the text) and a
    whole HTTP GET of the endpoint from this process (client and server both counted)."""
    import urllib.request

    from prometheus_client import generate_latest

    from wattwise.meter import Meter

    meter = Meter(metrics_port="127.0.0.1:0").start()
    exporter = meter._metrics
    assert exporter is not None and meter.metrics_url is not None
    url = meter.metrics_url
    time.sleep(1.0)  # a few readings and a counter anchor
    meter.mark("train")
    steps = {
        "Sampler.live": meter.live,
        "Exporter.snapshot": exporter.snapshot,
        "render (generate_latest)": lambda: generate_latest(exporter._registry),
        "HTTP GET /metrics": lambda: urllib.request.urlopen(url, timeout=30).read(),
    }
    for name, step in steps.items():
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(n):
            step()
        wall_ms = (time.perf_counter() - t0) / n * 1e3
        cpu_ms = (time.process_time() - c0) / n * 1e3
        print(f"per scrape, {name:24s}: {wall_ms:.3f} ms wall, {cpu_ms:.3f} ms CPU")
    meter.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args()
    if args.device == "cpu":
        os.environ["WATTWISE_REPLAY_NVML"] = str(TRACE / "h200-mlp6144-8epochs-20hz.csv")
    for var in ("WATTWISE_METRICS_PORT", "WATTWISE_PUSHGATEWAY"):
        os.environ.pop(var, None)
    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_callbacks", "wattwise"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from wattwise.zoo.demo import one_cpu_thread

    variants = {"off": None, "scraped every 1 s": 1.0, "scraped every 0.1 s": 0.1}
    times: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    scrapes: dict[str, list[int]] = {name: [] for name in variants}
    with one_cpu_thread():
        fit(1, 1.0, args.device)  # warm-up: imports (prometheus_client too), data set, first calls
        for _ in range(args.rounds):  # interleaved, so every variant sees the same machine
            for name, every_s in variants.items():
                fit_s, cpu_s, n = fit(args.epochs, every_s, args.device)
                times[name].append(fit_s)
                cpu[name].append(cpu_s)
                scrapes[name].append(n)
    print(
        f"{args.rounds} rounds of {args.epochs}-epoch fits on {args.device}, variants interleaved"
    )
    for name in variants:
        print(
            f"{name:20s}: fit median {statistics.median(times[name]):.2f} s "
            f"(min {min(times[name]):.2f}, max {max(times[name]):.2f}), CPU "
            f"{statistics.median(cpu[name]):.2f} s; "
            f"scrapes per fit {statistics.median(scrapes[name]):g}"
        )
    scrape_cost()
    for what, table in (("fit time", times), ("CPU time", cpu)):
        for name in list(variants)[1:]:
            ratios = sorted(on / off for on, off in zip(table[name], table["off"], strict=True))
            print(
                f"{what}, {name} / off: median {statistics.median(ratios):.3f} "
                f"(spread {ratios[0]:.3f}-{ratios[-1]:.3f} over {len(ratios)} rounds)"
            )


if __name__ == "__main__":
    main()
