"""Record one GPU's half of a cross-GPU pair: the same Lightning workload at a few model widths,
seconds and joules per epoch from the NVML energy counter (through EnergyCallback, epoch bounds
after ``torch.cuda.synchronize()``), peak memory, and what the host is (its CPU and a short
single-thread probe), in the format of ``tests/fixtures/nvml/h100-h200-mlp-width2048.json``.

Run it on two GPUs (say an H100 and an H200 machine), then join the halves into pair fixtures
that ``bench/estimate_accuracy.py`` predicts from one side to the other::

    python bench/record_pair.py record --out h100.json [--widths 1024,4096,8192] [--epochs 4]
    python bench/record_pair.py join h100.json h200.json --out tests/fixtures/nvml/

The workload: an MLP of 6 Linear(width, width) + GELU layers and a 10-way head, batch 4096 of
random data made on the device, AdamW, bf16-mixed on CUDA, ``--steps`` steps per epoch. Small
widths are host-bound (Python and kernel launches dominate), large ones compute-bound, so the
pairs tell the estimator's host and GPU terms apart; the host probe says how fast each host is.

With ``WATTWISE_REPLAY_NVML=trace.csv`` and ``--device cpu`` it dry-runs without a GPU (the GPU
figures then come from the replayed trace and mean nothing).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import tempfile
import time

WORKLOAD = (
    "pytorch_lightning {pl} fit, MLP of 6 Linear({w}, {w})+GELU layers and a 10-way head, batch "
    "{batch} of random data generated on the device, AdamW lr 1e-4, {precision}, {steps} steps "
    "per epoch, {epochs} epochs; energy from the NVML total-energy counter through wattwise's "
    "EnergyCallback (sync_cuda=True: epoch bounds after torch.cuda.synchronize())"
)


def host_probe_ms(rounds: int = 5) -> float:
    """Median time of a fixed pure-Python loop: how fast this host runs the Python side of a
    training step (the part of a host-bound epoch no GPU spec predicts)."""
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        total = 0
        for i in range(300_000):
            total += i % 7
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def fit_width(width: int, args: argparse.Namespace, ledger: pathlib.Path) -> dict:
    import pytorch_lightning as pl
    import torch

    from lightning_callbacks import EnergyCallback
    from wattwise import units
    from wattwise.ledger import Ledger

    cuda = args.device == "cuda"
    device = "cuda" if cuda else "cpu"

    class MLP(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            layers: list[torch.nn.Module] = []
            for _ in range(6):
                layers += [torch.nn.Linear(width, width), torch.nn.GELU()]
            self.net = torch.nn.Sequential(*layers, torch.nn.Linear(width, 10))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-4)

    class Random(torch.utils.data.IterableDataset):
        def __iter__(self):
            generator = torch.Generator(device=device).manual_seed(0)
            for _ in range(args.steps):
                x = torch.randn(args.batch, width, device=device, generator=generator)
                y = torch.randint(0, 10, (args.batch,), device=device, generator=generator)
                yield x, y

    model = MLP()
    cb = EnergyCallback(ledger=ledger, architecture=f"mlp{width}", sync_cuda=cuda)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer = pl.Trainer(
        accelerator="gpu" if cuda else "cpu",
        devices=1,
        max_epochs=args.epochs,
        precision="bf16-mixed" if cuda else "32-true",
        callbacks=[cb],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    loader = torch.utils.data.DataLoader(Random(), batch_size=None)
    trainer.fit(model, loader)
    phases = Ledger(ledger).phases(cb.run_id)
    gpu = phases[(phases["kind"] == "gpu") & phases["epoch"].notna()]
    if gpu.empty:
        raise SystemExit("no GPU energy was measured: run it on a GPU (or with a replayed trace)")
    epochs = []
    for _, rows in gpu.groupby("epoch", sort=True):
        seconds = float(rows["end_s"].max() - rows["start_s"].min())
        epochs.append(
            {"seconds": round(seconds, 4), "joules": round(float(rows["energy_j"].sum()), 3)}
        )
    run = Ledger(ledger).get_run(cb.run_id)
    gpu_name = next((d["name"] for d in run.devices if d["kind"] == "gpu"), "unknown")
    return {
        "gpu": gpu_name,
        "params": sum(p.numel() for p in model.parameters()),
        "peak_mem_GiB": round(torch.cuda.max_memory_allocated() / units.BYTES_PER_GIB, 3)
        if cuda
        else None,
        "methods": sorted(set(gpu["method"])),
        "epochs": epochs,
    }


def record(args: argparse.Namespace) -> None:
    import pytorch_lightning as pl

    from wattwise.sensors._cpuinfo import model_name, read_cpuinfo

    widths = [int(w) for w in args.widths.split(",")]
    out: dict = {
        "host": {"cpu": model_name(read_cpuinfo()), "python_probe_ms": round(host_probe_ms(), 2)},
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "workloads": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for width in widths:
            run = fit_width(width, args, pathlib.Path(tmp) / f"w{width}.db")
            run["host"] = out["host"]
            precision = "bf16-mixed" if args.device == "cuda" else "fp32"
            workload = WORKLOAD.format(
                pl=pl.__version__,
                w=width,
                batch=args.batch,
                precision=precision,
                steps=args.steps,
                epochs=args.epochs,
            )
            out["workloads"].append({"width": width, "workload": workload, "run": run})
            print(f"width {width}: {run['gpu']}, epochs {run['epochs']}", flush=True)
    pathlib.Path(args.out).write_text(json.dumps(out, indent=1), encoding="utf-8")
    print(f"wrote {args.out}")


def join(args: argparse.Namespace) -> None:
    """One pair fixture per workload both halves recorded."""
    a, b = (json.loads(pathlib.Path(p).read_text()) for p in args.halves)
    short = {}
    for half in (a, b):
        for item in half["workloads"]:
            short.setdefault(item["workload"], []).append(item)
    out_dir = pathlib.Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for workload, items in short.items():
        if len(items) != 2:
            continue
        names = [i["run"]["gpu"].split()[1].lower() for i in items]  # "NVIDIA H100 ..." -> h100
        path = out_dir / f"{names[0]}-{names[1]}-mlp-width{items[0]['width']}-pair.json"
        data = {"workload": workload, "runs": [i["run"] for i in items]}
        path.write_text(json.dumps(data, indent=1), encoding="utf-8")
        print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("--out", required=True)
    rec.add_argument("--widths", default="1024,4096,8192")
    rec.add_argument("--epochs", type=int, default=4)
    rec.add_argument("--steps", type=int, default=100)
    rec.add_argument("--batch", type=int, default=4096)
    rec.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    joined = sub.add_parser("join")
    joined.add_argument("halves", nargs=2)
    joined.add_argument("--out", required=True)
    args = parser.parse_args()
    record(args) if args.command == "record" else join(args)


if __name__ == "__main__":
    main()
