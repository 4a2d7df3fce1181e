"""Reference models to compare what architectures cost: ``MODELS`` maps the labels ``baseline``,
``constrained`` and ``adaptive`` to LightningModule classes over scikit-learn's bundled digits.

Importing this package is cheap; its names load torch and Lightning on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from wattwise.zoo.data import DigitsDataModule, split_digits
    from wattwise.zoo.models import (
        MODELS,
        AdaptiveMLP,
        BaselineMLP,
        ConstrainedMLP,
        build_datamodule,
        count_parameters,
        decov_loss,
    )

_WHERE = {
    "DigitsDataModule": "data",
    "split_digits": "data",
    "MODELS": "models",
    "AdaptiveMLP": "models",
    "BaselineMLP": "models",
    "ConstrainedMLP": "models",
    "build_datamodule": "models",
    "count_parameters": "models",
    "decov_loss": "models",
}

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


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"wattwise.zoo.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'wattwise.zoo' has no attribute {name!r}")
