"""The demo's tasks: what each trains on, which three models, and how, on this device.

``digits``: the MLPs of ``wattwise.zoo.models`` on scikit-learn's 8x8 digits (the CPU default).
``images``: the ResNets of ``wattwise.zoo.convnets`` on the generated 32x32 images of
``wattwise.zoo.images`` (the default where CUDA is available): 50,000 / 10,000 / 10,000 images,
bf16 autocast and channels_last on CUDA. A quick run on a CPU shrinks the set
(``CPU_QUICK_SIZES``) and halves the nets' widths, and says so in its notes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytorch_lightning as pl

from wattwise.errors import BadInput
from wattwise.zoo.settings import TASKS


@dataclass(frozen=True)
class TaskSetup:
    """One task as the demo runs it on one device."""

    name: str
    models: Mapping[str, type[pl.LightningModule]]
    model_kwargs: Mapping[str, dict[str, Any]]
    datamodule: pl.LightningDataModule
    precision: str | None
    """The Trainer's precision (None: its default, 32-bit)."""
    sizes: dict[str, int]
    """Images or samples per split."""
    notes: tuple[str, ...] = field(default=())
    """What differs from the task's full form on this device (shown to the user)."""

    def build(self, name: str) -> pl.LightningModule:
        return self.models[name](**self.model_kwargs.get(name, {}))


IMAGE_KWARGS = {
    "baseline": {"width": 32},
    "constrained": {"width": 32},
    "adaptive": {"width": 16, "max_width": 64, "max_blocks": 3},
}
"""The ResNets' shapes: the adaptive one starts at half the others' width with one block per
stage and may grow to twice their width and three blocks per stage."""
IMAGE_BATCH = {"cuda": 512, "cpu": 64}


def models_of(task: str) -> Mapping[str, type[pl.LightningModule]]:
    """The three models of ``task`` by label."""
    if task == "digits":
        from wattwise.zoo.models import MODELS

        return MODELS
    if task == "images":
        from wattwise.zoo.convnets import IMAGE_MODELS

        return IMAGE_MODELS
    raise BadInput(f"task={task!r}: accepted: {', '.join(TASKS)}")


def setup_task(
    task: str,
    *,
    cuda: bool,
    quick: bool = False,
    seed: int = 0,
    sizes: dict[str, int] | None = None,
    model_kwargs: Mapping[str, dict[str, Any]] | None = None,
) -> TaskSetup:
    """``task`` as run on CUDA (``cuda``) or the CPU. ``sizes`` (images only) and
    ``model_kwargs`` (per label, merged over the task's own) override the defaults."""
    models = models_of(task)
    extra = model_kwargs or {}
    if task == "digits":
        if sizes is not None:
            raise BadInput("sizes: the digits task has fixed splits; sizes are for images")
        from wattwise.zoo.models import build_datamodule

        dm = build_datamodule(seed=seed)
        kwargs = {name: dict(extra.get(name, {})) for name in models}
        return TaskSetup(task, models, kwargs, dm, None, {}, ())

    from wattwise.zoo.images import CPU_QUICK_SIZES, FULL_SIZES, ImagesDataModule

    notes: list[str] = []
    kwargs = {name: dict(IMAGE_KWARGS[name]) for name in models}
    if sizes is None:
        sizes = dict(FULL_SIZES)
        if quick and not cuda:
            sizes = dict(CPU_QUICK_SIZES)
            for values in kwargs.values():
                for key in ("width", "max_width"):
                    if key in values:
                        values[key] //= 2
            notes.append(
                "images on a CPU with --quick: the set is shrunk to "
                + " / ".join(f"{sizes[s]:,} {s}" for s in ("train", "val", "test"))
                + " images (a GPU gets "
                + " / ".join(f"{FULL_SIZES[s]:,}" for s in ("train", "val", "test"))
                + ") and the nets to half width"
            )
    for name in models:
        kwargs[name].update(extra.get(name, {}))
    dm = ImagesDataModule(IMAGE_BATCH["cuda" if cuda else "cpu"], seed=seed, sizes=sizes)
    return TaskSetup(
        task, models, kwargs, dm, "bf16-mixed" if cuda else None, dict(dm.sizes), tuple(notes)
    )
