"""The zoo's three LightningModules over the digits: a plain MLP, the same MLP with constraints
on its inner units, and an MLP that widens itself while it trains.

- ``BaselineMLP``: ``64 -> hidden[0] -> ... -> hidden[-1] -> 10`` with ReLU.
- ``ConstrainedMLP``: adds a DeCov penalty (Cogswell et al. 2016, "Reducing Overfitting in Deep
  Networks by Decorrelating Representations") on every hidden layer and auxiliary classifier
  heads on the intermediate hidden layers (deeply-supervised nets, Lee et al. 2015).
- ``AdaptiveMLP``: widens its hidden layers by function-preserving neuron splitting (Net2WiderNet,
  Chen et al. 2016, "Net2Net") when the validation loss plateaus, then rebuilds the optimizer.

Each logs ``train_loss``, ``val_loss``, ``val_acc``, ``test_loss`` and ``test_acc``.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence

import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn import functional as F

from wattwise.errors import BadInput
from wattwise.zoo.data import N_CLASSES, N_FEATURES, DigitsDataModule

log = logging.getLogger(__name__)


def _check_widths(hidden: Sequence[int]) -> tuple[int, ...]:
    widths = tuple(hidden)
    if not widths or any(not isinstance(w, int) or w < 1 for w in widths):
        raise BadInput(f"hidden={hidden!r}: expected one or more positive integer layer widths")
    return widths


def decov_loss(h: torch.Tensor) -> torch.Tensor:
    """DeCov penalty of a batch of activations ``h`` (batch x units): with ``C`` the batch
    covariance of the units, ``0.5 * (||C||_F^2 - ||diag(C)||_2^2)``: the squared off-diagonal
    covariances, halved."""
    centred = h - h.mean(dim=0, keepdim=True)
    cov = centred.T @ centred / h.shape[0]
    return 0.5 * (cov.pow(2).sum() - torch.diagonal(cov).pow(2).sum())


class BaselineMLP(pl.LightningModule):
    """A plain multi-layer perceptron classifier trained with Adam."""

    def __init__(self, hidden: Sequence[int] = (32, 32), lr: float = 3e-3) -> None:
        super().__init__()
        widths = _check_widths(hidden)
        if not lr > 0:
            raise BadInput(f"lr={lr!r}: expected a positive learning rate")
        self.lr = lr
        self.save_hyperparameters()  # every subclass's arguments too: load_from_checkpoint works
        sizes = (N_FEATURES, *widths)
        self.hidden_layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.head = nn.Linear(widths[-1], N_CLASSES)

    @property
    def widths(self) -> tuple[int, ...]:
        """Current width of each hidden layer."""
        return tuple(layer.out_features for layer in self.hidden_layers)

    def hidden_activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The post-ReLU activations of every hidden layer."""
        out = []
        for layer in self.hidden_layers:
            x = F.relu(layer(x))
            out.append(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden_activations(x)[-1])

    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self(x), y)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        loss = self.training_loss(*batch)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(dim=1) == y).float().mean()
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True)
        self.log(f"{stage}_acc", acc, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        return self._evaluate(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        return self._evaluate(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class ConstrainedMLP(BaselineMLP):
    """The baseline network with symbolic constraints on its inner units.

    Loss = cross-entropy of the output
         + ``aux_weight`` x mean cross-entropy of the auxiliary heads (one linear classifier on
           each hidden layer but the last, which feeds the output head)
         + ``decov_weight`` x sum over hidden layers of the DeCov penalty.
    """

    def __init__(
        self,
        hidden: Sequence[int] = (32, 32),
        lr: float = 3e-3,
        *,
        decov_weight: float = 0.1,
        aux_weight: float = 0.3,
    ) -> None:
        super().__init__(hidden, lr)
        for name, value in (("decov_weight", decov_weight), ("aux_weight", aux_weight)):
            if not value >= 0:
                raise BadInput(f"{name}={value!r}: expected a weight >= 0")
        self.decov_weight = decov_weight
        self.aux_weight = aux_weight
        self.aux_heads = nn.ModuleList(
            nn.Linear(layer.out_features, N_CLASSES) for layer in self.hidden_layers[:-1]
        )

    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        hs = self.hidden_activations(x)
        loss = F.cross_entropy(self.head(hs[-1]), y)
        if self.aux_heads:
            aux = torch.stack(
                [
                    F.cross_entropy(head(h), y)
                    for head, h in zip(self.aux_heads, hs[:-1], strict=True)
                ]
            )
            loss = loss + self.aux_weight * aux.mean()
        decov = torch.stack([decov_loss(h) for h in hs]).sum()
        self.log("train_decov", decov, on_step=False, on_epoch=True)
        return loss + self.decov_weight * decov


class AdaptiveMLP(BaselineMLP):
    """An MLP that widens its hidden layers while it trains.

    After each training epoch whose validation loss has not improved on the best so far by more
    than ``min_delta`` for ``patience`` epochs in a row, every hidden layer narrower than
    ``max_width`` is widened by ``growth`` (at most to ``max_width``) with :meth:`widen`, and the
    optimizer is rebuilt over the new parameters (its running state starts afresh).
    """

    def __init__(
        self,
        hidden: Sequence[int] = (16, 16),
        lr: float = 3e-3,
        *,
        max_width: int = 64,
        patience: int = 1,
        min_delta: float = 0.01,
        growth: float = 2.0,
        noise_std: float = 1e-3,
    ) -> None:
        super().__init__(hidden, lr)
        if not isinstance(max_width, int) or max_width < max(self.widths):
            raise BadInput(
                f"max_width={max_width!r}: expected an integer >= the widest hidden layer "
                f"({max(self.widths)})"
            )
        if not isinstance(patience, int) or patience < 1:
            raise BadInput(f"patience={patience!r}: expected an integer >= 1")
        if not min_delta >= 0:
            raise BadInput(f"min_delta={min_delta!r}: expected a number >= 0")
        if not growth > 1:
            raise BadInput(f"growth={growth!r}: expected a factor > 1")
        if not noise_std >= 0:
            raise BadInput(f"noise_std={noise_std!r}: expected a standard deviation >= 0")
        self.max_width = max_width
        self.patience = patience
        self.min_delta = min_delta
        self.growth = growth
        self.noise_std = noise_std
        self.best_val_loss = float("inf")
        self.epochs_without_improvement = 0
        self.last_val_loss: float | None = None
        self.widenings: list[tuple[int, tuple[int, ...]]] = []
        """(epoch, widths after) for every widening during fits."""

    @torch.no_grad()
    def widen(
        self,
        layer_idx: int,
        new_width: int,
        noise_std: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        """Widen hidden layer ``layer_idx`` to ``new_width`` units by Net2WiderNet: each new unit
        copies the incoming weights and bias of a randomly chosen existing unit, and the outgoing
        weights of every copied unit (original and copies) are divided by its number of copies,
        so the network computes the same function. ``noise_std`` > 0 then adds Gaussian noise of
        that standard deviation to the new units' incoming weights to break the symmetry.

        The replaced layers get new parameters: when calling this by hand in the middle of a fit,
        rebuild the optimizer afterwards (``trainer.strategy.setup_optimizers(trainer)``), as the
        plateau rule does."""
        if not 0 <= layer_idx < len(self.hidden_layers):
            raise BadInput(
                f"layer_idx={layer_idx!r}: expected 0..{len(self.hidden_layers) - 1} "
                "(a hidden layer)"
            )
        layer = self.hidden_layers[layer_idx]
        old_width = layer.out_features
        if not isinstance(new_width, int) or new_width <= old_width:
            raise BadInput(
                f"new_width={new_width!r}: expected an integer above the current width {old_width}"
            )
        nxt = (
            self.hidden_layers[layer_idx + 1]
            if layer_idx + 1 < len(self.hidden_layers)
            else self.head
        )
        device = layer.weight.device
        source = torch.randint(old_width, (new_width - old_width,), generator=generator)
        mapping = torch.cat([torch.arange(old_width), source])
        # copies[j]: how many units copy the same original as unit j. Counted on the CPU (CUDA's
        # bincount has no deterministic kernel), then moved beside the weights.
        copies = torch.bincount(mapping, minlength=old_width)[mapping]
        mapping, copies = mapping.to(device), copies.to(device=device, dtype=nxt.weight.dtype)

        wider = nn.Linear(layer.in_features, new_width, device=device, dtype=layer.weight.dtype)
        wider.weight.copy_(layer.weight[mapping])
        wider.bias.copy_(layer.bias[mapping])
        if noise_std > 0:
            noise = torch.randn(new_width - old_width, layer.in_features, generator=generator).to(
                device=device, dtype=layer.weight.dtype
            )
            wider.weight[old_width:] += noise_std * noise

        fed = nn.Linear(new_width, nxt.out_features, device=device, dtype=nxt.weight.dtype)
        fed.weight.copy_(nxt.weight[:, mapping] / copies)
        fed.bias.copy_(nxt.bias)

        self.hidden_layers[layer_idx] = wider
        if nxt is self.head:
            self.head = fed
        else:
            self.hidden_layers[layer_idx + 1] = fed

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["adaptive_state"] = {
            "best_val_loss": self.best_val_loss,
            "epochs_without_improvement": self.epochs_without_improvement,
            "widenings": [[epoch, list(widths)] for epoch, widths in self.widenings],
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Lightning calls this before loading the weights: give every layer the width it had
        # when the checkpoint was saved, so a model that grew can be resumed or reloaded.
        state = checkpoint["state_dict"]
        device, dtype = self.head.weight.device, self.head.weight.dtype
        sizes = (
            N_FEATURES,
            *(state[f"hidden_layers.{i}.weight"].shape[0] for i in range(len(self.hidden_layers))),
        )
        if sizes[1:] != self.widths:
            self.hidden_layers = nn.ModuleList(
                nn.Linear(a, b, device=device, dtype=dtype) for a, b in itertools.pairwise(sizes)
            )
            self.head = nn.Linear(sizes[-1], N_CLASSES, device=device, dtype=dtype)
        saved = checkpoint.get("adaptive_state", {})
        self.best_val_loss = saved.get("best_val_loss", float("inf"))
        self.epochs_without_improvement = saved.get("epochs_without_improvement", 0)
        self.widenings = [(epoch, tuple(widths)) for epoch, widths in saved.get("widenings", [])]

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.last_val_loss = float(self.trainer.callback_metrics["val_loss"])

    def on_train_epoch_end(self) -> None:
        # Here, not in a validation hook: validation runs under inference mode, where new
        # parameters could not take part in autograd.
        if self.last_val_loss is None:
            return
        val_loss, self.last_val_loss = self.last_val_loss, None
        if val_loss < self.best_val_loss - self.min_delta:
            self.best_val_loss = val_loss
            self.epochs_without_improvement = 0
            return
        self.epochs_without_improvement += 1
        if self.epochs_without_improvement < self.patience:
            return
        grown = False
        for i, width in enumerate(self.widths):
            if width < self.max_width:
                new_width = min(self.max_width, max(width + 1, int(width * self.growth)))
                self.widen(i, new_width, noise_std=self.noise_std)
                grown = True
        if not grown:
            return
        self.epochs_without_improvement = 0
        self.widenings.append((self.current_epoch, self.widths))
        log.info("epoch %d: widened hidden layers to %s", self.current_epoch, self.widths)
        # The old optimizer holds the replaced parameters; Lightning reads trainer.optimizers at
        # every step, so the new one takes over from the next batch on.
        self.trainer.strategy.setup_optimizers(self.trainer)


MODELS: dict[str, type[BaselineMLP]] = {
    "baseline": BaselineMLP,
    "constrained": ConstrainedMLP,
    "adaptive": AdaptiveMLP,
}
"""The zoo, by the label each model's runs carry in the ledger."""


def build_datamodule(*, batch_size: int = 32, seed: int = 0) -> DigitsDataModule:
    """The digits datamodule every zoo model trains on (a deterministic split under ``seed``)."""
    return DigitsDataModule(batch_size, seed=seed)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters of a module (it changes when an adaptive model grows)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
