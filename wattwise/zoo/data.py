"""The zoo's data: scikit-learn's bundled handwritten digits (8x8 images, 10 classes, 1,797
samples). It ships inside the installed scikit-learn package, so nothing is downloaded."""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from torch.utils.data import DataLoader, TensorDataset

from wattwise.errors import BadInput

N_FEATURES = 64
N_CLASSES = 10


def split_digits(
    *, seed: int = 0, val_fraction: float = 0.2, test_fraction: float = 0.2
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Deterministic stratified train / val / test split of the digits, standardised with the
    training split's mean and standard deviation. Returns ``{"train"|"val"|"test": (x, y)}``."""
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise BadInput(
            f"val_fraction={val_fraction!r}, test_fraction={test_fraction!r}: each must lie in "
            "(0, 1) and their sum below 1"
        )
    x, y = load_digits(return_X_y=True)
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest,
        y_rest,
        test_size=val_fraction / (1 - test_fraction),
        random_state=seed,
        stratify=y_rest,
    )
    scaler = StandardScaler().fit(x_train)
    return {
        name: (scaler.transform(xs).astype(np.float32), ys.astype(np.int64))
        for name, xs, ys in (
            ("train", x_train, y_train),
            ("val", x_val, y_val),
            ("test", x_test, y_test),
        )
    }


class DigitsDataModule(pl.LightningDataModule):
    """Digits as a LightningDataModule; the training order is shuffled by a seeded generator."""

    def __init__(
        self,
        batch_size: int = 32,
        *,
        seed: int = 0,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise BadInput(f"batch_size={batch_size!r}: expected a positive integer")
        self.batch_size = batch_size
        self.seed = seed
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.datasets: dict[str, TensorDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        splits = split_digits(
            seed=self.seed, val_fraction=self.val_fraction, test_fraction=self.test_fraction
        )
        self.datasets = {
            name: TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
            for name, (x, y) in splits.items()
        }

    def _loader(self, name: str, *, shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        # The data are small tensors in memory: worker processes would only add start-up time.
        return DataLoader(
            self.datasets[name],
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=generator,
            num_workers=0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
