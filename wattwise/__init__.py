"""wattwise: energy, money and carbon accounting for deep-learning training.

Importing this package is cheap and has no side effects: no NVML, no torch, no pandas, no network.
Public names are loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Ledger", "Meter", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from wattwise.ledger import Ledger
    from wattwise.meter import Meter


def __getattr__(name: str) -> Any:
    if name == "Meter":
        from wattwise.meter import Meter

        return Meter
    if name == "Ledger":
        from wattwise.ledger import Ledger

        return Ledger
    raise AttributeError(f"module 'wattwise' has no attribute {name!r}")
