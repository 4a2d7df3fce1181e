"""Epoch-end wait: how long EnergyCallback's epoch end waits on the training thread for the
sampler's counter read (``EPOCH_END_WAIT_S``), on a tiny CPU fit with the H200 trace replayed as
the GPU (its counter steps every ~0.1 s like NVML's).

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()
    os.environ["WATTWISE_REPLAY_NVML"] = str(TRACE / "h200-mlp6144-8epochs-20hz.csv")
    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)

    import pytorch_lightning as pl

    import wattwise.meter
    from lightning_callbacks import EnergyCallback
    from lightning_callbacks.energy import EPOCH_END_WAIT_S
    from wattwise.zoo import BaselineMLP, build_datamodule
    from wattwise.zoo.demo import one_cpu_thread

    waits: list[float] = []
    collect = wattwise.meter.Meter.collect

    def timed(self, timeout_s: float = 1.0):
        t0 = time.perf_counter()
        try:
            return collect(self, timeout_s)
        finally:
            waits.append(time.perf_counter() - t0)

    wattwise.meter.Meter.collect = timed
    with tempfile.TemporaryDirectory() as tmp, one_cpu_thread():
        pl.seed_everything(0, verbose=False)
        cb = EnergyCallback(ledger=pathlib.Path(tmp) / "w.db", log_metrics=False)
        trainer = pl.Trainer(
            max_epochs=args.epochs,
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
        fit_s = time.perf_counter() - t0
    ms = sorted(w * 1000 for w in waits)
    print(
        f"EPOCH_END_WAIT_S={EPOCH_END_WAIT_S}: {len(ms)} epoch ends, wait median "
        f"{statistics.median(ms):.1f} ms, max {ms[-1]:.1f} ms; {sum(ms) / 1000 / fit_s:.1%} of "
        f"the {fit_s:.2f} s fit"
    )


if __name__ == "__main__":
    main()
