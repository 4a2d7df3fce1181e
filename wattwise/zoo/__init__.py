"""Reference models to compare what architectures cost: ``MODELS`` maps the labels ``baseline``,
``constrained`` and ``adaptive`` to LightningModule classes over scikit-learn's bundled digits
(MLPs), ``IMAGE_MODELS`` the same labels to small ResNets over a generated 32x32 image set
(``ImagesDataModule``, nothing downloaded).

Importing this package is cheap; its names load torch and Lightning on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from wattwise.zoo.convnets import (
        IMAGE_MODELS,
        AdaptiveResNet,
        BaselineResNet,
        ConstrainedResNet,
    )
    from wattwise.zoo.data import DigitsDataModule, split_digits
    from wattwise.zoo.images import ImagesDataModule
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
    "IMAGE_MODELS": "convnets",
    "AdaptiveResNet": "convnets",
    "BaselineResNet": "convnets",
    "ConstrainedResNet": "convnets",
    "ImagesDataModule": "images",
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
    "IMAGE_MODELS",
    "MODELS",
    "AdaptiveMLP",
    "AdaptiveResNet",
    "BaselineMLP",
    "BaselineResNet",
    "ConstrainedMLP",
    "ConstrainedResNet",
    "DigitsDataModule",
    "ImagesDataModule",
    "build_datamodule",
    "count_parameters",
    "decov_loss",
    "split_digits",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"wattwise.zoo.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'wattwise.zoo' has no attribute {name!r}")
