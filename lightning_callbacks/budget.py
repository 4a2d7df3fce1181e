"""``BudgetGuard``: stop (or warn) before a fit spends more energy, money or CO2e than allowed.

After each training epoch it asks the ``EnergyCallback`` of the same Trainer to count the epoch
(``flush``), notes how much the run's total grew since the previous epoch end (the epoch plus
everything between epochs: data-loader start, checkpoints, the set-up before the first), takes
the steady rate of that growth with warm-up split off (:func:`wattwise.estimate.steady_state`)
and projects:

* the next epoch: ``so far + 1 steady epoch``. ``action="stop"``: when that would cross a budget,
  the fit stops now, all ranks together (rank 0's decision is broadcast), and the reason goes to
  the ledger (``EnergyCallback.record_reason``);
* the whole fit: ``so far + remaining epochs x steady epoch`` (``trainer.max_epochs``; one epoch
  ahead when unbounded). ``action="warn"``: when that would cross a budget, one warning (rank 0),
  as early as the projection shows it; the fit never stops.

Energy is device energy before PUE (``max_kwh``); money (``max_usd``) uses the callback's pricing
scenario over the training time, CO2e (``max_kgco2e``) its region, with PUE.
"""

from __future__ import annotations

import importlib
import logging
import math
from typing import Any

from lightning_callbacks._compat import callback_bases, namespace_of, rank_zero_info
from wattwise.errors import BadInput
from wattwise.units import j_to_kwh

log = logging.getLogger(__name__)

ACTIONS = ("stop", "warn")
_UNITS = {"kwh": "kWh", "usd": "USD", "kgco2e": "kg CO2e"}


