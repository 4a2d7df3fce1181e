"""The zoo's three LightningModules over the generated images (``wattwise.zoo.images``): a small
ResNet, the same net with constraints on its inner units, and one that grows while it trains.

- ``BaselineResNet``: a 3x3 stem, then one stage per entry of ``blocks`` (channels ``width``,
  ``2 width``, ``4 width``; each stage after the first halves the resolution), basic residual
  blocks (conv-BN-ReLU-conv-BN plus the shortcut, then ReLU), global average pooling and a
  linear head. AdamW with a cosine learning-rate schedule over the fit's epochs.
- ``ConstrainedResNet``: :class:`~wattwise.zoo.models.DeeplySupervised` on the globally pooled
  output of every stage: DeCov on each, an auxiliary head on each stage but the last.
- ``AdaptiveResNet``: :class:`~wattwise.zoo.models.PlateauGrowth`: on a validation plateau it
  widens the inner channels of every block (Net2WiderNet, :meth:`AdaptiveResNet.widen`) or
  inserts identity-initialised residual blocks (Net2DeeperNet, :meth:`AdaptiveResNet.deepen`),
  alternately, until ``max_width`` and ``max_blocks`` are reached.

On CUDA the nets run channels_last (the demo's Trainer adds bf16 autocast); on the CPU neither.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from wattwise.errors import BadInput
from wattwise.zoo.images import N_CLASSES
from wattwise.zoo.models import (
    DeeplySupervised,
    PlateauGrowth,
    ZooClassifier,
    _add_noise,
    _check_growth,
    split_units,
)

log = logging.getLogger(__name__)


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``; ``inner`` channels between the
    two convolutions (what Net2WiderNet widens), a 1x1 projection as the shortcut where the
    channels or the resolution change."""

    def __init__(self, in_channels: int, out_channels: int, inner: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, inner, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    @property
    def inner(self) -> int:
        return self.conv1.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def _check_shape(width: int, blocks: Sequence[int]) -> tuple[int, tuple[int, ...]]:
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise BadInput(f"width={width!r}: expected a whole number of channels >= 1")
    counts = tuple(blocks)
    if not counts or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in counts):
        raise BadInput(f"blocks={blocks!r}: expected one or more whole numbers >= 1 (per stage)")
    return width, counts


class BaselineResNet(ZooClassifier):
    """A small ResNet for 32x32 RGB images; see the module docstring."""

    def __init__(
        self,
        width: int = 32,
        blocks: Sequence[int] = (1, 1, 1),
        lr: float = 3e-3,
        weight_decay: float = 5e-4,
    ) -> None:
        super().__init__()
        width, counts = _check_shape(width, blocks)
        for name, value in (("lr", lr), ("weight_decay", weight_decay)):
            if not (value > 0 or (name == "weight_decay" and value == 0)):
                raise BadInput(f"{name}={value!r}: expected a positive number")
        self.lr = lr
        self.weight_decay = weight_decay
        self.save_hyperparameters()  # every subclass's arguments too: load_from_checkpoint works
        self.base_width = width
        self.channels_last = False
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.stages = nn.ModuleList(self._stage(s, n, width) for s, n in enumerate(counts))
        self.head = nn.Linear(self.stage_channels[-1], N_CLASSES)

    def _stage(self, s: int, n_blocks: int, inner_base: int) -> nn.ModuleList:
        channels = self.base_width * 2**s
        before = self.base_width * 2 ** max(s - 1, 0)
        return nn.ModuleList(
            BasicBlock(
                before if i == 0 else channels,
                channels,
                inner_base * 2**s,
                2 if i == 0 and s > 0 else 1,
            )
            for i in range(n_blocks)
        )

    @property
    def stage_channels(self) -> tuple[int, ...]:
        """Output channels of each stage (the residual stream; growth leaves it as it is)."""
        return tuple(self.base_width * 2**s for s in range(len(self.stages)))

    @property
    def blocks(self) -> tuple[int, ...]:
        """Residual blocks per stage."""
        return tuple(len(stage) for stage in self.stages)

    @property
    def widths(self) -> tuple[int, ...]:
        """Inner channels of the blocks of each stage."""
        return tuple(stage[0].inner for stage in self.stages)

    @property
    def arch_width(self) -> int:
        """Inner channels of the first stage's blocks (stage ``s`` has ``2**s`` times that)."""
        return self.stages[0][0].inner

    @property
    def arch_depth(self) -> int:
        """Residual blocks in all."""
        return sum(self.blocks)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The globally average-pooled output of every stage (batch x channels)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.stem(x)
        out = []
        for stage in self.stages:
            for block in stage:
                x = block(x)
            out.append(x.mean(dim=(2, 3)))
        return out

    def _use_device_layout(self) -> None:
        """channels_last on CUDA (faster convolutions with bf16), the default layout elsewhere."""
        self.channels_last = self.device.type == "cuda"
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    def on_fit_start(self) -> None:
        self._use_device_layout()

    def on_test_start(self) -> None:
        self._use_device_layout()

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        epochs = self.trainer.max_epochs if self._trainer is not None else None
        if not epochs or epochs < 1:
            return optimizer
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": schedule, "interval": "epoch"},
        }


