"""Fill a real Ledger, through its public API, with runs whose numbers are known by hand.

Every run uses constant powers per stage so its energies are simple products:
GPU ``train_w`` x ``train_s`` per training epoch and ``val_w`` x ``val_s`` per validation; CPU
(estimated, as on a machine without RAPL) ``cpu_w`` and RAM ``ram_w`` over both stages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from wattwise.ledger import Ledger
from wattwise.types import ArchSnapshot, DeviceInfo, PhaseEnergy

GPU = DeviceInfo(
    "gpu:GPU-5b5c1a2e-8e4f-3d0b-9a71-6f1e2d3c4b5a",
    "gpu",
    "NVIDIA H200",
    "counter",
    uuid="GPU-5b5c1a2e-8e4f-3d0b-9a71-6f1e2d3c4b5a",
    index=0,
    flags=frozenset({"averaged_power"}),
)
CPU = DeviceInfo("cpu:machine", "cpu", "AMD EPYC 7R13", "estimate", flags=frozenset({"estimated"}))
RAM = DeviceInfo("ram", "ram", "DRAM 64 GiB", "estimate", flags=frozenset({"estimated"}))
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


@dataclass
class RunSpec:
    architecture: str
    epochs: int = 3
    train_s: float = 10.0
    val_s: float = 2.0
    train_w: float = 600.0
    val_w: float = 300.0
    cpu_w: float = 50.0
    ram_w: float = 5.0
    gpu: bool = True
    params: Sequence[int] = (1000,)
    """Trainable parameters at the end of each epoch (the last value repeats)."""
    metrics: dict[str, float] = field(default_factory=dict)
    settings: dict[str, object] = field(default_factory=lambda: {"sample_hz": 10.0})
    tags: Sequence[str] = ()
    region: str | None = None
    pricing: str | None = None
    parent: str | None = None
    timeline: bool = True
    wall_s: float | None = None
    """Run duration between started_at and ended_at (default: the sum of its phases)."""
    scheduler: dict[str, object] | None = None
    """Scheduler metadata (None: this process's, as begin_run collects it)."""

    @property
    def devices(self) -> list[DeviceInfo]:
        return [GPU, CPU, RAM] if self.gpu else [CPU, RAM]

    def stage_energy_j(self, stage: str, kind: str) -> float:
        seconds = self.train_s if stage == "train" else self.val_s
        power = {
            ("train", "gpu"): self.train_w,
            ("validate", "gpu"): self.val_w,
        }.get((stage, kind), self.cpu_w if kind == "cpu" else self.ram_w)
        return power * seconds

    @property
    def duration_s(self) -> float:
        if self.wall_s is not None:
            return self.wall_s
        return (self.train_s + self.val_s) * self.epochs


def add_run(ledger: Ledger, spec: RunSpec, *, start: datetime = T0) -> str:
    """Record ``spec`` as a finished run, one ``add_phases`` transaction per epoch."""
    run_id = ledger.begin_run(
        architecture=spec.architecture,
        parent_run_id=spec.parent,
        tags=spec.tags,
        settings=spec.settings,
        region=spec.region,
        pricing=spec.pricing,
        devices=spec.devices,
        started_at=start,
        scheduler=spec.scheduler,
    )
    t = 100.0
    power: dict[str, list[tuple[float, float]]] = {d.device_id: [] for d in spec.devices}
    for epoch in range(spec.epochs):
        phases = []
        for index, (stage, seconds) in enumerate(
            (("train", spec.train_s), ("validate", spec.val_s))
        ):
            for device in spec.devices:
                energy_j = spec.stage_energy_j(stage, device.kind)
                phases.append(
                    PhaseEnergy(
                        name=stage,
                        index=2 * epoch + index,
                        device_id=device.device_id,
                        kind=device.kind,
                        start_s=t,
                        end_s=t + seconds,
                        energy_j=energy_j,
                        method=device.method,
                        mean_power_w=energy_j / seconds,
                        peak_power_w=1.1 * energy_j / seconds,
                        flags=device.flags,
                    )
                )
                # one timeline point per second, in the middle of each second
                power[device.device_id] += [
                    (t + k + 0.5, energy_j / seconds) for k in range(int(seconds))
                ]
            t += seconds
        params = spec.params[min(epoch, len(spec.params) - 1)]
        ledger.add_phases(
            run_id,
            phases,
            epoch=epoch,
            snapshot=ArchSnapshot(
                params, params + 10, f"{spec.architecture}Module", spec.architecture
            ),
            epochs_completed=epoch + 1,
        )
    if spec.timeline:
        for device_id, points in power.items():
            ledger.add_timeline(run_id, device_id, points)
    ledger.finish_run(
        run_id, metrics=spec.metrics, ended_at=start + timedelta(seconds=spec.duration_s)
    )
    return run_id


def realistic(ledger: Ledger) -> dict[str, tuple[str, RunSpec]]:
    """The zoo's three architectures, a fine-tune of the baseline, and a CPU-only run.

    Returns name -> (run id, spec)."""
    specs = {
        "baseline": RunSpec("baseline", metrics={"val_acc": 0.94, "val_loss": 0.21}),
        "constrained": RunSpec(
            "constrained", train_w=650.0, metrics={"val_acc": 0.96, "val_loss": 0.17}
        ),
        "adaptive": RunSpec(
            "adaptive",
            epochs=4,
            train_w=550.0,
            params=(1000, 1000, 1800, 3400),
            metrics={"val_acc": 0.95, "val_loss": 0.19},
            settings={"sample_hz": 10.0, "train_samples_per_epoch": 1200},
        ),
        "cpu": RunSpec(
            "baseline",
            gpu=False,
            epochs=2,
            cpu_w=80.0,
            metrics={"val_acc": 0.90, "val_loss": 0.33},
            settings={"sample_hz": 5.0},
            timeline=False,
        ),
    }
    out: dict[str, tuple[str, RunSpec]] = {}
    start = T0
    for name, spec in specs.items():
        out[name] = (add_run(ledger, spec, start=start), spec)
        start += timedelta(hours=1)
    finetune = RunSpec(
        "baseline-finetune",
        epochs=1,
        parent=out["baseline"][0],
        metrics={"val_acc": 0.97, "val_loss": 0.12},
        tags=("finetune",),
    )
    out["finetune"] = (add_run(ledger, finetune, start=start), finetune)
    return out
