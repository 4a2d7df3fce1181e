"""Reference models to compare what architectures cost: ``MODELS`` maps the labels ``baseline``,
``constrained`` and ``adaptive`` to LightningModule classes over scikit-learn's bundled digits.

Importing this package imports torch and Lightning; ``import wattwise`` does not import it.
"""

from __future__ import annotations

from wattwise.zoo.data import DigitsDataModule, split_digits
from wattwise.zoo.models import AdaptiveMLP, BaselineMLP, ConstrainedMLP, decov_loss

MODELS: dict[str, type[BaselineMLP]] = {
    "baseline": BaselineMLP,
    "constrained": ConstrainedMLP,
    "adaptive": AdaptiveMLP,
}


def build_datamodule(*, batch_size: int = 32, seed: int = 0) -> DigitsDataModule:
    """The digits datamodule every zoo model trains on (a deterministic split under ``seed``)."""
    return DigitsDataModule(batch_size, seed=seed)


def count_parameters(model) -> int:
    """Number of trainable parameters of a module (it changes when an adaptive model grows)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = [
    "MODELS",
    "AdaptiveMLP",
    "BaselineMLP",
    "ConstrainedMLP",
    "DigitsDataModule",
    "build_datamodule",
    "count_parameters",
    "decov_loss",
    "split_digits",
]