class _BudgetLogic:
    """All of BudgetGuard's behaviour; the public class adds the Lightning ``Callback`` bases."""

    def __init__(
        self,
        max_kwh: float | None = None,
        max_usd: float | None = None,
        max_kgco2e: float | None = None,
        action: str = "stop",
    ) -> None:
        limits = {"max_kwh": max_kwh, "max_usd": max_usd, "max_kgco2e": max_kgco2e}
        for name, value in limits.items():
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise BadInput(f"BudgetGuard({name}={value!r}): give a number > 0 or None")
            if not math.isfinite(value) or value <= 0:
                raise BadInput(f"BudgetGuard({name}={value!r}): give a number > 0 or None")
        if all(value is None for value in limits.values()):
            raise BadInput(
                "BudgetGuard() needs at least one budget: max_kwh, max_usd or max_kgco2e (> 0)"
            )
        if action not in ACTIONS:
            raise BadInput(f"BudgetGuard(action={action!r}): accepted: {', '.join(ACTIONS)}")
        self.max_kwh, self.max_usd, self.max_kgco2e = max_kwh, max_usd, max_kgco2e
        self.action = action
        self.reason: str | None = None
        """Why the guard stopped the fit (``stop``) or warned (``warn``); None while within."""
        self.epoch_growth_j: list[float] = []
        """How much the run's total energy grew in each training epoch seen (end to end)."""
        self._last_total_j = 0.0
        self._energy_cb: Any = None
        self._config: Any = None  # the configuration in force, loaded at the first projection
        self._errors: set[str] = set()

    @property
    def limits(self) -> dict[str, float]:
        """``{"kwh"|"usd"|"kgco2e": limit}`` for the budgets that are set."""
        pairs = (("kwh", self.max_kwh), ("usd", self.max_usd), ("kgco2e", self.max_kgco2e))
        return {name: float(limit) for name, limit in pairs if limit is not None}

    @property
    def state_key(self) -> str:
        return self._generate_state_key(  # type: ignore[attr-defined]
            max_kwh=self.max_kwh,
            max_usd=self.max_usd,
            max_kgco2e=self.max_kgco2e,
            action=self.action,
        )

    def state_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "epoch_growth_j": list(self.epoch_growth_j)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.reason = state_dict.get("reason")
        self.epoch_growth_j = [float(j) for j in state_dict.get("epoch_growth_j", [])]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_energy_cb"] = None  # found again at setup
        state["_config"] = None  # loaded again when needed
        return state

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        from lightning_callbacks.energy import EnergyCallback

        found = [cb for cb in trainer.callbacks if isinstance(cb, EnergyCallback)]
        if len(found) != 1:
            exceptions = importlib.import_module(f"{namespace_of(trainer)}.utilities.exceptions")
            raise exceptions.MisconfigurationException(
                f"BudgetGuard reads the numbers of one EnergyCallback in the same Trainer; found "
                f"{len(found)}: use Trainer(callbacks=[EnergyCallback(...), BudgetGuard(...)])"
            )
        self._energy_cb = found[0]
        self._config = None  # each Trainer call prices with the configuration then in force

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._last_total_j = self._energy_cb.energy_j  # what a resumed run had already spent

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        cb = self._energy_cb
        cb.flush(trainer)
        self.epoch_growth_j.append(cb.energy_j - self._last_total_j)
        self._last_total_j = cb.energy_j
        try:
            message = self._crossing(trainer, cb)
        except Exception as err:  # e.g. a GPU the price table does not know: never stop training
            message = None
            self._warn_once(trainer, f"BudgetGuard cannot project the budget (not enforced): {err}")
        if trainer.world_size > 1:  # every rank follows rank 0
            message = trainer.strategy.broadcast(message, src=0)
        if message is None:
            return
        if self.action == "stop":
            trainer.should_stop = True
            self.reason = message
            cb.record_reason(message)
            rank_zero_info(trainer, message)
        elif self.reason is None:
            self.reason = message
            if trainer.is_global_zero:
                rank_zero = importlib.import_module(f"{namespace_of(trainer)}.utilities.rank_zero")
                rank_zero.rank_zero_warn(message)

    def _warn_once(self, trainer: Any, message: str) -> None:
        if message not in self._errors and trainer.is_global_zero:
            self._errors.add(message)
            log.warning("%s", message)

    def _crossing(self, trainer: Any, cb: Any) -> str | None:
        """Why the guard acts now, or None: ``stop`` looks at the next epoch, ``warn`` at the
        whole fit."""
        from wattwise.estimate import steady_state

        seconds = cb.epoch_duration_s[-len(self.epoch_growth_j) :]
        if len(seconds) != len(self.epoch_growth_j):
            return None
        # An epoch that added no energy was not measured (the EnergyCallback has warned why):
        # the rate comes from the others, rather than the guard giving up for the whole fit.
        measured = [(s, j) for s, j in zip(seconds, self.epoch_growth_j, strict=True) if j > 0]
        if len(measured) < len(seconds):
            first = next(i for i, j in enumerate(self.epoch_growth_j) if j <= 0)
            self._warn_once(  # once: the first such epoch names the message
                trainer,
                f"BudgetGuard: epoch {first + 1} of this fit added no measured energy; epochs "
                "like it are left out of the rate the budget is projected with",
            )
        if not measured:
            return None
        steady = steady_state([s for s, _ in measured], [j for _, j in measured])
        done = int(trainer.current_epoch) + 1
        max_epochs = trainer.max_epochs
        bounded = max_epochs is not None and max_epochs >= 0
        remaining = max_epochs - done if bounded else 1
        if remaining <= 0:
            return None
        so_far_j, so_far_s = cb.energy_j, sum(cb.epoch_duration_s)
        if self.action == "stop":  # the next epoch
            epochs, when = 1, f"after epoch {done + 1}"
        else:  # the whole fit
            epochs, when = remaining, f"by the end ({max_epochs} epochs)" if bounded else ""
        figures = self._figures(
            cb,
            so_far_j + epochs * steady.joules_per_epoch,
            so_far_s + epochs * steady.seconds_per_epoch,
        )
        over = [name for name, limit in self.limits.items() if figures[name] > limit]
        if not over:
            return None
        details = "; ".join(
            f"{figures[n]:.4g} {_UNITS[n]} > max {self.limits[n]:g} {_UNITS[n]}" for n in over
        )
        verb = "stopped after" if self.action == "stop" else "warning at"
        return (
            f"BudgetGuard {verb} epoch {done}: at the steady rate of "
            f"{steady.joules_per_epoch:.4g} J per epoch the run would reach {details} {when}"
        ).rstrip()

    def _figures(self, cb: Any, energy_j: float, duration_s: float) -> dict[str, float]:
        """The budgeted figures of a run of ``energy_j`` over ``duration_s`` (only those set),
        priced like the callback's own figures: its region and pricing, else the configuration."""
        figures = {"kwh": j_to_kwh(energy_j)}
        if self.max_usd is None and self.max_kgco2e is None:
            return figures
        from lightning_callbacks.energy import _money_scenario, _priced_gpus
        from wattwise import carbon, config, pricing

        settings = self._config = self._config or config.load()
        region, scenario = _money_scenario(cb.region, cb.pricing, settings)
        if self.max_usd is not None:
            gpu_name, n_gpus = _priced_gpus(cb.devices.values())
            cost = pricing.cost(
                energy_j,
                duration_s,
                scenario=scenario,
                gpu_name=gpu_name,
                n_gpus=n_gpus,
                settings=settings,
            )
            figures["usd"] = cost.total_usd
        if self.max_kgco2e is not None:
            intensity = carbon.intensity(region, settings)
            pue = carbon.pue(scenario, settings)
            figures["kgco2e"] = carbon.co2e_kg(energy_j, intensity, pue)
        return figures


class BudgetGuard(_BudgetLogic, *callback_bases()):  # type: ignore[misc]
    """Stop (``action="stop"``) or warn (``action="warn"``) before a fit exceeds its budget.

    ``Trainer(callbacks=[EnergyCallback(...), BudgetGuard(max_kwh=2.0)])``. Budgets: ``max_kwh``
    (device energy before PUE), ``max_usd`` (the EnergyCallback's pricing scenario), ``max_kgco2e``
    (its region); at least one. After each training epoch the guard projects the next epoch and
    the whole fit from the steady epoch rate; ``stop`` ends the fit (on every rank) before the
    next epoch would cross a budget and records why in the ledger; ``warn`` warns once when the
    whole fit is projected to cross one. ``guard.reason`` says what happened.
    """