class ConstrainedResNet(DeeplySupervised, BaselineResNet):
    """The baseline ResNet with constraints on its inner units (see the module docstring)."""

    def __init__(
        self,
        width: int = 32,
        blocks: Sequence[int] = (1, 1, 1),
        lr: float = 3e-3,
        weight_decay: float = 5e-4,
        *,
        decov_weight: float = 0.01,
        aux_weight: float = 0.3,
    ) -> None:
        super().__init__(width, blocks, lr, weight_decay)
        self._init_constraints(decov_weight, aux_weight, self.stage_channels)


class AdaptiveResNet(PlateauGrowth, BaselineResNet):
    """A ResNet that grows while it trains: on each plateau (:class:`PlateauGrowth`; by default
    an epoch whose validation loss is not 5 % below the best so far) it widens
    the inner channels of every block by ``growth`` (at most to ``max_width`` in the first
    stage, in proportion in the others) or appends an identity-initialised block to every stage
    (at most ``max_blocks`` per stage), alternately, starting with widening; when one way is
    exhausted it takes the other. ``growths`` lists ``(epoch, "widen"|"deepen", width, depth)``
    after each step."""

    def __init__(
        self,
        width: int = 16,
        blocks: Sequence[int] = (1, 1, 1),
        lr: float = 3e-3,
        weight_decay: float = 5e-4,
        *,
        max_width: int = 64,
        max_blocks: int = 3,
        patience: int = 1,
        min_delta: float = 0.05,
        relative: bool = True,
        growth: float = 2.0,
        noise_std: float = 1e-3,
    ) -> None:
        super().__init__(width, blocks, lr, weight_decay)
        if isinstance(max_width, bool) or not isinstance(max_width, int) or max_width < width:
            raise BadInput(f"max_width={max_width!r}: expected an integer >= width ({width})")
        if (
            isinstance(max_blocks, bool)
            or not isinstance(max_blocks, int)
            or max_blocks < max(self.blocks)
        ):
            raise BadInput(
                f"max_blocks={max_blocks!r}: expected an integer >= the blocks of the deepest "
                f"stage ({max(self.blocks)})"
            )
        _check_growth(growth, noise_std)
        self._init_plateau(patience, min_delta, relative)
        self.max_width = max_width
        self.max_blocks = max_blocks
        self.growth = growth
        self.noise_std = noise_std
        self.growths: list[tuple[int, str, int, int]] = []

    @torch.no_grad()
    def widen(
        self, new_width: int, noise_std: float = 0.0, generator: torch.Generator | None = None
    ) -> None:
        """Net2WiderNet on every block's inner channels: stage ``s``'s blocks get ``new_width *
        2**s``. Each new channel copies a randomly chosen existing one: its ``conv1`` filter and
        its ``bn1`` weight, bias, running mean and running variance; ``conv2``'s input channels
        are divided by how many channels copy the same original. The net computes the same
        function, with BatchNorm in eval mode (same running statistics) and in train mode (a
        copy has the same batch statistics as its original), unless ``noise_std`` > 0 adds
        noise to the new filters to break the symmetry. Rebuild the optimizer afterwards in the
        middle of a fit (:meth:`rebuild_optimizers`), as the plateau rule does."""
        if isinstance(new_width, bool) or not isinstance(new_width, int):
            raise BadInput(f"new_width={new_width!r}: expected a whole number of channels")
        if new_width <= self.arch_width:
            raise BadInput(
                f"new_width={new_width!r}: expected more than the current width {self.arch_width}"
            )
        for s, stage in enumerate(self.stages):
            for block in stage:
                _widen_block(block, new_width * 2**s, noise_std, generator)
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    @torch.no_grad()
    def deepen(self) -> None:
        """Net2DeeperNet for residual nets: append to every stage a block whose residual branch
        starts at zero (its last BatchNorm's weight and bias are 0), so the block passes its
        input through (it follows a ReLU, so the output ReLU changes nothing) and the net
        computes the same function in eval and in train mode. The branch's first convolution
        is initialised as usual and the zero weight learns from the first step (its gradient
        does not vanish), as in zero-initialised residual nets. Rebuild the optimizer afterwards
        in the middle of a fit, as the plateau rule does."""
        reference = self.stem[0].weight
        for s, stage in enumerate(self.stages):
            channels = self.stage_channels[s]
            block = BasicBlock(channels, channels, stage[0].inner)
            nn.init.zeros_(block.bn2.weight)
            nn.init.zeros_(block.bn2.bias)
            block.to(device=reference.device, dtype=reference.dtype)
            if self.channels_last:
                block.to(memory_format=torch.channels_last)
            block.train(self.training)
            stage.append(block)

    def grow(self) -> bool:
        can_widen = self.arch_width < self.max_width
        can_deepen = max(self.blocks) < self.max_blocks
        widen_now = can_widen and (
            not can_deepen or not self.growths or self.growths[-1][1] == "deepen"
        )
        if widen_now:
            width = self.arch_width
            self.widen(
                min(self.max_width, max(width + 1, int(width * self.growth))),
                noise_std=self.noise_std,
            )
        elif can_deepen:
            self.deepen()
        else:
            return False
        step = "widen" if widen_now else "deepen"
        self.growths.append((self.current_epoch, step, self.arch_width, self.arch_depth))
        log.info(
            "epoch %d: %s -> width %d, %d blocks",
            self.current_epoch,
            step,
            self.arch_width,
            self.arch_depth,
        )
        return True

    def _shape_state(self) -> dict[str, Any]:
        return {
            "width": self.arch_width,
            "blocks": list(self.blocks),
            "growths": [list(g) for g in self.growths],
        }

    def _load_shape(self, saved: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> None:
        width, blocks = saved.get("width", self.arch_width), tuple(saved.get("blocks", self.blocks))
        if (width, blocks) != (self.arch_width, self.blocks):
            reference = self.stem[0].weight
            stages = nn.ModuleList(self._stage(s, n, width) for s, n in enumerate(blocks))
            self.stages = stages.to(device=reference.device, dtype=reference.dtype)
        self.growths = [(int(e), str(k), int(w), int(d)) for e, k, w, d in saved.get("growths", [])]


def _widen_block(
    block: BasicBlock, new_inner: int, noise_std: float, generator: torch.Generator | None
) -> None:
    old = block.inner
    if new_inner <= old:
        return
    conv1, bn1, conv2 = block.conv1, block.bn1, block.conv2
    mapping, copies = split_units(old, new_inner, conv1.weight.device, generator)
    wider = nn.Conv2d(
        conv1.in_channels, new_inner, 3, conv1.stride, 1, bias=False, device=conv1.weight.device
    ).to(conv1.weight.dtype)
    wider.weight.copy_(conv1.weight[mapping])
    _add_noise(wider.weight, old, noise_std, generator)
    norm = nn.BatchNorm2d(new_inner, eps=bn1.eps, momentum=bn1.momentum, device=bn1.weight.device)
    norm.to(bn1.weight.dtype)
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(norm, name).copy_(getattr(bn1, name)[mapping])
    norm.num_batches_tracked.copy_(bn1.num_batches_tracked)
    norm.train(bn1.training)
    fed = nn.Conv2d(new_inner, conv2.out_channels, 3, 1, 1, bias=False, device=conv2.weight.device)
    fed.to(conv2.weight.dtype)
    fed.weight.copy_(conv2.weight[:, mapping] / copies.to(conv2.weight.dtype)[None, :, None, None])
    block.conv1, block.bn1, block.conv2 = wider, norm, fed


IMAGE_MODELS: dict[str, type[BaselineResNet]] = {
    "baseline": BaselineResNet,
    "constrained": ConstrainedResNet,
    "adaptive": AdaptiveResNet,
}
"""The image task's zoo, by the label each model's runs carry in the ledger."""
