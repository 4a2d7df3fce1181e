"""The main job: train the zoo's three models with energy accounting and compare them.

:func:`run_demo` trains ``baseline``, ``constrained`` and ``adaptive`` of one task (the digits'
MLPs or the generated images' ResNets, ``wattwise.zoo.tasks``), each with an ``EnergyCallback``
(one ledger run per model), tests each with the same callback so its test accuracy lands in the
same run, then writes the HTML and CSV report over exactly those runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import pytorch_lightning as pl

from wattwise import units
from wattwise.errors import BadInput, WattwiseError
from wattwise.zoo.models import count_parameters
from wattwise.zoo.settings import check_settings, check_task

# Events a progress display receives, as (event, label, value, note): ("start", label, epochs,
# ""), ("epoch", label, epochs done, "val_acc 0.953  0.0041 Wh"), ("test", label, None, ""),
# ("done", label, None, "").
ProgressHook = Callable[[str, str, int | None, str], None]


@dataclass(frozen=True)
class DemoRun:
    """What one model's run cost and achieved."""

    run_id: str
    architecture: str
    epochs: int
    duration_s: float
    energy_wh: float
    cost_usd: float | None
    co2e_kg: float | None
    val_acc: float | None
    test_acc: float | None
    params_start: int
    params_end: int
    widths_start: tuple[int, ...]
    widths_end: tuple[int, ...]
    flags: tuple[str, ...]
    width_start: int | None = None
    width_end: int | None = None
    """The model's ``arch_width`` (widest hidden layer; a ResNet's first-stage inner channels)."""
    depth_start: int | None = None
    depth_end: int | None = None
    """Hidden layers (MLP) or residual blocks (ResNet) at the start and the end."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DemoResult:
    ledger_path: str
    runs: list[DemoRun]
    html_path: str
    runs_csv: str
    phases_csv: str
    task: str = "digits"
    sizes: dict[str, int] | None = None
    """Samples per split (images; None for the digits' fixed split)."""
    notes: tuple[str, ...] = ()
    """What differs from the task's full form on this device."""
    generation_s: float | None = None
    """Seconds the image set took to generate on the training device (None: digits)."""
    device: str | None = None
    """The device the data were made on (``cuda:0``, ``cpu``; None: digits)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "sizes": self.sizes,
            "notes": list(self.notes),
            "generation_s": self.generation_s,
            "device": self.device,
            "ledger": self.ledger_path,
            "report": {
                "html_path": self.html_path,
                "runs_csv": self.runs_csv,
                "phases_csv": self.phases_csv,
            },
            "runs": [run.to_json() for run in self.runs],
        }


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Keep Lightning's chatter out of the demo's output: its start-up notices (accelerator
    found, tips) are INFO records of its own loggers, raised to WARNING for the duration; two
    warnings that do not apply here are ignored by their exact text: the DataLoaders deliberately
    use no worker processes (the data are small in-memory tensors), and a deprecation inside
    Lightning's own pytree helper that the user cannot act on."""
    names = ("pytorch_lightning", "lightning_fabric", "lightning.pytorch", "lightning.fabric")
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@contextlib.contextmanager
def one_cpu_thread() -> Iterator[None]:
    """Run torch's CPU kernels on one thread for the duration. The zoo's models are tiny (a few
    thousand parameters, batches of 32): splitting such matrix products across threads costs more
    in synchronisation than it gains, and on a busy machine the waiting threads spin. Measured on
    the 2-core development machine under load: 5 epochs took 1.6 s on one thread, 27 s on two."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _Progress(pl.Callback):
    """Forwards each epoch's end, with the validation accuracy and the energy so far, to a
    progress hook (Lightning's own bars stay off). Placed after the EnergyCallback, so that one
    has counted the epoch when this reads it."""

    def __init__(self, label: str, epochs: int, hook: ProgressHook, energy: Any) -> None:
        self.label = label
        self.epochs = epochs
        self.hook = hook
        self.energy = energy

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.hook("start", self.label, self.epochs, "")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        acc = _metric(trainer.callback_metrics, "val_acc")
        note = "" if acc is None else f"val_acc {acc:.3f}  "
        note += f"{units.j_to_wh(self.energy.energy_j):.3g} Wh"
        self.hook("epoch", self.label, trainer.current_epoch + 1, note)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.hook("test", self.label, None, "")


def demo_trainer(
    epochs: int,
    callbacks: Sequence[pl.Callback],
    *,
    root_dir: str | os.PathLike[str],
    accelerator: str = "auto",
    precision: str | None = None,
) -> pl.Trainer:
    """The demo's Trainer: ``epochs`` epochs on one device, no logger, checkpoints, progress bar,
    model summary or sanity validation; energy and progress come from ``callbacks``;
    ``precision`` as Lightning takes it (None: 32-bit)."""
    extra = {} if precision is None else {"precision": precision}
    return pl.Trainer(
        max_epochs=epochs,
        accelerator=accelerator,
        **extra,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=list(callbacks),
        default_root_dir=root_dir,
    )


def _metric(metrics: dict[str, Any], name: str) -> float | None:
    value = metrics.get(name)
    return None if value is None else float(value)


def run_demo(
    *,
    epochs: int,
    ledger: Any = None,
    out_dir: str | os.PathLike[str] = "reports",
    region: str | None = None,
    pricing: str | None = None,
    seed: int = 0,
    architectures: Sequence[str] = ("baseline", "constrained", "adaptive"),
    progress: ProgressHook | None = None,
    task: str = "digits",
    quick: bool = False,
    sizes: dict[str, int] | None = None,
    model_kwargs: dict[str, dict[str, Any]] | None = None,
    notice: Callable[[str], None] | None = None,
) -> DemoResult:
    """Train each of ``architectures`` of ``task`` for ``epochs`` epochs (GPU when there is one)
    with an ``EnergyCallback`` writing to ``ledger`` (a path, a ``Ledger`` or None for the
    default), test it, and write the report over exactly these runs under ``out_dir``.

    ``quick`` shrinks the image set on a CPU; ``sizes`` and ``model_kwargs`` override the task's
    set sizes (images) and model arguments (``wattwise.zoo.tasks.setup_task``); ``notice``
    receives, before training, each note on what differs from the task's full form here."""
    check_task(task)
    from wattwise.zoo.tasks import models_of

    models = models_of(task)
    unknown = [name for name in architectures if name not in models]
    if unknown or not architectures or len(set(architectures)) != len(architectures):
        raise BadInput(
            f"architectures={list(architectures)!r}: expected names among {list(models)}"
        )
    check_settings(epochs, region, pricing, out_dir, seed=seed)  # before any training

    import torch

    from wattwise.zoo.tasks import setup_task

    setup = setup_task(
        task,
        cuda=torch.cuda.is_available(),
        quick=quick,
        seed=seed,
        sizes=sizes,
        model_kwargs=model_kwargs,
    )
    for note in setup.notes:
        if notice is not None:
            notice(note)

    from wattwise.ledger import Ledger
    from wattwise.report import build_report

    with contextlib.ExitStack() as stack:
        store = ledger if isinstance(ledger, Ledger) else stack.enter_context(Ledger(ledger))
        store.ensure_writable()  # a read-only ledger would record nothing after all the training
        runs = _train_all(
            store, setup, architectures, epochs, out_dir, region, pricing, seed, progress
        )
        report = build_report(
            store, [run.run_id for run in runs], out_dir=out_dir, region=region, pricing=pricing
        )
        return DemoResult(
            ledger_path=str(store.path),
            runs=runs,
            html_path=str(report.html_path),
            runs_csv=str(report.runs_csv),
            phases_csv=str(report.phases_csv),
            task=task,
            sizes=setup.sizes or None,
            notes=setup.notes,
            generation_s=getattr(setup.datamodule, "generation_s", None),
            device=getattr(setup.datamodule, "made_on", None),
        )


def _train_all(
    store: Any,
    setup: Any,
    architectures: Sequence[str],
    epochs: int,
    out_dir: str | os.PathLike[str],
    region: str | None,
    pricing: str | None,
    seed: int,
    progress: ProgressHook | None,
) -> list[DemoRun]:
    from lightning_callbacks import EnergyCallback

    runs: list[DemoRun] = []
    with quiet_lightning(), one_cpu_thread():
        # one datamodule for the three models: the images are generated once, and each model
        # sees the same batches in the same order (the shuffle is seeded per loader)
        datamodule = setup.datamodule
        for name in architectures:
            pl.seed_everything(seed, verbose=False)
            model = setup.build(name)
            params_start, widths_start = count_parameters(model), model.widths
            width_start, depth_start = model.arch_width, model.arch_depth
            energy = EnergyCallback(ledger=store, architecture=name, region=region, pricing=pricing)
            callbacks: list[pl.Callback] = [energy]
            if progress is not None:
                callbacks.append(_Progress(name, epochs, progress, energy))
            trainer = demo_trainer(epochs, callbacks, root_dir=out_dir, precision=setup.precision)
            trainer.fit(model, datamodule=datamodule)
            val_acc = _metric(trainer.callback_metrics, "val_acc")
            tested = trainer.test(model, datamodule=datamodule, verbose=False)
            summary = energy.summary
            if not summary.get("run_id"):
                raise WattwiseError(
                    f"{name}: trained, but no run was recorded in {store.path} "
                    f"(flags: {', '.join(summary.get('flags') or ()) or 'none'}); see the "
                    "warnings above"
                )
            if progress is not None:
                progress("done", name, None, "")
            runs.append(
                DemoRun(
                    run_id=summary["run_id"],
                    architecture=name,
                    epochs=int(summary["epochs"]),
                    duration_s=float(summary["duration_s"]),
                    energy_wh=float(summary["energy_wh"]),
                    cost_usd=summary.get("cost_usd"),
                    co2e_kg=summary.get("co2e_kg"),
                    val_acc=val_acc,
                    test_acc=_metric(tested[0] if tested else {}, "test_acc"),
                    params_start=params_start,
                    params_end=count_parameters(model),
                    widths_start=widths_start,
                    widths_end=model.widths,
                    flags=tuple(sorted(summary.get("flags") or ())),
                    width_start=width_start,
                    width_end=model.arch_width,
                    depth_start=depth_start,
                    depth_end=model.arch_depth,
                )
            )
    return runs
