"""Lightning integration of wattwise: ``EnergyCallback`` and ``BudgetGuard``.

Works with ``pytorch_lightning`` and, where installed, with ``lightning.pytorch``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["BudgetGuard", "EnergyCallback"]

if TYPE_CHECKING:  # pragma: no cover
    from lightning_callbacks.budget import BudgetGuard
    from lightning_callbacks.energy import EnergyCallback


def __getattr__(name: str) -> Any:
    if name == "EnergyCallback":
        from lightning_callbacks.energy import EnergyCallback

        return EnergyCallback
    if name == "BudgetGuard":
        from lightning_callbacks.budget import BudgetGuard

        return BudgetGuard
    raise AttributeError(f"module 'lightning_callbacks' has no attribute {name!r}")
