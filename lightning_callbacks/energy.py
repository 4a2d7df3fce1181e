"""``EnergyCallback``: the drop-in Lightning callback that measures a fit and records it.

How it measures: at ``setup`` each process starts a :class:`wattwise.Meter` for what it should
measure (see *Distributed* below); hooks only mark stage boundaries (``meter.mark(stage)``, a clock
read); at each training epoch end the phases are collected without waiting
(``meter.collect_nowait()``), gathered to every rank, added to the totals and written by global
rank 0 to the ledger in one transaction (``add_phases`` with the epoch index and an architecture
snapshot). A phase whose end the energy counter has not passed yet (NVML updates it every
~0.1 s) is counted and written provisional (flag ``provisional``) and settled in place at the
next commit, so the training thread never waits for a sensor. ``teardown`` stops the meter,
writes the tail, settles what is left and finishes the run.

Phases: ``train``, ``validate``, ``test``, ``predict``, ``sanity_check``, ``baseline`` (the idle
measurement of ``baseline="idle"``) and ``other`` (set-up, data-loader start, checkpoint saving:
time inside the call but outside those), so the phases of a fit add up to the whole fit. Rows of
training epoch *i* hold everything since the end of epoch *i-1* (epoch 0: since set-up); the tail
after the last epoch and stand-alone ``validate``/``test``/``predict`` rows have ``epoch=None``.

Distributed: on a CUDA Trainer each rank measures the GPU it trains on (its ``root_device``);
GPUs no rank trains on (a CPU Trainer on a GPU host, a replayed trace), the CPU and the RAM are
measured by local rank 0 of each node. GPUs are de-duplicated by UUID; host devices of node *k* >
0 get ``@node<k>`` appended to their id. Totals are identical on every rank (so a budget decision
agrees); only global rank 0 writes the ledger and prints the summary.

Nothing here raises into training: a failure inside a hook becomes one logged warning (rank 0)
and the flag ``callback_error`` on the run; only bad constructor arguments and a ledger that
cannot be opened at ``setup`` raise (:class:`wattwise.errors.BadInput`).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from lightning_callbacks import _live
from lightning_callbacks._compat import (
    batch_size,
    callback_bases,
    rank_zero_info,
    read_checkpoint,
)
from wattwise import units
from wattwise._safe_text import printable
from wattwise.errors import BadInput, UnknownHardware
from wattwise.pricing import priced_gpus as _priced_gpus  # BudgetGuard imports it from here
from wattwise.types import DEVICE_KINDS, ArchSnapshot, DeviceInfo, PhaseEnergy

log = logging.getLogger(__name__)

CPU_MODES = ("machine", "process")
BASELINES = ("idle",)
IDLE_BASELINE_S = 1.0
"""How long ``baseline="idle"`` measures before the fit (the GPU has not been used yet)."""
CHECKPOINT_STAMP = "wattwise_run_id"
"""Key under which every checkpoint saved with the callback carries the run id (lineage)."""
STATE_VERSION = 1
OWN_METRICS = ("energy/", "power/", "cost/", "carbon/")
"""Prefixes of the metrics the callback logs (not stored again as the run's final metrics)."""
_RUNTIME_ATTRS = ("_meter", "_ledger", "_config", "_metrics", "_fitted_module")
"""Live objects (sampler thread, SQLite connection, loaded settings, metrics server, a weak
reference to the module last fitted): never pickled or copied."""

_F = TypeVar("_F", bound=Callable[..., Any])


def _guarded(hook: _F) -> _F:
    """Run a hook body so that no exception reaches training: it becomes a warning and a flag."""

    @functools.wraps(hook)
    def wrapper(self: _EnergyLogic, trainer: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return hook(self, trainer, *args, **kwargs)
        except Exception as err:
            self._fault(trainer, hook.__name__, err)
            return None

    return wrapper  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class _RankReport:
    """What one process contributes at a commit (pickled for ``all_gather_object``)."""

    node_rank: int
    phases: tuple[_Entry, ...]
    """Final phases not counted before, then provisional ones (see ``_Entry``)."""
    devices: tuple[DeviceInfo, ...]
    train_samples: int | None = None
    """Training samples this rank processed in the epoch (None: unknown, or not an epoch)."""
    warnings: tuple[str, ...] = ()
    """Warnings this rank raised since its last report (rank 0 logs those it has not itself)."""
    flags: frozenset[str] = frozenset()
    """This rank's ``callback_error`` (a hook failed here), for every rank's flags."""
    peak_mem_gib: float | None = None
    """This rank's ``torch.cuda.max_memory_allocated`` on its root device, GiB (None: not CUDA)."""
    peak_mem_reserved_gib: float | None = None
    """The same for ``max_memory_reserved`` (what the caching allocator held)."""


@dataclass(frozen=True)
class _Entry:
    """A phase and where it belongs: its training epoch (None: the tail after the last epoch,
    or a stand-alone validate/test/predict call), whether it lies inside that epoch's own span
    (from ``on_train_epoch_start`` on, for the epoch's energy and mean power), and whether its
    energy is provisional (its end boundary not yet settled by the counter's next update)."""

    phase: PhaseEnergy
    epoch: int | None
    in_epoch: bool
    provisional: bool = False


class _EnergyLogic:
    """All of EnergyCallback's behaviour; the public class adds the Lightning ``Callback`` bases."""

    def __init__(
        self,
        ledger: Any = None,
        architecture: str | None = None,
        parent: str | os.PathLike[str] | None = None,
        sample_hz: float = 10,
        region: str | None = None,
        pricing: str | None = None,
        cpu_mode: str = "machine",
        sync_cuda: bool = False,
        log_metrics: bool = True,
        baseline: str | None = None,
        tags: Iterable[str] = (),
        metrics_port: int | str | None = None,
        pushgateway: str | None = None,
    ) -> None:
        self._ledger = None
        if ledger is None or isinstance(ledger, str | os.PathLike):
            self._ledger_path = None if ledger is None else os.fspath(ledger)
        elif hasattr(ledger, "begin_run") and hasattr(ledger, "path"):
            self._ledger = ledger
            self._ledger_path = getattr(ledger, "location_text", None) or os.fspath(ledger.path)
        else:
            raise BadInput(
                f"ledger={ledger!r}: expected None (default ledger), a path or a wattwise.Ledger"
            )
        if architecture is not None and (not isinstance(architecture, str) or not architecture):
            raise BadInput(
                f"architecture={architecture!r}: expected a non-empty label or None "
                "(the LightningModule's class name)"
            )
        if parent is not None and not isinstance(parent, str | os.PathLike):
            raise BadInput(f"parent={parent!r}: expected a run id, a checkpoint path or None")
        if isinstance(parent, os.PathLike) or (
            isinstance(parent, str) and (parent.endswith(".ckpt") or os.sep in parent)
        ):
            if not os.path.isfile(parent):
                raise BadInput(f"parent={os.fspath(parent)!r}: no such checkpoint file")
            parent = os.fspath(parent)
        if isinstance(sample_hz, bool) or not isinstance(sample_hz, int | float):
            raise BadInput(f"sample_hz={sample_hz!r}: expected a number of samples per second")
        if not 0 < sample_hz <= 1000:
            raise BadInput(f"sample_hz={sample_hz!r}: expected 0 < sample_hz <= 1000 (default 10)")
        for name, value in (("region", region), ("pricing", pricing)):
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise BadInput(f"{name}={value!r}: expected a non-empty string or None")
        _check_region_pricing(region, pricing)
        if cpu_mode not in CPU_MODES:
            raise BadInput(f"cpu_mode={cpu_mode!r}: expected one of {', '.join(CPU_MODES)}")
        if baseline is not None and baseline not in BASELINES:
            raise BadInput(f"baseline={baseline!r}: expected None or 'idle'")
        if isinstance(tags, str) or not all(isinstance(tag, str) for tag in tags):
            raise BadInput(f"tags={tags!r}: expected an iterable of strings, e.g. ('sweep-3',)")
        self.architecture = architecture
        self.parent = parent
        self.sample_hz = float(sample_hz)
        self.region = region
        self.pricing = pricing
        self.cpu_mode = cpu_mode
        self.sync_cuda = bool(sync_cuda)
        self.log_metrics = bool(log_metrics)
        self.baseline = baseline
        self.tags = tuple(tags)
        self.metrics_port, self.pushgateway = _live.check(metrics_port, pushgateway)
        # Results, carried by state_dict (plain numbers) so a resumed fit continues them.
        self.run_id: str | None = None
        self.epochs_completed = 0
        self.epoch_energy_j: list[float] = []
        self.epoch_duration_s: list[float] = []
        self.epoch_metrics: list[dict[str, float]] = []
        self.epoch_train_samples: list[int | None] = []
        self.energy_by_kind_j: dict[str, float] = {"gpu": 0.0, "cpu": 0.0, "ram": 0.0}
        self.duration_s = 0.0
        self.energy_above_idle_j = 0.0
        self.idle_power_w: dict[str, float] = {}
        self.flags: set[str] = set()
        self.methods: dict[str, str] = {}
        self.devices: dict[str, DeviceInfo] = {}
        self.metrics: dict[str, float] = {}
        self.summary: dict[str, Any] = {}
        # CUDA only: the largest torch.cuda.max_memory_allocated / _reserved of any rank, GiB
        self.peak_mem_gib: float | None = None
        self.peak_mem_reserved_gib: float | None = None
        self._reason: str | None = None
        self._warned: set[str] = set()
        self._outbox: list[str] = []  # a non-zero rank's warnings, sent with its next report
        self._stamp: str | None = None  # run id in the checkpoint this call loaded
        self._fitted_module: Any = None  # weakref to the LightningModule of the last fit
        self._weights_of: str | None = None  # run whose trained module this fit starts from
        self._unsettled: list[list[Any]] = []  # provisional phases in the checkpoint loaded
        self._meter = None
        self._config = None
        self._metrics = None  # the node's live metrics exporter (local rank 0)
        self._reset_call_state()

    def _reset_call_state(self) -> None:
        """State of one Trainer call (fit / validate / test / predict)."""
        self._stage: str | None = None
        self._label: str | None = None
        self._n_marks = 0
        self._epoch_start_index: int | None = None
        self._closes: list[tuple[int, int, int]] = []  # (end index, epoch, start index)
        self._epoch_start_s: float | None = None
        self._call_start_s: float | None = None
        self._call_end_s: float | None = None
        self._run_open = False
        self._global_zero = True
        self._pending: list[PhaseEnergy] = []  # collected early (idle baseline), not yet counted
        self._n_counted = 0  # final phases of the meter counted: the first of its stop().phases
        # (phase index, merged device id) -> the provisional phase counted for it so far
        self._provisional: dict[tuple[int, str], _Entry] = {}
        self._history: dict[str, list[tuple[float, float]]] = {}
        self._epoch_samples: int | None = 0  # this rank's training samples in the epoch
        self._epoch_shape: dict[str, int] = {}  # batches and optimizer steps per epoch (fit)
        self._facts_written: dict[str, Any] = {}  # run settings this call wrote (rank 0)

    # ----------------------------------------------------------------- public numbers
    @property
    def energy_j(self) -> float:
        """Cumulative device energy so far (all ranks, all devices, before PUE), in J."""
        return sum(self.energy_by_kind_j.values())

    @property
    def metrics_url(self) -> str | None:
        """``http://HOST:PORT/metrics`` while this process serves live metrics (local rank 0)."""
        return self._metrics.url if self._metrics is not None else None

    @property
    def state_key(self) -> str:
        from wattwise.ledger.location import mask

        # the key is written into checkpoints: a server URL's password stays out of it
        ledger = None if self._ledger_path is None else mask(self._ledger_path)
        return self._generate_state_key(  # type: ignore[attr-defined]
            ledger=ledger, architecture=self.architecture, tags=self.tags
        )

    def record_reason(self, reason: str) -> None:
        """Keep a reason (e.g. BudgetGuard's stop reason), stored in the ledger at the end."""
        self._reason = str(reason)

    # ----------------------------------------------------------------- pickling
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in _RUNTIME_ATTRS:
            state[name] = None
        return state

    # ----------------------------------------------------------------- resume
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "run_id": self.run_id,
            "epochs_completed": self.epochs_completed,
            "epoch_energy_j": list(self.epoch_energy_j),
            "epoch_duration_s": list(self.epoch_duration_s),
            "epoch_metrics": [dict(m) for m in self.epoch_metrics],
            "epoch_train_samples": list(self.epoch_train_samples),
            "energy_by_kind_j": dict(self.energy_by_kind_j),
            "duration_s": self.duration_s,
            "energy_above_idle_j": self.energy_above_idle_j,
            "idle_power_w": dict(self.idle_power_w),
            "flags": sorted(self.flags),
            "methods": dict(self.methods),
            "peak_mem_gib": self.peak_mem_gib,
            "peak_mem_reserved_gib": self.peak_mem_reserved_gib,
            # counted with their provisional energy: settled from the ledger on resume
            "provisional": [
                *self._unsettled,  # restored, not yet settled (the run has not begun again)
                *(_unsettled_row(e) for e in self._provisional.values()),
            ],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.run_id = state_dict.get("run_id", self.run_id)
        self.epochs_completed = int(state_dict.get("epochs_completed", 0))
        self.epoch_energy_j = [float(x) for x in state_dict.get("epoch_energy_j", [])]
        self.epoch_duration_s = [float(x) for x in state_dict.get("epoch_duration_s", [])]
        # a checkpoint from before these lists: its epochs have no metrics and unknown counts
        missing = len(self.epoch_energy_j) - len(state_dict.get("epoch_train_samples", []))
        self.epoch_metrics = [{}] * max(0, missing) + [
            {str(k): float(v) for k, v in m.items()} for m in state_dict.get("epoch_metrics", [])
        ]
        self.epoch_train_samples = [None] * max(0, missing) + [
            None if n is None else int(n) for n in state_dict.get("epoch_train_samples", [])
        ]
        by_kind = state_dict.get("energy_by_kind_j", {})
        self.energy_by_kind_j = {k: float(by_kind.get(k, 0.0)) for k in ("gpu", "cpu", "ram")}
        self.duration_s = float(state_dict.get("duration_s", 0.0))
        self.energy_above_idle_j = float(state_dict.get("energy_above_idle_j", 0.0))
        self.idle_power_w = {k: float(v) for k, v in state_dict.get("idle_power_w", {}).items()}
        self.flags = set(state_dict.get("flags", []))
        self.methods = dict(state_dict.get("methods", {}))
        self.peak_mem_gib = _max_gib(None, state_dict.get("peak_mem_gib"))
        self.peak_mem_reserved_gib = _max_gib(None, state_dict.get("peak_mem_reserved_gib"))
        self._unsettled = [list(row) for row in state_dict.get("provisional", [])]

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        if self.run_id is not None:
            checkpoint[CHECKPOINT_STAMP] = self.run_id

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        self._stamp = checkpoint.get(CHECKPOINT_STAMP)

    # ----------------------------------------------------------------- set-up and run
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        # Misconfiguration raises here, before any training; everything later only warns.
        # Every rank checks the ledger file (a read, no write), so all of them stop together.
        self._global_zero = bool(trainer.is_global_zero)
        self._open_ledger()
        self._stamp = None  # set again by on_load_checkpoint (after setup) for this call
        if stage == "fit":
            self._new_fit(pl_module)
        self._start(trainer, stage)

    def _new_fit(self, pl_module: Any) -> None:
        """Every fit starts a new run, unless Lightning restores this callback's state from
        the checkpoint of ``fit(ckpt_path=...)`` (``load_state_dict``, called after ``setup``
        and before ``on_fit_start``), which brings back the run to continue. So a callback used
        for a second fit (a new Trainer, no ``ckpt_path``) records a second run; when that fit
        trains the same LightningModule object further, its parent is the first run (it starts
        from that run's weights). ``test/validate/predict`` keep the run (no reset there)."""
        last = self._fitted_module() if self._fitted_module is not None else None
        self._weights_of = self.run_id if self.run_id is not None and last is pl_module else None
        self._fitted_module = _weak(pl_module)
        self.run_id = None
        self._forget_unrecorded()
        self.idle_power_w, self.flags, self.methods = {}, set(), {}
        self.devices, self.metrics, self.summary = {}, {}, {}
        self.peak_mem_gib = self.peak_mem_reserved_gib = None
        self._reason = None
        self._unsettled = []

    @_guarded
    def _start(self, trainer: Any, stage: str) -> None:
        if self._meter is not None:  # a call that ended without teardown (should not happen)
            self._meter.stop()
            self._meter = None
        self._reset_call_state()
        self._global_zero = bool(trainer.is_global_zero)
        self._stage = stage
        layout = _meter_layout(trainer)
        if layout is None:
            self._call_start_s = time.monotonic()
            return
        from wattwise.meter import Meter

        gpus, measure_host = layout
        meter = Meter(
            sample_hz=self.sample_hz, cpu_mode=self.cpu_mode, gpus=gpus, measure_host=measure_host
        )
        first = "baseline" if self.baseline == "idle" and stage == "fit" else "other"
        meter.start(first)
        self._call_start_s = time.monotonic()  # the measured span starts here
        self._meter, self._label, self._n_marks = meter, first, 0
        self._guard(trainer, "live metrics", _live.attach, self, trainer, meter)

        if first == "baseline":
            time.sleep(IDLE_BASELINE_S)
            self._mark(trainer, "other")

    def _open_ledger(self) -> Any:
        if self._ledger is None:
            from wattwise.ledger import Ledger

            self._ledger = Ledger(self._ledger_path)
        return self._ledger

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self._begin(trainer, pl_module)

    def _begin(self, trainer: Any, pl_module: Any) -> None:
        """Open the run (new, resumed or reopened) on rank 0 and share its id with every rank."""
        if self._run_open:
            return
        self._run_open = True
        if self._stage == "fit" and self.baseline == "idle":
            self._collect_idle(trainer)
        fresh = self.run_id is None  # the same on every rank: ids only come from broadcasts
        opened = self._guard(trainer, "begin run", self._begin_on_rank_zero, trainer, pl_module)
        run_id, totals, settled = _broadcast(trainer, opened or (self.run_id, None, {}))
        if fresh and run_id is not None:
            self._forget_unrecorded()
        self.run_id = run_id
        if totals is not None:
            self.energy_by_kind_j = {kind: float(totals.get(kind, 0.0)) for kind in DEVICE_KINDS}
            self.duration_s = float(totals.get("duration_s", self.duration_s))
        for epoch, delta_j in settled.items():
            if 0 <= epoch < len(self.epoch_energy_j):
                self.epoch_energy_j[epoch] += delta_j
        self._unsettled = []
        self._guard(trainer, "live metrics", _live.set_run, self, trainer, pl_module)

    def _forget_unrecorded(self) -> None:
        """A new run starts from zero: drop what earlier calls counted without a run to write
        it to (a Trainer call that never reached ``on_fit_start``, e.g. ``Tuner.lr_find``,
        which also restores the trainer afterwards), so that the totals, the summary and
        BudgetGuard's figures are those of the run in the ledger. Nothing of this call has
        been counted yet (its first commit comes after this)."""
        self.epochs_completed = 0
        self.epoch_energy_j, self.epoch_duration_s = [], []
        self.epoch_metrics, self.epoch_train_samples = [], []
        self.energy_by_kind_j = dict.fromkeys(DEVICE_KINDS, 0.0)
        self.energy_above_idle_j = 0.0
        self.duration_s = 0.0

    def _collect_idle(self, trainer: Any) -> None:
        """Idle power per device from the ``baseline`` phase; the phase is counted later."""
        local: dict[str, float] = {}
        if self._meter is not None:
            self._pending = self._guard(trainer, "idle baseline", self._meter.collect) or []
            node = int(trainer.node_rank)
            for phase in self._pending:
                if phase.name == "baseline" and phase.duration_s > 0:
                    device_id = _node_device_id(phase.device_id, phase.kind, node)
                    local[device_id] = phase.energy_j / phase.duration_s
        for idle_w in _gather(trainer, local):
            self.idle_power_w.update(idle_w)
        self.flags.add("idle_baseline")

    def _begin_on_rank_zero(
        self, trainer: Any, pl_module: Any
    ) -> tuple[str, dict[str, float] | None, dict[int, float]] | None:
        """(run id, energy totals (and ``duration_s``) to continue from or None, per-epoch
        corrections); None on other ranks.

        A run this callback already has (restored from a checkpoint, or an earlier call) is
        reopened, even a finished one, and its totals are taken from the ledger: they include
        what was measured after the checkpoint was saved (the tail of the interrupted fit). A
        run the ledger does not know (a checkpoint moved to another machine) is recorded anew
        under the same id, its totals taken from the checkpoint. The epochs of a resumed run
        whose last phases the checkpoint holds provisional get the difference to the rows the
        ledger settled afterwards.
        """
        if not self._global_zero:
            return None
        ledger = self._open_ledger()
        if self.run_id is not None:
            try:
                known = ledger.get_run(self.run_id)
            except BadInput:
                known = None
            if known is not None:
                ledger.reopen_run(self.run_id)
                # the run's peak so far (its tail after the checkpoint may have raised it)
                had = known.settings or {}
                self._note_peaks(had.get("peak_mem_gib"), had.get("peak_mem_reserved_gib"))
                settled = self._settled_since_checkpoint(ledger)
                # the time fitted so far too (pauses before a resume left out): a checkpoint
                # saved inside a call holds none of that call's time
                totals = dict(known.energy_by_kind_j)
                if known.duration_s is not None:
                    totals["duration_s"] = known.duration_s
                return self.run_id, totals, settled
        devices = list(self._meter.devices) if self._meter is not None else []
        region, pricing = self._guard(trainer, "settings", self._region_pricing) or (
            self.region,
            self.pricing,
        )
        run_id = ledger.begin_run(
            architecture=self._architecture(pl_module),
            run_id=self.run_id,
            parent_run_id=None if self.run_id else self._parent_run_id(),
            tags=self.tags,
            settings=self._settings(trainer),
            region=region,
            pricing=pricing,
            devices=devices,
            versions=_versions(trainer),
        )
        return run_id, None, {}

    def _region_pricing(self) -> tuple[str | None, str | None]:
        """The region and pricing scenario the run is priced with: the arguments, else the
        configuration in force (``WATTWISE_REGION`` / ``WATTWISE_PRICING`` / wattwise.toml),
        recorded with the run so that a report made later elsewhere prices it the same way;
        None where neither argument nor configuration sets one (the default applies)."""
        from wattwise import config

        settings = self._config = self._config or config.load()
        region, scenario = _money_scenario(self.region, self.pricing, settings)
        pricing_set = self.pricing is not None or settings.source("pricing") != "default"
        return region, scenario if pricing_set else None

    def _settled_since_checkpoint(self, ledger: Any) -> dict[int, float]:
        """epoch -> settled minus provisional energy of the checkpoint's provisional phases."""
        if not self._unsettled:
            return {}
        rows = ledger.phases(self.run_id)
        stored = {
            (r.device_id, r.stage, r.start_s, r.end_s): float(r.energy_j)
            for r in rows.itertuples(index=False)
        }
        out: dict[int, float] = {}
        for epoch, in_epoch, device_id, stage, start_s, end_s, energy_j in self._unsettled:
            now_j = stored.get((device_id, stage, start_s, end_s))
            if now_j is not None and in_epoch and epoch is not None:
                out[int(epoch)] = out.get(int(epoch), 0.0) + now_j - float(energy_j)
        return out

    def _parent_run_id(self) -> str | None:
        if self.parent is None:
            return self._stamp or self._weights_of
        if os.path.isfile(self.parent):
            try:
                stamp = read_checkpoint(self.parent).get(CHECKPOINT_STAMP)
            except Exception as err:  # unreadable: the run is still recorded, without a parent
                stamp, why = None, f"cannot be read ({type(err).__name__}: {err})"
            else:
                why = "carries no wattwise run id"
            if stamp is None:
                self._warn_once(
                    f"wattwise: parent checkpoint {self.parent} {why}; "
                    "the run is recorded without a parent"
                )
            return stamp
        return os.fspath(self.parent)

    def _architecture(self, pl_module: Any) -> str:
        return self.architecture or type(pl_module).__name__

    def _settings(self, trainer: Any) -> dict[str, Any]:
        settings: dict[str, Any] = {
            "sample_hz": self.sample_hz,
            "cpu_mode": self.cpu_mode,
            "sync_cuda": self.sync_cuda,
            "baseline": self.baseline,
            "stage": self._stage,
            "strategy": type(trainer.strategy).__name__,
            "world_size": trainer.world_size,
            "num_nodes": trainer.num_nodes,
            "precision": str(trainer.precision),
        }
        if self.idle_power_w:
            settings["idle_power_w"] = dict(self.idle_power_w)
        settings.update(self._run_facts())  # a run recorded anew from a moved checkpoint
        return settings

    def _run_facts(self) -> dict[str, Any]:
        """Settings learned while the run goes on: batches and optimizer steps per training
        epoch (as of the last committed epoch), and on CUDA the peak memory of every rank."""
        facts: dict[str, Any] = dict(self._epoch_shape)
        if self.peak_mem_gib is not None:
            facts["peak_mem_gib"] = self.peak_mem_gib
        if self.peak_mem_reserved_gib is not None:
            facts["peak_mem_reserved_gib"] = self.peak_mem_reserved_gib
        return facts

    def _note_peaks(self, allocated_gib: Any, reserved_gib: Any) -> None:
        """Keep the larger peaks (figures from a ``_RankReport`` or a run's settings)."""
        self.peak_mem_gib = _max_gib(self.peak_mem_gib, allocated_gib)
        self.peak_mem_reserved_gib = _max_gib(self.peak_mem_reserved_gib, reserved_gib)

    def _write_facts(self) -> None:
        """Merge ``_run_facts`` into the run's settings (rank 0), only when they changed."""
        facts = self._run_facts()
        if facts and facts != self._facts_written:
            self._open_ledger().update_settings(self.run_id, facts)
            self._facts_written = facts

    # ----------------------------------------------------------------- boundaries
    def _mark(self, trainer: Any, label: str) -> None:
        """Start a new phase now: a clock read in the Meter, never a sensor read."""
        self._label = label
        if self._meter is None:
            return
        if self.sync_cuda and trainer.strategy.root_device.type == "cuda":
            import torch

            torch.cuda.synchronize(trainer.strategy.root_device)
        self._meter.mark(label)
        self._n_marks += 1

    @_guarded
    def on_sanity_check_start(self, trainer: Any, pl_module: Any) -> None:
        self._mark(trainer, "sanity_check")

    @_guarded
    def on_sanity_check_end(self, trainer: Any, pl_module: Any) -> None:
        self._mark(trainer, "other")

    @_guarded
    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._open_epoch(trainer, "other")

    def _open_epoch(self, trainer: Any, label: str) -> None:
        """A training epoch starts now, with a phase named ``label``."""
        self._epoch_samples = 0
        self._mark(trainer, label)
        self._epoch_start_index = self._n_marks
        self._epoch_start_s = time.monotonic()

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, idx: int) -> None:
        if self._label != "train":  # once per epoch (and after a mid-epoch validation)
            self._guard(trainer, "on_train_batch_start", self._train_batch_start, trainer)

    def _train_batch_start(self, trainer: Any) -> None:
        if self._epoch_start_s is None:
            # An epoch resumed from a checkpoint saved inside it: Lightning does not call
            # on_train_epoch_start for it, but ends it, so it opens here.
            self._open_epoch(trainer, "train")
        else:
            self._mark(trainer, "train")

    @_guarded
    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Count the batch's samples (tensor shapes only: no device sync, no ``.item()``)."""
        if self._epoch_samples is None:  # already unknown for this epoch
            return
        size = batch_size(trainer, batch)
        if size is None:
            self._epoch_samples = None
            self._warn_once(
                f"wattwise: cannot tell how many samples a training batch of type "
                f"{type(batch).__name__} holds (no tensor, or tensors whose first dimensions "
                "differ); the epoch's sample count and J per training sample stay unknown"
            )
        else:
            self._epoch_samples += size

    @_guarded
    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        if self._stage != "fit":
            self._begin(trainer, pl_module)
        if not trainer.sanity_checking:
            self._mark(trainer, "validate")

    @_guarded
    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self._mark(trainer, "other")

    @_guarded
    def on_test_start(self, trainer: Any, pl_module: Any) -> None:
        self._begin(trainer, pl_module)
        self._mark(trainer, "test")

    @_guarded
    def on_test_end(self, trainer: Any, pl_module: Any) -> None:
        self._mark(trainer, "other")

    @_guarded
    def on_predict_start(self, trainer: Any, pl_module: Any) -> None:
        self._begin(trainer, pl_module)
        self._mark(trainer, "predict")

    @_guarded
    def on_predict_end(self, trainer: Any, pl_module: Any) -> None:
        self._mark(trainer, "other")

    # ----------------------------------------------------------------- epoch commit
    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.flush(trainer)

    def flush(self, trainer: Any) -> None:
        """Integrate and count the training epoch that just ended; idempotent.

        Every rank must call it (it gathers); BudgetGuard calls it before reading the numbers.
        """
        if self._epoch_start_s is None:
            return
        duration_s = time.monotonic() - self._epoch_start_s
        self._epoch_start_s = None
        local = self._guard(trainer, "flush", self._local_report, trainer, True)
        reports = _gather(trainer, local)
        self._guard(trainer, "flush", self._commit, trainer, reports, duration_s, False)

    def _local_report(self, trainer: Any, close_epoch: bool) -> _RankReport | None:
        samples = self._epoch_samples if close_epoch else None
        peaks = self._guard(trainer, "peak memory", _cuda_peak_gib, trainer) or (None, None)
        # The largest peak this rank knows, not only its own device's: after a resume rank 0
        # alone has read the run's ledger peak, and this is how the other ranks learn it.
        own = {
            "peak_mem_gib": _max_gib(self.peak_mem_gib, peaks[0]),
            "peak_mem_reserved_gib": _max_gib(self.peak_mem_reserved_gib, peaks[1]),
            "warnings": tuple(self._outbox),
            "flags": frozenset(self.flags & {"callback_error"}),
        }
        self._outbox = []
        if self._meter is None:  # measures nothing, but its training samples count
            return _RankReport(int(trainer.node_rank), (), (), train_samples=samples, **own)
        provisional: list[PhaseEnergy] = []
        if close_epoch:
            self._mark(trainer, "other")
            self._closes.append((self._n_marks, self.epochs_completed, self._epoch_start_index))
            self._epoch_start_index = None
            # No wait for the counter's next update: the phases it has not settled yet come
            # provisional now and final at the next commit (or at the end of the call).
            final, provisional = self._meter.collect_nowait()
            phases = self._pending + list(final)
        else:
            # stop() returns every phase of the meter, those it returned before first (the
            # pending ones among them): count the rest.
            self._call_end_s = time.monotonic()
            phases = list(self._meter.stop().phases[self._n_counted :])
            self._history = self._meter.history()
        self._pending = []
        self._n_counted += len(phases)
        entries = [self._entry(p, False) for p in phases]
        entries += [self._entry(p, True) for p in provisional]
        return _RankReport(
            node_rank=int(trainer.node_rank),
            phases=tuple(entries),
            devices=tuple(self._meter.devices),
            train_samples=samples,
            **own,
        )

    def _entry(self, phase: PhaseEnergy, provisional: bool) -> _Entry:
        """The training epoch a phase of this call belongs to (see ``_Entry``)."""
        for end_index, epoch, start_index in self._closes:
            if phase.index < end_index:
                return _Entry(phase, epoch, phase.index >= start_index, provisional)
        return _Entry(phase, None, False, provisional)

    def _commit(
        self, trainer: Any, reports: Sequence[_RankReport | None], duration_s: float, tail: bool
    ) -> None:
        """Add gathered phases to the totals (every rank) and write them (rank 0).

        A provisional phase is counted as it is; when its final figures arrive (a later
        commit), the difference is added, and its ledger row is settled in place."""
        entries, devices = _merge(reports)
        self._guard(trainer, "live metrics", _live.note, self, trainer, reports)
        for rank, report in enumerate(reports):
            if report is None:
                continue
            self.flags.update(report.flags)
            self._note_peaks(report.peak_mem_gib, report.peak_mem_reserved_gib)
            for message in report.warnings:  # only other ranks send any
                if self._global_zero and message not in self._warned:
                    self._warned.add(message)
                    log.warning("rank %d: %s", rank, message)
        for device in devices:
            self.devices.setdefault(device.device_id, device)
            self.methods[device.device_id] = device.method
            self.flags.update(device.flags)
        closing = None if tail else self.epochs_completed
        closing_j = 0.0
        in_epoch: list[PhaseEnergy] = []
        fresh: list[PhaseEnergy] = []
        settle: list[tuple[int | None, PhaseEnergy]] = []
        for entry in entries:
            phase = entry.phase
            key = (phase.index, phase.device_id)
            earlier = self._provisional.pop(key, None)
            before = earlier.phase if earlier is not None else None
            if entry.provisional:
                self._provisional[key] = entry
            delta_j = phase.energy_j - (before.energy_j if before is not None else 0.0)
            self.energy_by_kind_j[phase.kind] = self.energy_by_kind_j.get(phase.kind, 0.0) + delta_j
            self.flags.update(phase.flags - {"provisional"})
            self.energy_above_idle_j += self._above_idle_j(phase) - self._above_idle_j(before)
            if entry.in_epoch and entry.epoch == closing:
                closing_j += delta_j
                in_epoch.append(phase)
            elif entry.in_epoch and entry.epoch < len(self.epoch_energy_j):  # in_epoch: an epoch
                self.epoch_energy_j[entry.epoch] += delta_j
            if before is None and entry.epoch == closing:
                fresh.append(phase)
            else:
                settle.append((entry.epoch, phase))
        if not tail:
            self.epochs_completed += 1
            self.epoch_energy_j.append(closing_j)
            self.epoch_duration_s.append(duration_s)
            self.epoch_train_samples.append(_sum_train_samples(reports))
            self.epoch_metrics.append(
                self._guard(trainer, "metrics", _scalar_metrics, trainer) or {}
            )
        pl_module = trainer.lightning_module
        if self._global_zero and self.run_id is not None:
            # guarded on its own: a failed write on rank 0 must not skip the logging below,
            # whose cross-rank reduction every rank has to join
            self._guard(
                trainer, "ledger write", self._write, pl_module, fresh, settle, devices, closing
            )
            if not tail:
                self._epoch_shape = self._guard(trainer, "epoch shape", _epoch_shape, trainer) or {}
            self._guard(trainer, "settings write", self._write_facts)
        if not tail:
            self._log_metrics(trainer, pl_module, in_epoch, duration_s)
            self._guard(trainer, "live metrics", _live.push, self)

    def _above_idle_j(self, phase: PhaseEnergy | None) -> float:
        if phase is None:
            return 0.0
        idle_w = self.idle_power_w.get(phase.device_id)
        if idle_w is None:
            return 0.0
        return max(0.0, phase.energy_j - idle_w * phase.duration_s)

    def _write(
        self,
        pl_module: Any,
        phases: Sequence[PhaseEnergy],
        settle: Sequence[tuple[int | None, PhaseEnergy]],
        devices: Sequence[DeviceInfo],
        epoch: int | None,
    ) -> None:
        """One ledger transaction: the new phases (of epoch ``epoch``, None for the tail), the
        rows of earlier provisional phases settled in place, and for an epoch its snapshot,
        metrics and training samples."""
        extra = frozenset(self.flags & {"callback_error"})

        def stamped(p: PhaseEnergy) -> PhaseEnergy:
            return replace(p, flags=p.flags | extra) if extra else p

        self._open_ledger().add_phases(
            self.run_id,
            [stamped(p) for p in phases],
            epoch=epoch,
            snapshot=None if epoch is None else _snapshot(pl_module, self._architecture(pl_module)),
            epochs_completed=self.epochs_completed,
            devices=devices,
            settle=[(e, stamped(p)) for e, p in settle],
            # the epoch's entries were appended just before this write (_commit)
            metrics=None if epoch is None else self.epoch_metrics[-1],
            train_samples=None if epoch is None else self.epoch_train_samples[-1],
        )

    # ----------------------------------------------------------------- metrics and money
    def _log_metrics(
        self, trainer: Any, pl_module: Any, in_epoch: Sequence[PhaseEnergy], duration_s: float
    ) -> None:
        if not self.log_metrics:
            return
        values: dict[str, float] = {}
        if any(d.kind == "gpu" for d in self.devices.values()):
            values["energy/gpu_wh"] = units.j_to_wh(self.energy_by_kind_j["gpu"])
            gpu_epoch_j = sum(p.energy_j for p in in_epoch if p.kind == "gpu")
            values["power/gpu_w"] = gpu_epoch_j / duration_s if duration_s > 0 else 0.0
        for kind in ("cpu", "ram"):
            if any(d.kind == kind for d in self.devices.values()):
                values[f"energy/{kind}_wh"] = units.j_to_wh(self.energy_by_kind_j[kind])
        values["energy/total_wh"] = units.j_to_wh(self.energy_j)
        money = self._guarded_money(trainer)
        if money["pricing_set"] and money["cost_usd"] is not None:
            values["cost/usd"] = money["cost_usd"]
        if money["region"] is not None and money["co2e_kg"] is not None:
            values["carbon/gco2e"] = money["co2e_kg"] * units.G_PER_KG
        distributed = trainer.world_size > 1
        for name, value in values.items():
            pl_module.log(
                name,
                float(value),
                on_step=False,
                on_epoch=True,
                prog_bar=name == "energy/total_wh",
                logger=bool(trainer.loggers),
                sync_dist=distributed,  # identical on every rank: the mean is the value
            )

    def _guarded_money(self, trainer: Any) -> dict[str, Any]:
        """``_money``, or no cost and no CO2e where it fails (e.g. a configuration file that
        became unreadable): a warning, never a run left unfinished or an epoch unlogged."""
        money = self._guard(trainer, "cost and carbon", self._money, trainer)
        return money or _no_money(self.region, self.pricing, self.pricing is not None)

    def _money(self, trainer: Any) -> dict[str, Any]:
        """Cost and CO2e of the energy so far (cumulative); None where it cannot be worked out.

        Region and pricing: the arguments, else the configuration in force
        (``WATTWISE_REGION`` / ``WATTWISE_PRICING`` / wattwise.toml). No region: the world
        average, flagged ``no_region``.
        """
        from wattwise import carbon, config, pricing

        settings = self._config = self._config or config.load()
        region, scenario = _money_scenario(self.region, self.pricing, settings)
        pricing_set = self.pricing is not None or settings.source("pricing") != "default"
        out = _no_money(region, scenario, pricing_set)
        gpu_name, n_gpus = _priced_gpus(self.devices.values())
        cost = None
        try:
            cost = pricing.cost(
                self.energy_j,
                self.duration_s + self._elapsed_s(),
                scenario=scenario,
                gpu_name=gpu_name,
                n_gpus=n_gpus,
                settings=settings,
            )
        except UnknownHardware as err:  # a GPU the price table lacks: no cost, training goes on
            self._warn_once(f"wattwise: no cost for this run: {err}")
        except Exception as err:
            self._fault(trainer, "pricing", err)
        if cost is not None:
            out["cost_usd"] = cost.total_usd
            out["flags"].update(cost.flags)
        intensity = self._guard(trainer, "carbon", carbon.intensity, region, settings)
        if intensity is not None:
            pue = cost.pue if cost is not None else carbon.pue(scenario, settings).value
            out["co2e_kg"] = carbon.co2e_kg(self.energy_j, intensity, pue)
            out["flags"].update(intensity.flags)
        return out

    def _elapsed_s(self) -> float:
        """Time of the current call so far (up to the meter's stop once it stopped)."""
        if self._call_start_s is None:
            return 0.0
        return (self._call_end_s or time.monotonic()) - self._call_start_s

    # ----------------------------------------------------------------- end of a call
    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._finish(trainer, "finished", None)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        status = "interrupted" if isinstance(exception, KeyboardInterrupt) else "failed"
        message = str(exception)
        reason = f"{type(exception).__name__}: {message}" if message else type(exception).__name__
        # No collectives here: another rank may not have failed. Rank 0 keeps what it measured.
        self._finish(trainer, status, reason, gather=False)

    def _finish(self, trainer: Any, status: str, reason: str | None, *, gather: bool = True):
        if self._call_start_s is None:  # not started here (e.g. the ddp_spawn main process)
            return
        if self._epoch_start_s is not None and status == "finished":
            self.flush(trainer)  # an epoch ended without on_train_epoch_end (should not happen)
        local = self._guard(trainer, "teardown", self._local_report, trainer, False)
        self._meter = None
        reports = _gather(trainer, local) if gather else [local]
        self._guard(trainer, "teardown", self._commit, trainer, reports, 0.0, True)
        self.duration_s += self._elapsed_s()
        self._call_start_s = None
        self._guard(trainer, "teardown", self._finish_run, trainer, status, reason)
        self._guard(trainer, "live metrics", functools.partial(_live.push, final=True), self)
        self._reset_call_state()

    def _finish_run(self, trainer: Any, status: str, reason: str | None) -> None:
        money = self._guarded_money(trainer)
        self.metrics.update(_scalar_metrics(trainer))
        self.summary = self._summary(trainer, money)
        if not self._global_zero or self.run_id is None:
            return
        ledger = self._open_ledger()
        for device_id, points in self._history.items():
            ledger.add_timeline(self.run_id, device_id, points)
        metrics = dict(self.metrics)
        if self.baseline == "idle":
            metrics["wattwise/energy_above_idle_wh"] = units.j_to_wh(self.energy_above_idle_j)
        ledger.finish_run(
            self.run_id, status=status, metrics=metrics, reason=reason or self._reason
        )
        if self._stage == "fit" and status == "finished":
            rank_zero_info(trainer, _format_summary(self.summary))

    def _summary(self, trainer: Any, money: dict[str, Any]) -> dict[str, Any]:
        flags = set(self.flags) | set(money["flags"])
        summary: dict[str, Any] = {
            "run_id": self.run_id,
            "architecture": self._architecture(trainer.lightning_module),
            "epochs": self.epochs_completed,
            "duration_s": self.duration_s,
            "energy_j": self.energy_j,
            "energy_wh": units.j_to_wh(self.energy_j),
            "energy_by_kind_wh": {k: units.j_to_wh(v) for k, v in self.energy_by_kind_j.items()},
            "cost_usd": money["cost_usd"],
            "co2e_kg": money["co2e_kg"],
            "methods": dict(self.methods),
            "flags": sorted(flags),
            "devices": sorted(f"{d.kind}: {d.name} ({d.method})" for d in self.devices.values()),
            "epoch_energy_wh": [units.j_to_wh(j) for j in self.epoch_energy_j],
            "region": money["region"],
            "pricing": money["pricing"],
        }
        if self.baseline == "idle":
            summary["idle_power_w"] = dict(self.idle_power_w)
            summary["energy_above_idle_wh"] = units.j_to_wh(self.energy_above_idle_j)
        return summary

    # ----------------------------------------------------------------- faults
    def _guard(self, trainer: Any, where: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as err:
            self._fault(trainer, where, err)
            return None

    def _fault(self, trainer: Any, where: str, err: Exception) -> None:
        self.flags.add("callback_error")
        self._warn_once(f"wattwise: {where} failed ({type(err).__name__}: {err}); training goes on")
        log.debug("wattwise hook failure in %s", where, exc_info=err)

    def _warn_once(self, message: str) -> None:
        """Log ``message`` once on global rank 0; another rank sends it with its next report,
        so a fault on any rank reaches the log and the run's flags."""
        if message in self._warned:
            return
        self._warned.add(message)
        if self._global_zero:
            log.warning(message)
        else:
            self._outbox.append(message)


class EnergyCallback(_EnergyLogic, *callback_bases()):  # type: ignore[misc]
    """Measure the energy of a Lightning fit and record it in the wattwise ledger.

    ``Trainer(callbacks=[EnergyCallback()])`` is all it takes. Arguments:

    - ``ledger``: a path or a :class:`wattwise.Ledger` (None: ``$WATTWISE_LEDGER`` or
      ``./wattwise.db``).
    - ``architecture``: the run's label (default: the LightningModule's class name).
    - ``parent``: a run id or a checkpoint path whose run this one descends from (lineage). A fit
      started from a checkpoint saved with this callback finds its parent by itself.
    - ``sample_hz``: how often power is read (the energy counter is read about once a second).
    - ``region`` / ``pricing``: carbon region (``FRA``, ``gcp:europe-west1``) and pricing scenario
      (``onprem``, ``aws:p5.48xlarge``); None: the configuration in force (``WATTWISE_REGION``,
      ``WATTWISE_PRICING``, wattwise.toml). ``carbon/gco2e`` is logged only when a region is set
      and ``cost/usd`` only when a pricing is set (argument or configuration); the summary always
      has both (no region: the world average, flagged ``no_region``).

    - ``cpu_mode``: ``machine`` (whole CPU) or ``process`` (this process's share) when the CPU is
      estimated.
    - ``sync_cuda``: synchronise CUDA at stage boundaries (never per step), so asynchronous GPU
      work is attributed to the stage that queued it.
    - ``log_metrics``: log ``energy/*``, ``power/gpu_w`` (and cost / carbon) at each epoch end.
    - ``baseline="idle"``: measure the idle power for one second before the fit and also report
      the energy above it.
    - ``tags``: labels stored with the run.
    - ``metrics_port``: serve live OpenMetrics for Prometheus on ``http://HOST:PORT/metrics``
      from local rank 0 of each node (a port, or ``HOST:PORT``; a bare port listens on every
      interface; 0: any free port, see ``metrics_url``). ``pushgateway``: ``HOST:PORT`` of a
      Pushgateway the same metrics are pushed to at each epoch end and at the end. None: the
      configuration in force (``WATTWISE_METRICS_PORT``, ``WATTWISE_PUSHGATEWAY``,
      wattwise.toml). A port in use or a gateway that does not answer is a warning; training
      goes on. See :mod:`wattwise.metrics`.

    After (and during) a fit: ``run_id``, ``summary``, ``energy_j``, ``epochs_completed``,
    ``epoch_energy_j``, ``epoch_duration_s``, ``peak_mem_gib`` (CUDA: the largest
    ``torch.cuda.max_memory_allocated`` of any rank, GiB); ``flush(trainer)`` and
    ``record_reason(reason)``. The run's settings also get ``steps_per_epoch``,
    ``batches_per_epoch`` and on CUDA ``peak_mem_gib`` / ``peak_mem_reserved_gib``, for
    ``wattwise estimate --run``.
    """


# --------------------------------------------------------------------- helpers
def _weak(obj: Any) -> Any:
    """A weak reference to ``obj``, or None where it takes none."""
    try:
        return weakref.ref(obj)
    except TypeError:
        return None


def _check_region_pricing(region: str | None, scenario: str | None) -> None:
    """UnknownRegion / BadInput (naming the value and what is accepted) for unusable values."""
    if region is not None:
        from wattwise import carbon

        carbon.intensity(region)
    if scenario is not None and scenario.strip().lower() != "onprem":
        from wattwise import pricing

        pricing.instance(scenario)


def _money_scenario(
    region: str | None, pricing: str | None, settings: Any
) -> tuple[str | None, str]:
    """(region, pricing scenario) in force: the arguments, else the configuration ``settings``
    (``WATTWISE_REGION`` / ``WATTWISE_PRICING`` / wattwise.toml; the first of a list of
    scenarios). Shared with BudgetGuard so its budgets price what the callback reports."""
    scenario = pricing or settings.get("pricing")
    return region or settings.get("region"), scenario[0] if isinstance(scenario, list) else scenario


def _meter_layout(trainer: Any) -> tuple[str | list[int], bool] | None:
    """What this process measures: (gpus for discover(), measure_host), or None for nothing."""
    root = trainer.strategy.root_device
    host = int(trainer.local_rank) == 0
    if root.type == "cuda" and not os.environ.get("WATTWISE_REPLAY_NVML"):
        import torch

        index = root.index if root.index is not None else torch.cuda.current_device()
        return [index], host
    if host:
        return "visible", True
    return None


def _no_money(region: str | None, pricing: str | None, pricing_set: bool) -> dict[str, Any]:
    """``_money``'s figures before any is worked out: no cost, no CO2e, no flags."""
    return {
        "cost_usd": None,
        "co2e_kg": None,
        "flags": set(),
        "region": region,
        "pricing": pricing,
        "pricing_set": pricing_set,
    }


def _cuda_peak_gib(trainer: Any) -> tuple[float, float] | None:
    """(max allocated, max reserved) GiB of the trainer's CUDA root device since the process
    started or the user last reset the peak statistics (never reset here); None off CUDA.
    The caching allocator's host-side counters, read once (``max_memory_allocated`` and
    ``max_memory_reserved`` each build the whole ``memory_stats`` dict): no GPU sync."""
    root = trainer.strategy.root_device
    if root.type != "cuda":
        return None
    import torch

    stats = torch.cuda.memory_stats(root)
    return (
        stats.get("allocated_bytes.all.peak", 0) / units.BYTES_PER_GIB,
        stats.get("reserved_bytes.all.peak", 0) / units.BYTES_PER_GIB,
    )


def _epoch_shape(trainer: Any) -> dict[str, int]:
    """``batches_per_epoch`` and ``steps_per_epoch`` (optimizer steps: batches over
    ``accumulate_grad_batches``, a last partial accumulation stepping too) of the training
    epoch in force, or {} when its length is unknown (an iterable without a length: inf).

    Lightning 2.6 sets ``num_training_batches`` (``fit_loop.max_batches``, after
    ``limit_train_batches``, per rank) when it sets up the train dataloader: before
    ``on_train_start``, and again before ``on_train_epoch_start`` when dataloaders reload; at an
    epoch's end it is still that epoch's."""
    batches = trainer.num_training_batches
    if isinstance(batches, bool) or not isinstance(batches, int | float):
        return {}
    if not math.isfinite(batches) or batches <= 0:
        return {}
    accumulate = max(1, int(trainer.accumulate_grad_batches))
    return {
        "batches_per_epoch": int(batches),
        "steps_per_epoch": math.ceil(int(batches) / accumulate),
    }


def _max_gib(current: float | None, other: Any) -> float | None:
    """The larger of two memory figures; ``other`` counts only as a number > 0 (None, 0 or
    anything else read back from a checkpoint or a run's settings is no figure)."""
    if isinstance(other, bool) or not isinstance(other, int | float):
        return current
    if not math.isfinite(other) or other <= 0:
        return current
    return float(other) if current is None else max(current, float(other))


def _gather(trainer: Any, obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (a plain list without distribution)."""
    if int(trainer.world_size) <= 1:
        return [obj]
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _broadcast(trainer: Any, obj: Any) -> Any:
    if int(trainer.world_size) <= 1:
        return obj
    return trainer.strategy.broadcast(obj, src=0)


def _merge(reports: Sequence[_RankReport | None]) -> tuple[list[_Entry], list[DeviceInfo]]:
    """Phases and devices of every rank, each GPU once (by UUID), host devices named per node."""
    entries: list[_Entry] = []
    devices: list[DeviceInfo] = []
    gpu_owner: dict[str, int] = {}
    for rank, report in enumerate(reports):
        if report is None:
            continue
        renamed: dict[str, str] = {}
        for device in report.devices:
            if device.kind == "gpu" and gpu_owner.setdefault(device.device_id, rank) != rank:
                continue
            renamed[device.device_id] = _node_device_id(
                device.device_id, device.kind, report.node_rank
            )
            devices.append(replace(device, device_id=renamed[device.device_id]))
        for entry in report.phases:
            device_id = renamed.get(entry.phase.device_id)
            if device_id is not None:
                entries.append(replace(entry, phase=replace(entry.phase, device_id=device_id)))
    return entries, devices


def _unsettled_row(entry: _Entry) -> list[Any]:
    p = entry.phase
    return [entry.epoch, entry.in_epoch, p.device_id, p.name, p.start_s, p.end_s, p.energy_j]


def _sum_train_samples(reports: Sequence[_RankReport | None]) -> int | None:
    """Training samples of the epoch over every rank; None when any rank's count is unknown."""
    total = 0
    for report in reports:
        if report is None or report.train_samples is None:
            return None
        total += report.train_samples
    return total


def _scalar_metrics(trainer: Any) -> dict[str, float]:
    """``trainer.callback_metrics`` that are scalars, as floats, without the callback's own."""
    out: dict[str, float] = {}
    for name, value in trainer.callback_metrics.items():
        if name.startswith(OWN_METRICS):
            continue
        try:
            out[name] = float(value)
        except (TypeError, ValueError, RuntimeError):  # non-scalar metric: not stored
            continue
    return out


def _node_device_id(device_id: str, kind: str, node_rank: int) -> str:
    """Host devices of node k > 0 get ``@node<k>``: ``cpu:machine`` is on every node; GPU UUIDs
    are unique everywhere."""
    return device_id if kind == "gpu" or node_rank == 0 else f"{device_id}@node{node_rank}"


def _snapshot(pl_module: Any, label: str) -> ArchSnapshot:

    params = list(pl_module.parameters())
    return ArchSnapshot(
        trainable_params=sum(p.numel() for p in params if p.requires_grad),
        total_params=sum(p.numel() for p in params),
        model_class=type(pl_module).__name__,
        label=label,
    )


def _versions(trainer: Any) -> dict[str, str]:
    import torch

    import wattwise

    lightning = __import__(type(trainer).__module__.split(".")[0])
    return {
        "wattwise": wattwise.__version__,
        "torch": torch.__version__,
        lightning.__name__: getattr(lightning, "__version__", "unknown"),
    }


def _format_summary(summary: dict[str, Any]) -> str:
    by_kind = summary["energy_by_kind_wh"]
    # a kind with no device says so: "GPU 0" would read as a GPU measured at zero
    measured = {device.split(":", 1)[0] for device in summary["devices"]}
    parts = ", ".join(
        f"{label} {by_kind[kind]:.4g}" if kind in measured else f"no {label}"
        for kind, label in (("gpu", "GPU"), ("cpu", "CPU"), ("ram", "RAM"))
    )
    lines = [
        f"wattwise run {summary['run_id']} ({summary['architecture']}): "
        f"{summary['epochs']} epochs in {summary['duration_s']:.1f} s",
        f"  energy  {summary['energy_wh']:.4g} Wh  ({parts}; device energy before PUE)",
    ]
    if "energy_above_idle_wh" in summary:
        lines.append(f"  above idle  {summary['energy_above_idle_wh']:.4g} Wh")
    if summary["cost_usd"] is not None:
        lines.append(f"  cost    {summary['cost_usd']:.4g} USD ({summary['pricing']})")
    if summary["co2e_kg"] is not None:
        grams = summary["co2e_kg"] * units.G_PER_KG
        lines.append(f"  carbon  {grams:.4g} gCO2e ({summary['region'] or 'world'})")
    lines.extend(f"  {device}" for device in summary["devices"])
    if summary["flags"]:
        lines.append(f"  flags   {', '.join(summary['flags'])}")
    # labels (architecture, device names, region) shown with control characters escaped
    return "\n".join(map(printable, lines))
