"""The two Lightning namespaces: ``pytorch_lightning`` (always installed) and ``lightning.pytorch``.

Each Trainer type-checks callbacks against its own ``Callback`` class, so a wattwise callback
derives from every ``Callback`` class that is installed: one class, one copy of the logic, usable
with either Trainer. Rank-aware helpers take the trainer so they use the namespace it belongs to
(each namespace keeps its own idea of the current rank).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import os
from collections.abc import Callable
from typing import Any

import pytorch_lightning

MIN_PYTORCH_LIGHTNING = (2, 4)


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.split(".")[:2]:
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


if _version_tuple(pytorch_lightning.__version__) < MIN_PYTORCH_LIGHTNING:  # pragma: no cover
    raise ImportError(
        f"wattwise's Lightning callbacks need pytorch-lightning >= 2.4, "
        f"found {pytorch_lightning.__version__}"
    )


def callback_bases() -> tuple[type, ...]:
    """The ``Callback`` classes of every installed Lightning namespace (pytorch_lightning first)."""
    bases: list[type] = [pytorch_lightning.Callback]
    if importlib.util.find_spec("lightning") is not None:
        try:
            from lightning.pytorch import Callback as UnifiedCallback
        except ImportError:  # a broken `lightning` install: the pytorch_lightning path still works
            logging.getLogger(__name__).debug("lightning.pytorch not importable", exc_info=True)
        else:
            bases.append(UnifiedCallback)
    return tuple(bases)


def namespace_of(trainer: Any) -> str:
    """``pytorch_lightning`` or ``lightning.pytorch``: the package the trainer comes from."""
    module = type(trainer).__module__
    return "lightning.pytorch" if module.startswith("lightning.") else "pytorch_lightning"


def rank_zero_info(trainer: Any, message: str) -> None:
    """Show an info line through the trainer's own package's ``rank_zero_info`` (global rank 0)."""
    if trainer.is_global_zero:
        importlib.import_module(f"{namespace_of(trainer)}.utilities.rank_zero").rank_zero_info(
            message
        )


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a Lightning checkpoint on the CPU without materialising its tensors (memory-mapped)."""
    torch = importlib.import_module("torch")
    return torch.load(os.fspath(path), map_location="cpu", weights_only=False, mmap=True)


@functools.lru_cache(maxsize=4)
def _batch_size_finder(namespace: str) -> tuple[Callable[[Any], Any] | None, Callable[[Any], int]]:
    """``(_extract_batch_size, extract_batch_size)`` of ``<namespace>.utilities.data``."""
    data = importlib.import_module(f"{namespace}.utilities.data")
    return getattr(data, "_extract_batch_size", None), data.extract_batch_size


def batch_size(trainer: Any, batch: Any) -> int | None:
    """Samples in ``batch`` as Lightning finds them (the traversal behind ``self.log``'s batch
    size: the first dimension of the batch's tensors); None when it finds none, or when the
    tensors disagree (Lightning would warn and take the first; a count must not guess).

    Cheap: it reads tensor shapes only (no device sync). Never raises.
    """
    walk, extract = _batch_size_finder(namespace_of(trainer))
    try:
        if walk is None:  # a Lightning without the generator: its public function, first size
            return int(extract(batch))
        sizes = {size for size in walk(batch) if size is not None}
    except Exception:  # Lightning's own "could not infer", a recursion error, an odd batch
        return None
    return int(sizes.pop()) if len(sizes) == 1 else None
