"""Epoch-end cost: how long EnergyCallback's epoch end (``flush``: collect, count, ledger write,
logging) holds the training thread, on a tiny CPU fit with the H200 trace replayed as the GPU
(its counter steps every ~0.1 s like NVML's).

Side by side in one run: the shipped path (``collect_nowait``: the phases the counter has not
settled yet are counted provisional and settled at the next commit) and the earlier one, which
waited up to 1 s for the counter's next update after the boundary (emulated by swapping in a
blocking collect). Also the callback's per-step hook time (what it costs between epoch ends).

    python bench/epoch_end_wait.py [--epochs 15]
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import statistics
import tempfile
import time
import warnings

TRACE = pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/nvml"


def fit(epochs: int, blocking: bool) -> tuple[list[float], float]:
    import pytorch_lightning as pl

    import wattwise.meter
    from lightning_callbacks import EnergyCallback
    from lightning_callbacks.energy import _EnergyLogic
    from wattwise.zoo import BaselineMLP, build_datamodule

    flush_s: list[float] = []
    flush = _EnergyLogic.flush
    nowait = wattwise.meter.Meter.collect_nowait

    def timed(self, trainer):
        t0 = time.perf_counter()
        try:
            return flush(self, trainer)
        finally:
            flush_s.append(time.perf_counter() - t0)

    def waiting(self):  # the earlier path: wait for the counter's next update
        return self.collect(timeout_s=1.0), []

    _EnergyLogic.flush = timed
    wattwise.meter.Meter.collect_nowait = waiting if blocking else nowait
    try:
        with tempfile.TemporaryDirectory() as tmp:
            pl.seed_everything(0, verbose=False)
            cb = EnergyCallback(ledger=pathlib.Path(tmp) / "w.db")
            trainer = pl.Trainer(
                max_epochs=epochs,
                accelerator="cpu",
                callbacks=[cb],
                enable_progress_bar=False,
                enable_model_summary=False,
                logger=False,
                enable_checkpointing=False,
                default_root_dir=tmp,
            )
            t0 = time.perf_counter()
            trainer.fit(BaselineMLP(), build_datamodule(seed=0))
            return flush_s, time.perf_counter() - t0
    finally:
        _EnergyLogic.flush = flush
        wattwise.meter.Meter.collect_nowait = nowait


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    os.environ["WATTWISE_REPLAY_NVML"] = str(TRACE / "h200-mlp6144-8epochs-20hz.csv")
    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    from wattwise.zoo.demo import one_cpu_thread

    results: dict[str, tuple[list[float], list[float]]] = {"nowait": ([], []), "wait": ([], [])}
    with one_cpu_thread():
        for _ in range(args.rounds):  # interleaved, so both see the same machine
            for name, blocking in (("nowait", False), ("wait", True)):
                flushes, fit_s = fit(args.epochs, blocking)
                results[name][0].extend(flushes)
                results[name][1].append(sum(flushes) / fit_s)
    medians = {}
    for name, (flushes, shares) in results.items():
        ms = sorted(f * 1000 for f in flushes)
        medians[name] = statistics.median(ms)
        label = "shipped (no wait)" if name == "nowait" else "earlier (waits for the counter)"
        print(
            f"{label:33s}: {len(ms)} epoch ends, median {medians[name]:.1f} ms, "
            f"max {ms[-1]:.1f} ms; {statistics.median(shares):.1%} of the fit"
        )
    print(f"epoch-end time, shipped / earlier: {medians['nowait'] / medians['wait']:.3f}")
    print(f"per-step hooks (on_train_batch_start + on_train_batch_end): {step_hooks_us():.1f} us")


def step_hooks_us(rounds: int = 5, n: int = 20_000) -> float:
    """Median time of the callback's two per-step hooks on a (64, 256) + labels batch: all it
    does on the training thread between epoch ends (a label check, the batch's sample count)."""
    import timeit

    import pytorch_lightning as pl
    import torch

    from lightning_callbacks import EnergyCallback

    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    batch = (torch.randn(64, 256), torch.randint(0, 10, (64,)))
    cb = EnergyCallback()
    cb._label, cb._epoch_samples = "train", 0

    def step() -> None:
        cb.on_train_batch_start(trainer, None, batch, 0)
        cb.on_train_batch_end(trainer, None, None, batch, 0)

    return statistics.median(timeit.repeat(step, number=n, repeat=rounds)) / n * 1e6


if __name__ == "__main__":
    main()
