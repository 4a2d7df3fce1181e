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
from typing import Any

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
    covariances, halved. Worked out in float32 even under autocast (bf16 would round the
    covariances it squares)."""
    with torch.autocast(h.device.type, enabled=False):
        h = h.float()
        centred = h - h.mean(dim=0, keepdim=True)
        cov = centred.T @ centred / h.shape[0]
        return 0.5 * (cov.pow(2).sum() - torch.diagonal(cov).pow(2).sum())


class ZooClassifier(pl.LightningModule):
    """What every zoo model shares: ``features(x)`` gives the inner representations (each
    batch x units; the last feeds ``self.head``), and the training, validation and test steps,
    metrics and optimizer are the same for all.

    Every model logs ``train_loss``, ``val_loss``, ``val_acc``, ``test_loss``, ``test_acc`` and,
    each training epoch, its shape as ``arch/width`` and ``arch/depth`` (``arch_width`` and
    ``arch_depth``), which EnergyCallback stores with the epoch's snapshot in the ledger."""

    lr: float
    head: nn.Linear

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    @property
    def arch_width(self) -> int:
        raise NotImplementedError

    @property
    def arch_depth(self) -> int:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)[-1])

    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self(x), y)

    def on_train_epoch_start(self) -> None:
        # the shape the epoch trains (a model that grows does so after an epoch's end)
        self.log("arch/width", float(self.arch_width), on_step=False, on_epoch=True)
        self.log("arch/depth", float(self.arch_depth), on_step=False, on_epoch=True)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        loss = self.training_loss(*batch)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits.float(), y)
        acc = (logits.argmax(dim=1) == y).float().mean()
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True)
        self.log(f"{stage}_acc", acc, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        return self._evaluate(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        return self._evaluate(batch, "test")

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class DeeplySupervised:
    """Constraints on a zoo model's inner units (mixed in before the model class).

    Loss = cross-entropy of the output
         + ``aux_weight`` x mean cross-entropy of the auxiliary heads (one linear classifier on
           each of ``features(x)`` but the last, which feeds the output head; deeply-supervised
           nets, Lee et al. 2015)
         + ``decov_weight`` x sum over ``features(x)`` of the DeCov penalty (Cogswell et al.
           2016).
    Call :meth:`_init_constraints` at the end of ``__init__``."""

    decov_weight: float
    aux_weight: float
    aux_heads: nn.ModuleList

    def _init_constraints(self, decov_weight: float, aux_weight: float, widths: Sequence[int]):
        for name, value in (("decov_weight", decov_weight), ("aux_weight", aux_weight)):
            if not value >= 0:
                raise BadInput(f"{name}={value!r}: expected a weight >= 0")
        self.decov_weight = decov_weight
        self.aux_weight = aux_weight
        self.aux_heads = nn.ModuleList(nn.Linear(w, N_CLASSES) for w in widths[:-1])

    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        hs = self.features(x)  # type: ignore[attr-defined]
        loss = F.cross_entropy(self.head(hs[-1]).float(), y)  # type: ignore[attr-defined]
        if self.aux_heads:
            aux = torch.stack(
                [
                    F.cross_entropy(head(h).float(), y)
                    for head, h in zip(self.aux_heads, hs[:-1], strict=True)
                ]
            )
            loss = loss + self.aux_weight * aux.mean()
        decov = torch.stack([decov_loss(h) for h in hs]).sum()
        self.log("train_decov", decov, on_step=False, on_epoch=True)  # type: ignore[attr-defined]
        return loss + self.decov_weight * decov


class PlateauGrowth:
    """A zoo model that grows while it trains (mixed in before the model class).

    After each training epoch whose validation loss has not improved on the best so far by more
    than ``min_delta`` (with ``relative``: by more than that fraction of the best) for
    ``patience`` epochs in a row, :meth:`grow` is called (the model says
    how it grows; it returns False when it has reached its limits), and the optimizer is rebuilt
    over the new parameters by :meth:`rebuild_optimizers`. Call :meth:`_init_plateau` in
    ``__init__``; a subclass saves its shape in checkpoints through :meth:`_shape_state` /
    :meth:`_load_shape`."""

    patience: int
    min_delta: float
    best_val_loss: float
    epochs_without_improvement: int
    last_val_loss: float | None

    relative: bool

    def _init_plateau(self, patience: int, min_delta: float, relative: bool = False) -> None:
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise BadInput(f"patience={patience!r}: expected an integer >= 1")
        if not min_delta >= 0:
            raise BadInput(f"min_delta={min_delta!r}: expected a number >= 0")
        self.patience = patience
        self.min_delta = min_delta
        self.relative = bool(relative)
        self.best_val_loss = float("inf")
        self.epochs_without_improvement = 0
        self.last_val_loss = None

    def grow(self) -> bool:
        """Grow one step (new parameters); False when there is nothing left to grow."""
        raise NotImplementedError

    def _shape_state(self) -> dict[str, Any]:
        return {}

    def _load_shape(self, saved: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> None:
        """Give the model the shape it had when ``saved`` was taken, before its weights load."""

    def on_validation_epoch_end(self) -> None:
        trainer = self.trainer  # type: ignore[attr-defined]
        if not trainer.sanity_checking:
            self.last_val_loss = float(trainer.callback_metrics["val_loss"])

    def on_train_epoch_end(self) -> None:
        # Here, not in a validation hook: validation runs under inference mode, where new
        # parameters could not take part in autograd.
        if self.last_val_loss is None:
            return
        val_loss, self.last_val_loss = self.last_val_loss, None
        best = self.best_val_loss
        margin = self.min_delta * abs(best) if self.relative else self.min_delta
        if best == float("inf") or val_loss < best - margin:
            self.best_val_loss = val_loss
            self.epochs_without_improvement = 0
            return
        self.epochs_without_improvement += 1
        if self.epochs_without_improvement < self.patience or not self.grow():
            return
        self.epochs_without_improvement = 0
        self.rebuild_optimizers()

    def rebuild_optimizers(self) -> None:
        """After growing in the middle of a fit: a new optimizer (and LR scheduler) over the
        model's parameters, through ``configure_optimizers``. The old optimizer's state (Adam's
        moments, momentum) carries over for every parameter that is still the same tensor of
        the same shape; a new or replaced parameter starts afresh. Each param group keeps its
        current learning rate and each scheduler its position (``state_dict``), so the LR
        schedule goes on where it was. Lightning reads ``trainer.optimizers`` at every step,
        so the new optimizer takes over from the next batch on."""
        trainer = self.trainer  # type: ignore[attr-defined]
        old_optimizers = list(trainer.optimizers)
        old_schedulers = [config.scheduler.state_dict() for config in trainer.lr_scheduler_configs]
        trainer.strategy.setup_optimizers(trainer)
        for old, new in zip(old_optimizers, trainer.optimizers, strict=False):
            for old_group, group in zip(old.param_groups, new.param_groups, strict=False):
                group["lr"] = old_group["lr"]
            kept = {
                id(p): state
                for p, state in old.state.items()
                if all(
                    not torch.is_tensor(v) or v.dim() == 0 or v.shape == p.shape
                    for v in state.values()
                )
            }
            for group in new.param_groups:
                for p in group["params"]:
                    if id(p) in kept:
                        new.state[p] = kept[id(p)]
        for state, config in zip(old_schedulers, trainer.lr_scheduler_configs, strict=False):
            config.scheduler.load_state_dict(state)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["adaptive_state"] = {
            "best_val_loss": self.best_val_loss,
            "epochs_without_improvement": self.epochs_without_improvement,
            **self._shape_state(),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Lightning calls this before loading the weights: give the model the shape it had
        # when the checkpoint was saved, so a model that grew can be resumed or reloaded.
        saved = checkpoint.get("adaptive_state", {})
        self._load_shape(saved, checkpoint["state_dict"])
        self.best_val_loss = saved.get("best_val_loss", float("inf"))
        self.epochs_without_improvement = saved.get("epochs_without_improvement", 0)


class BaselineMLP(ZooClassifier):
    """A plain multi-layer perceptron classifier trained with Adam:
    ``64 -> hidden[0] -> ... -> hidden[-1] -> 10`` with ReLU."""

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

    @property
    def arch_width(self) -> int:
        return max(self.widths)

    @property
    def arch_depth(self) -> int:
        return len(self.hidden_layers)

    def hidden_activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The post-ReLU activations of every hidden layer."""
        out = []
        for layer in self.hidden_layers:
            x = F.relu(layer(x))
            out.append(x)
        return out

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.hidden_activations(x)


class ConstrainedMLP(DeeplySupervised, BaselineMLP):
    """The baseline MLP with constraints on its inner units (:class:`DeeplySupervised`): DeCov on
    every hidden layer, an auxiliary head on each hidden layer but the last."""

    def __init__(
        self,
        hidden: Sequence[int] = (32, 32),
        lr: float = 3e-3,
        *,
        decov_weight: float = 0.1,
        aux_weight: float = 0.3,
    ) -> None:
        super().__init__(hidden, lr)
        self._init_constraints(decov_weight, aux_weight, self.widths)


class AdaptiveMLP(PlateauGrowth, BaselineMLP):
    """An MLP that widens its hidden layers while it trains (:class:`PlateauGrowth`): on a
    plateau every hidden layer narrower than ``max_width`` is widened by ``growth`` (at most to
    ``max_width``) with :meth:`widen`."""

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
        _check_growth(growth, noise_std)
        self._init_plateau(patience, min_delta)
        self.max_width = max_width
        self.growth = growth
        self.noise_std = noise_std
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
        rebuild the optimizer afterwards (:meth:`rebuild_optimizers`), as the plateau rule does."""
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
        mapping, copies = split_units(old_width, new_width, layer.weight.device, generator)
        wider = nn.Linear(layer.in_features, new_width, device=layer.weight.device)
        wider.to(layer.weight.dtype)
        wider.weight.copy_(layer.weight[mapping])
        wider.bias.copy_(layer.bias[mapping])
        _add_noise(wider.weight, old_width, noise_std, generator)

        fed = nn.Linear(new_width, nxt.out_features, device=nxt.weight.device)
        fed.to(nxt.weight.dtype)
        fed.weight.copy_(nxt.weight[:, mapping] / copies.to(nxt.weight.dtype))
        fed.bias.copy_(nxt.bias)

        self.hidden_layers[layer_idx] = wider
        if nxt is self.head:
            self.head = fed
        else:
            self.hidden_layers[layer_idx + 1] = fed

    def grow(self) -> bool:
        grown = False
        for i, width in enumerate(self.widths):
            if width < self.max_width:
                new_width = min(self.max_width, max(width + 1, int(width * self.growth)))
                self.widen(i, new_width, noise_std=self.noise_std)
                grown = True
        if grown:
            self.widenings.append((self.current_epoch, self.widths))
            log.info("epoch %d: widened hidden layers to %s", self.current_epoch, self.widths)
        return grown

    def _shape_state(self) -> dict[str, Any]:
        return {"widenings": [[epoch, list(widths)] for epoch, widths in self.widenings]}

    def _load_shape(self, saved: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> None:
        device, dtype = self.head.weight.device, self.head.weight.dtype
        n = len(self.hidden_layers)
        sizes = (N_FEATURES, *(state_dict[f"hidden_layers.{i}.weight"].shape[0] for i in range(n)))
        if sizes[1:] != self.widths:
            self.hidden_layers = nn.ModuleList(
                nn.Linear(a, b, device=device, dtype=dtype) for a, b in itertools.pairwise(sizes)
            )
            self.head = nn.Linear(sizes[-1], N_CLASSES, device=device, dtype=dtype)
        self.widenings = [(epoch, tuple(widths)) for epoch, widths in saved.get("widenings", [])]


def split_units(
    old: int, new: int, device: torch.device, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Net2WiderNet's random mapping from ``new`` units to ``old`` ones: ``mapping[j]`` is the
    unit unit ``j`` copies (the first ``old`` copy themselves, the others a random one) and
    ``copies[j]`` how many units copy the same original as unit ``j``, both on ``device``."""
    source = torch.randint(old, (new - old,), generator=generator)
    mapping = torch.cat([torch.arange(old), source])
    # Counted on the CPU (CUDA's bincount has no deterministic kernel), then moved.
    copies = torch.bincount(mapping, minlength=old)[mapping]
    return mapping.to(device), copies.to(device)


def _add_noise(
    weight: torch.Tensor, first_new: int, noise_std: float, generator: torch.Generator | None
) -> None:
    """Gaussian noise on the rows of ``weight`` from ``first_new`` on (the new units), in place:
    breaks the symmetry between a unit and its copies."""
    if noise_std > 0 and len(weight) > first_new:
        shape = (len(weight) - first_new, *weight.shape[1:])
        noise = torch.randn(shape, generator=generator).to(weight.device, weight.dtype)
        weight[first_new:] += noise_std * noise


def _check_growth(growth: float, noise_std: float) -> None:
    if not growth > 1:
        raise BadInput(f"growth={growth!r}: expected a factor > 1")
    if not noise_std >= 0:
        raise BadInput(f"noise_std={noise_std!r}: expected a standard deviation >= 0")


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
