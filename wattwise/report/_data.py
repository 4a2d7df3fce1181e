"""Report data: the ledger's rows as the runs and phases tables, with cost and CO2e attached.

Everything here reads the ledger through its public API and prices it through ``pricing`` and
``carbon``; nothing is invented. Energies stay in J inside and become Wh only in the tables.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from wattwise.errors import BadInput, UnknownHardware, UnknownRegion
from wattwise.scheduler import flatten
from wattwise.units import J_PER_WH

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from wattwise.ledger import Ledger
    from wattwise.runfilter import RunFilter

STAGE_ORDER = ("sanity_check", "train", "validate", "test", "predict", "other")
KINDS = ("gpu", "cpu", "ram")
# words in a metric name that make smaller values better; anything else is higher-is-better
_LOWER_IS_BETTER = {"loss", "err", "error", "mse", "mae", "rmse", "nll", "perplexity", "ppl", "wer"}
# metrics preferred as the headline accuracy, in order
_PREFERRED_METRICS = ("val_acc", "test_acc", "val_accuracy", "test_accuracy", "acc", "accuracy")
# settings / metrics keys that give the number of training samples a run saw (runs whose
# epochs carry no sample counts of their own)
_SAMPLES_TOTAL_KEYS = ("train_samples",)
_SAMPLES_PER_EPOCH_KEYS = ("train_samples_per_epoch",)
# metric names measured on the validation set: val_loss, val/acc, valid_f1, validation_loss
_VALIDATION_NAME = re.compile(r"^val(?:id(?:ation)?)?(?:[^a-z0-9]|$)")
FALLBACK_VAL_METRIC = "val_loss"
TARGET_FRACTION = 0.9
"""``wh_to_target_val``'s target: this fraction of the best per-epoch value of the validation
metric that any run in the report reached (higher-is-better metrics only)."""
GROWTH_METRICS = ("arch/width", "arch/depth")
"""Per-epoch metrics in which a model records its shape (the zoo's models log them)."""
J_PER_TRAIN_SAMPLE_DEFINITION = (
    "device energy (GPU + CPU + RAM, before PUE) of every ledger row of the run's training "
    "epochs, all stages inside them (training, the validation run in the epoch, and the set-up "
    "and sanity check counted in epoch 0), divided by the training samples those epochs "
    "processed (counted by EnergyCallback per batch, summed over ranks; else the run's own "
    "train_samples or train_samples_per_epoch x epochs). Work after the last epoch and "
    "stand-alone validate/test/predict calls are not counted. Empty when any training epoch's "
    "count is unknown, or the run has no training epochs or counts (wattwise run, replay)"
)

_READ_ONE_BY_ONE = 50  # up to this many selected runs are read from the ledger run by run
_PHASE_FLOATS = ("start_s", "end_s", "duration_s", "energy_j", "mean_power_w", "peak_power_w")
PHASE_COLUMNS = [
    "run_id",
    "architecture",
    "epoch",
    "stage",
    "device_id",
    "kind",
    "device_name",
    "method",
    "flags",
    "start_s",
    "end_s",
    "duration_s",
    "energy_j",
    "mean_power_w",
    "peak_power_w",
]


@dataclass(frozen=True)
class Scenario:
    """One pricing scenario as the report shows it: its PUE and where its prices come from."""

    name: str
    pue: float
    pue_source: str
    pue_year: Any
    sources: tuple[str, ...]
    """Distinct price sources (with their dates) behind the runs' costs."""


@dataclass
class ReportData:
    """Everything the HTML page and the CSV files are made of."""

    runs: pd.DataFrame
    """The runs.csv table, one row per run, in ledger order (oldest first)."""
    phases: pd.DataFrame
    """The phases.csv table, one row per run x epoch x stage x device."""
    snapshots: pd.DataFrame
    records: dict[str, Any]
    """run_id -> the ledger's RunRecord (settings, devices, versions)."""
    scenarios: list[Scenario]
    intensities: dict[str, Any]
    """region label (run id with an intensity series) -> the carbon.Intensity of its runs."""
    metric: str | None
    """The headline metric column (``metric/<name>``) or None when no run has metrics."""
    metric_lower_is_better: bool
    ledger_path: str
    notes: list[str] = field(default_factory=list)
    val_metric: str | None = None
    """The per-epoch validation metric behind ``wh_to_best_val`` (None: no run has one)."""
    val_metric_lower_is_better: bool = True
    val_curves: Any = None
    """DataFrame ``run_id, epoch, value, cumulative_wh`` of ``val_metric`` per epoch (or None)."""
    target_val: float | None = None
    """``wh_to_target_val``'s target value of ``val_metric`` (None: no target; see
    :func:`target_value`)."""
    growth_curves: dict[str, Any] = field(default_factory=dict)
    """``GROWTH_METRICS`` name -> DataFrame ``run_id, epoch, value, cumulative_wh`` of the runs
    that recorded it per epoch."""


def cost_column(scenario: str) -> str:
    return f"cost_usd[{scenario}]"


def co2e_column(scenario: str) -> str:
    return f"co2e_kg[{scenario}]"


def parse_scenarios(pricing: str | Sequence[str] | None) -> list[str]:
    """``"onprem,aws:p5.48xlarge"`` or a list of names -> de-duplicated names, order kept."""
    if pricing is None:
        return []
    items = [pricing] if isinstance(pricing, str) else list(pricing)
    names: list[str] = []
    for item in items:
        parts = item.split(",") if isinstance(item, str) else parse_scenarios(item)
        for name in parts:
            name = name.strip()
            if name and name not in names:
                names.append(name)
    return names


def split_flags(value: Any) -> list[str]:
    """Flags as the ledger stores them (comma-joined text or a list) -> a list."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, str):
        return [f.strip() for f in value.split(",") if f.strip()]
    return [str(f) for f in value]


def lower_is_better(metric: str) -> bool:
    """``val_loss``, ``test/mse``, ``cer_error`` -> True; ``val_acc``, ``f1`` -> False."""
    words = re.split(r"[^a-z0-9]+", metric.removeprefix("metric/").lower())
    return any(w in _LOWER_IS_BETTER or w.endswith("loss") for w in words)


def pick_metric(present: Sequence[str]) -> str | None:
    """The headline metric column among ``metric/<name>`` columns that have values: an accuracy
    where there is one, else a loss, else the first."""
    if not present:
        return None
    by_name = {c.removeprefix("metric/"): c for c in present}
    for name in _PREFERRED_METRICS:
        if name in by_name:
            return by_name[name]
    for words in (("acc",), ("loss",)):
        for name, column in by_name.items():
            if any(w in name.lower() for w in words):
                return column
    return present[0]


def pareto_mask(energy: Sequence[float], metric: Sequence[float], *, lower: bool) -> list[bool]:
    """True for runs no other run beats on both energy (less) and metric (better)."""
    order = sorted(
        (i for i, (e, m) in enumerate(zip(energy, metric, strict=True)) if _finite(e, m)),
        key=lambda i: (energy[i], metric[i] if lower else -metric[i]),
    )
    mask = [False] * len(energy)
    best = math.inf
    for i in order:
        score = metric[i] if lower else -metric[i]
        if score < best:
            mask[i] = True
            best = score
    return mask


def _finite(*values: float) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def collect(
    ledger: Ledger,
    run_ids: Sequence[str] | None,
    *,
    region: str | None,
    pricing: str | Sequence[str] | None,
    settings: Any,
    run_filter: RunFilter | None = None,
) -> ReportData:
    """Read the selected runs (all when ``run_ids`` is None; of those, the ones ``run_filter``
    matches) and price them under each scenario of ``pricing``; with none given, the configured
    one plus those the runs were recorded with."""
    import pandas as pd

    filtered = run_filter is not None and not run_filter.empty
    records = ledger.list_runs(run_filter)  # one pass (runs() would make a second)
    if not records and not filtered:
        raise BadInput(
            f"ledger {ledger.path} has no runs: record some with EnergyCallback, wattwise.Meter or "
            "`wattwise run -- COMMAND`, or pass --ledger with a ledger that has runs"
        )
    if run_ids:
        wanted = {ledger.get_run(r).run_id for r in run_ids}
        records = [r for r in records if r.run_id in wanted]
    if not records:
        given = f"of the runs given ({', '.join(run_ids)}) " if run_ids else ""
        raise BadInput(
            f"no run {given}in ledger {ledger.path} matches {run_filter.describe()}; accepted: "
            "filters that some run matches (see `wattwise runs` with the same filters)"
        )
    by_id = {r.run_id: r for r in records}
    phases, snapshots = _read_rows(
        ledger, list(by_id), everything=not run_ids and not filtered, run_filter=run_filter
    )
    params = snapshots.groupby("run_id", sort=False)["trainable_params"].agg(["first", "last"])
    gpus = [[d for d in r.devices if d["kind"] == "gpu"] for r in records]
    ids = [r.run_id for r in records]
    scheduler_columns = [flatten(r.scheduler) for r in records]
    table = pd.DataFrame(
        {
            "run_id": ids,
            "architecture": [r.architecture for r in records],
            "status": [r.status for r in records],
            "started_at": [r.started_at for r in records],
            "parent_run_id": [r.parent_run_id for r in records],
            "tags": [",".join(r.tags) for r in records],
            # the scheduler's join keys (`sacct -j <job_id>`) and every field it recorded
            "user": [r.scheduler.get("user") for r in records],
            "job_id": [r.scheduler.get("job_id") for r in records],
            **{
                # object: a torchrun rank stays 0, not 0.0 beside a run without one
                column: pd.Series([flat[column] for flat in scheduler_columns], dtype=object)
                for column in (scheduler_columns[0] if scheduler_columns else flatten({}))
            },
            "params_start": params["first"].reindex(ids).astype("Int64").to_numpy(),
            "params_end": params["last"].reindex(ids).astype("Int64").to_numpy(),
            "epochs": pd.array([r.epochs for r in records], dtype="Int64"),
            "duration_s": [r.duration_s for r in records],
            **{
                # a kind with no device measured is missing, never a silent 0 Wh
                f"{kind}_wh": [
                    r.energy_by_kind_j.get(kind, 0.0) / J_PER_WH
                    if any(d.get("kind") == kind for d in r.devices)
                    else None
                    for r in records
                ]
                for kind in KINDS
            },
            "total_wh": [r.energy_j / J_PER_WH for r in records],
            "method_mix": [r.method_mix for r in records],
            "estimated_kinds": [_estimated_kinds(r) for r in records],
        }
    )
    notes: list[str] = []
    intensities, run_regions = _intensities(records, region, settings, notes)
    table["flags"] = [
        ",".join(dict.fromkeys([*r.flags, *intensities[key].flags]))
        for r, key in zip(records, run_regions, strict=True)
    ]
    table["region"] = [intensities[key].region or "world" for key in run_regions]
    table["gco2e_per_kwh"] = [intensities[key].gco2e_per_kwh for key in run_regions]
    scenarios = (
        parse_scenarios(pricing)
        or parse_scenarios([settings.get("pricing"), *(r.pricing for r in records if r.pricing)])
        or ["onprem"]
    )
    jobs = [
        (
            r.energy_j,
            r.duration_s or 0.0,
            ", ".join(sorted({d["name"] for d in g if d["name"]})) or None,
            max(len(g), 1),
            intensities[key],
        )
        for r, g, key in zip(records, gpus, run_regions, strict=True)
    ]
    priced, scenario_info = _price(jobs, scenarios, settings, notes)
    for name, (costs, _) in priced.items():
        table[cost_column(name)] = costs
    for name, (_, co2e) in priced.items():
        table[co2e_column(name)] = co2e
    metric_names = sorted({name for r in records for name in r.metrics})
    for name in metric_names:
        table[f"metric/{name}"] = [r.metrics.get(name) for r in records]
    phases = _phase_table(phases, table)
    metric = pick_metric(
        [f"metric/{n}" for n in metric_names if table[f"metric/{n}"].notna().any()]
    )
    epoch_rows = phases[phases["epoch"].notna()]
    epoch_end_wh = _epoch_end_wh(phases)
    table["j_per_train_sample"] = _j_per_train_sample(records, epoch_rows, epoch_end_wh, snapshots)
    val_metric = pick_val_metric(metric, snapshots)
    val_lower = lower_is_better(val_metric) if val_metric else True
    curves = _val_curves(snapshots, val_metric, epoch_end_wh) if val_metric else None
    table["wh_to_best_val"] = _wh_to_best(ids, curves, lower=val_lower)
    target = target_value(curves, lower=val_lower)
    table["wh_to_target_val"] = wh_to_target(ids, curves, target)
    growth_curves = {
        name: _val_curves(snapshots, name, epoch_end_wh)
        for name in GROWTH_METRICS
        if any(isinstance(m, dict) and name in m for m in snapshots["metrics"])
    }
    _samples_notes(table, notes)
    if val_metric is None:
        notes.append(
            "wh_to_best_val is empty: no run recorded per-epoch validation metrics "
            f"({metric.removeprefix('metric/') if metric else 'no headline metric'} or "
            f"{FALLBACK_VAL_METRIC}); runs from EnergyCallback before wattwise's ledger "
            "schema 3, wattwise run and replay have none"
        )
    table["cumulative_wh"] = [
        ledger.cumulative_energy_j(r.run_id) / J_PER_WH
        if r.parent_run_id
        else r.energy_j / J_PER_WH
        for r in records
    ]
    return ReportData(
        runs=table,
        phases=phases,
        snapshots=snapshots,
        records=by_id,
        scenarios=scenario_info,
        intensities=intensities,
        metric=metric,
        metric_lower_is_better=lower_is_better(metric) if metric else False,
        ledger_path=str(ledger.path),
        notes=notes,
        val_metric=val_metric,
        val_metric_lower_is_better=val_lower,
        val_curves=curves,
        target_val=target,
        growth_curves=growth_curves,
    )


def is_validation_metric(name: str) -> bool:
    """``val_loss``, ``val/acc``, ``valid_f1``, ``validation_loss`` -> True; ``value``,
    ``train_loss``, ``test_acc`` -> False."""
    return _VALIDATION_NAME.match(name.removeprefix("metric/").lower()) is not None


def pick_val_metric(headline: str | None, snapshots: pd.DataFrame) -> str | None:
    """The per-epoch metric ``wh_to_best_val`` is about: the report's headline metric when it is
    a validation metric some run recorded per epoch, else ``val_loss``; None when no run has it."""
    recorded: set[str] = set()
    for metrics in snapshots["metrics"]:
        if metrics:
            recorded.update(metrics)
    name = headline.removeprefix("metric/") if headline else None
    if name is not None and is_validation_metric(name) and name in recorded:
        return name
    return FALLBACK_VAL_METRIC if FALLBACK_VAL_METRIC in recorded else None


def _epoch_end_wh(phases: pd.DataFrame) -> pd.Series:
    """The run's own energy (Wh) from its start to the end of each training epoch, indexed by
    (run_id, epoch): every row recorded up to the epoch's last row, in recording order (the
    tail of an earlier call of a resumed run included).

    ``phases`` is the report's phase table: each run's rows together, in recording order (numpy
    on 600,000 rows takes a fifth of the time of a pandas groupby)."""
    import numpy as np
    import pandas as pd

    run = phases["run_id"].to_numpy()
    epoch = phases["epoch"].to_numpy(dtype=float, na_value=np.nan)
    wh = np.cumsum(phases["energy_j"].to_numpy(dtype=float)) / J_PER_WH
    n = len(run)
    first = np.ones(n, dtype=bool)
    first[1:] = run[1:] != run[:-1]
    starts = np.flatnonzero(first)
    before = np.concatenate(([0.0], wh))[starts]  # the cumulative sum before each run began
    wh = wh - np.repeat(before, np.diff(np.append(starts, n)))
    last = np.ones(n, dtype=bool)  # the last row of each run x epoch stretch
    last[:-1] = first[1:] | (epoch[1:] != epoch[:-1])
    keep = last & ~np.isnan(epoch)
    index = pd.MultiIndex.from_arrays(
        [run[keep], epoch[keep].astype(np.int64)], names=["run_id", "epoch"]
    )
    out = pd.Series(wh[keep], index=index, name="wh")
    if not index.is_unique:  # an epoch's rows split by other rows: its end is its last row
        out = out.groupby(level=[0, 1], sort=False).last()
    return out


def _val_curves(snapshots: pd.DataFrame, name: str, epoch_end_wh: pd.Series) -> pd.DataFrame:
    """``run_id, epoch, value, cumulative_wh`` of the epochs that recorded a finite ``name``."""
    import pandas as pd

    values = [m.get(name) if isinstance(m, dict) else None for m in snapshots["metrics"].tolist()]
    frame = pd.DataFrame(
        {
            "run_id": snapshots["run_id"].to_numpy(),
            "epoch": snapshots["epoch"].to_numpy(),
            "value": pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(),
        }
    )
    frame = frame[frame["value"].notna() & frame["value"].abs().ne(float("inf"))]
    keys = pd.MultiIndex.from_arrays([frame["run_id"], frame["epoch"]])
    frame = frame.assign(cumulative_wh=epoch_end_wh.reindex(keys).to_numpy())
    return frame[frame["cumulative_wh"].notna()].reset_index(drop=True)


def best_epochs(curves: pd.DataFrame, *, lower: bool) -> pd.DataFrame:
    """Each run's row of ``curves`` at its best value (the earliest epoch on a tie: Lightning
    repeats the last validation's values in epochs without one)."""
    ordered = curves.sort_values(["run_id", "epoch"], kind="stable")
    index = ordered.groupby("run_id", sort=False)["value"].agg("idxmin" if lower else "idxmax")
    return curves.loc[index.to_numpy()].set_index("run_id")


def target_value(curves: pd.DataFrame | None, *, lower: bool) -> float | None:
    """``TARGET_FRACTION`` of the best per-epoch value any run in ``curves`` reached; None for a
    lower-is-better metric (a fraction of a loss is no target) or no curves."""
    if lower or curves is None or curves.empty:
        return None
    best = float(curves["value"].max())
    return TARGET_FRACTION * best if best > 0 else None


def wh_to_target(
    ids: Sequence[str], curves: pd.DataFrame | None, target: float | None
) -> list[Any]:
    """Per run: its cumulative energy (Wh) at the end of the first epoch whose value reached
    ``target``; None for a run that never reached it (or no target)."""
    if target is None or curves is None or curves.empty:
        return [None] * len(ids)
    reached = curves[curves["value"] >= target].sort_values(["run_id", "epoch"], kind="stable")
    first = reached.groupby("run_id", sort=False)["cumulative_wh"].first()
    return [first.get(rid) for rid in ids]


def _wh_to_best(ids: Sequence[str], curves: pd.DataFrame | None, *, lower: bool) -> list[Any]:
    if curves is None or curves.empty:
        return [None] * len(ids)
    best = best_epochs(curves, lower=lower)["cumulative_wh"]
    return [best.get(rid) for rid in ids]


def _samples_notes(table: pd.DataFrame, notes: list[str]) -> None:
    empty = int(table["j_per_train_sample"].isna().sum())
    if empty:
        notes.append(
            f"j_per_train_sample is empty for {empty} of {len(table)} runs: a training epoch "
            "whose sample count is unknown (a batch without a tensor, or with tensors of "
            "different first dimensions), or no counts at all (wattwise run, replay, runs "
            "recorded before wattwise's ledger schema 3)"
        )


def _read_rows(
    ledger: Ledger, run_ids: Sequence[str], *, everything: bool, run_filter: RunFilter | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The phases and snapshots of ``run_ids``: a few runs are read one by one (a large ledger
    is not read whole for them), many or all in one pass (of the runs ``run_filter`` selects
    in SQL, when given: a filtered report on a lab-sized ledger reads only those)."""
    import pandas as pd

    if everything or len(run_ids) > _READ_ONE_BY_ONE:
        phases = ledger.phases(filter=run_filter)
        snapshots = ledger.snapshots(filter=run_filter)
        snapshots = snapshots[snapshots["run_id"].isin(set(run_ids))].reset_index(drop=True)
        return phases, snapshots
    phases = pd.concat([ledger.phases(rid) for rid in run_ids], ignore_index=True)
    snapshots = pd.concat([ledger.snapshots(rid) for rid in run_ids], ignore_index=True)
    return phases, snapshots


def _phase_table(phases: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Ledger phases of the selected runs, one row per run x epoch x stage x device, runs in
    report order and each run's rows in recording order.

    A stage that ran several times inside one epoch (e.g. ``val_check_interval``) is summed.
    """
    import pandas as pd

    run_order = {rid: i for i, rid in enumerate(runs["run_id"])}
    phases = phases.assign(_run=phases["run_id"].map(run_order), _order=range(len(phases)))
    phases = phases[phases["_run"].notna()]
    key = ["run_id", "epoch", "stage", "device_id"]
    repeated = phases.duplicated(key, keep=False)
    if repeated.any():
        merged = (
            phases[repeated]
            .groupby(key, dropna=False, sort=False)
            .agg(
                kind=("kind", "first"),
                device_name=("device_name", "first"),
                method=("method", lambda s: ",".join(dict.fromkeys(s))),
                flags=("flags", _union_flags),
                start_s=("start_s", "min"),
                end_s=("end_s", "max"),
                duration_s=("duration_s", "sum"),
                energy_j=("energy_j", "sum"),
                peak_power_w=("peak_power_w", "max"),
                _run=("_run", "first"),
                _order=("_order", "min"),
            )
            .reset_index()
        )
        merged["mean_power_w"] = merged["energy_j"] / merged["duration_s"].where(
            merged["duration_s"] > 0
        )
        phases = pd.concat([phases[~repeated], merged], ignore_index=True)
    phases = phases.sort_values(["_run", "_order"], ignore_index=True)
    architecture = dict(zip(runs["run_id"], runs["architecture"], strict=True))
    phases["architecture"] = phases["run_id"].map(architecture)
    phases["epoch"] = phases["epoch"].astype("Int64")
    phases["flags"] = phases["flags"].fillna("")
    # NVML counts mJ and mW; nothing finer than ms, mJ and mW is measured (and shorter numbers
    # make phases.csv smaller and faster to write)
    return phases[PHASE_COLUMNS].round({c: 3 for c in _PHASE_FLOATS})


def _union_flags(values: pd.Series) -> str:
    return ",".join(dict.fromkeys(f for v in values for f in split_flags(v)))


def _estimated_kinds(record: Any) -> str:
    """The device kinds of a run whose energy is a model estimate rather than a measurement."""
    kinds = {
        d["kind"]
        for d in record.devices
        if d["method"] == "estimate" or "estimated" in split_flags(d.get("flags"))
    }
    # device ids start with their kind: "cpu:machine", "ram", "gpu:GPU-..."
    kinds |= {d.partition(":")[0] for d, method in record.methods.items() if method == "estimate"}
    return ",".join(k for k in KINDS if k in kinds)


def _intensities(
    records: Sequence[Any], region: str | None, settings: Any, notes: list[str]
) -> tuple[dict[str, Any], list[str]]:
    """Grid intensity per region in use, and each run's key into it. An explicit ``region``
    applies to every run; otherwise a run's own region, else the configured one. With an
    intensity time series configured, each run gets the series' mean over its own interval."""
    from wattwise import carbon

    default = region if region is not None else settings.get("region")
    per_run = settings.get("intensity_series") is not None
    intensities: dict[str, Any] = {}
    keys: list[str] = []
    for record in records:
        label = record.region if region is None and record.region else default
        key = record.run_id if per_run else label or ""
        if key not in intensities:
            window = _window(record) if per_run else {}
            try:
                intensities[key] = carbon.intensity(label or None, settings, **window)
            except UnknownRegion as err:
                if label == region:
                    raise
                # a region stored with an old run that today's tables lack: world average
                _note(notes, f"region {label!r} of some runs is unknown ({err}): world average")
                intensities[key] = carbon.intensity(None, settings, **window)
        keys.append(key)
    return intensities, keys


def _window(record: Any) -> dict[str, datetime]:
    """The run's calendar interval: from its start to its end (last write, or now, for a run
    without one), pauses before a resume included, since its energy was used at both ends of
    them (``duration_s`` leaves them out: start + duration_s would end before a resume)."""
    start = datetime.fromisoformat(record.started_at)
    span_s = (record.duration_s or 0.0) + record.paused_s
    end = start + timedelta(seconds=span_s)
    return {"start": start, "end": end}


def _price(
    jobs: Sequence[tuple[float, float, str | None, int, Any]],
    scenarios: Sequence[str],
    settings: Any,
    notes: list[str],
) -> tuple[dict[str, tuple[list[float], list[float]]], list[Scenario]]:
    """Per scenario: the cost (USD) and CO2e (kg) of every run, and where the numbers come from.

    ``jobs`` holds one ``(energy_j, duration_s, gpu_name, n_gpus, intensity)`` per run. An
    unknown scenario raises BadInput before anything is priced; a run that one scenario cannot
    price (more GPUs than the instance has) gets no cost there and a note."""
    from wattwise import carbon, pricing

    for name in scenarios:
        pricing.cost(0.0, 0.0, scenario=name, settings=settings)  # BadInput names the choices
    out: dict[str, tuple[list[float], list[float]]] = {}
    info: list[Scenario] = []
    for name in scenarios:
        pue = carbon.pue(name, settings)
        costs: list[float] = []
        co2e: list[float] = []
        sources: dict[str, None] = {}
        for energy_j, duration_s, gpu_name, n_gpus, intensity in jobs:
            cost = _cost(name, energy_j, duration_s, gpu_name, n_gpus, settings, notes)
            if cost is not None:
                sources[f"{cost.source} ({cost.date})" if cost.date else cost.source] = None
            costs.append(cost.total_usd if cost is not None else math.nan)
            co2e.append(carbon.co2e_kg(energy_j, intensity, pue.value))
        out[name] = (costs, co2e)
        info.append(Scenario(name, pue.value, pue.source, pue.year, tuple(sources)))
    return out, info


def _cost(
    name: str,
    energy_j: float,
    duration_s: float,
    gpu_name: str | None,
    n_gpus: int,
    settings: Any,
    notes: list[str],
) -> Any:
    """One run's Cost under one scenario; None (and a note) when the scenario cannot price it."""
    from wattwise import pricing

    try:
        return pricing.cost(
            energy_j, duration_s, scenario=name, gpu_name=gpu_name, n_gpus=n_gpus, settings=settings
        )
    except UnknownHardware as err:
        _note(notes, f"{name}: {err}; runs on {gpu_name!r} are amortised as CPU-only hosts")
        return pricing.cost(energy_j, duration_s, scenario=name, settings=settings)
    except BadInput as err:
        _note(notes, f"{name}: {err}; those runs have no cost under {name}")
        return None


def _note(notes: list[str], note: str) -> None:
    if note not in notes:
        notes.append(note)


def _samples_seen(record: Any) -> float | None:
    """Training samples a run saw, from its settings or final metrics, if it recorded them."""
    for source in (record.settings or {}, record.metrics or {}):
        for key in _SAMPLES_TOTAL_KEYS:
            if _finite_number(source.get(key)):
                return float(source[key])
        for key in _SAMPLES_PER_EPOCH_KEYS:
            if _finite_number(source.get(key)):
                return float(source[key]) * record.epochs
    return None


def _finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _j_per_train_sample(
    records: Sequence[Any],
    epoch_rows: pd.DataFrame,
    epoch_end_wh: pd.Series,
    snapshots: pd.DataFrame,
) -> list[float | None]:
    """Energy of the training epochs' rows per training sample (J_PER_TRAIN_SAMPLE_DEFINITION).

    Samples: the epochs' own counts, which must cover every training epoch (those with rows,
    the index of ``epoch_end_wh``); a run whose epochs carry no count at all falls back to what
    it declared (``_samples_seen``)."""
    epochs_j = epoch_rows.groupby("run_id", sort=False)["energy_j"].sum().to_dict()
    n_epochs = epoch_end_wh.groupby(level=0, sort=False).size().to_dict()
    counted = snapshots[snapshots["train_samples"].notna()]
    counts = counted.groupby("run_id", sort=False)["train_samples"].agg(["sum", "size"])
    count_sum, count_n = counts["sum"].to_dict(), counts["size"].to_dict()
    out: list[float | None] = []
    for record in records:
        rid = record.run_id
        energy_j = epochs_j.get(rid)
        if rid in count_n:
            samples = float(count_sum[rid]) if count_n[rid] == n_epochs.get(rid) else None
        else:
            samples = _samples_seen(record)
        out.append(energy_j / samples if energy_j is not None and samples else None)
    return out


def csv_text(frame: pd.DataFrame, *, header: bool = True) -> str:
    """``frame`` as CSV text, as ``DataFrame.to_csv(index=False)`` writes it (missing values as
    empty fields), through the stdlib csv writer: twice as fast on a table of 600,000 phases.

    Every CSV file wattwise writes comes from here. A text cell (header included) that a
    spreadsheet would run as a formula is neutralised by ``wattwise._safe_text.csv_cell``
    (a leading ``'``); numbers are written as numbers. Where a text cell holds a carriage
    return, every text cell is quoted (``QUOTE_NONNUMERIC``), since the writer would leave that
    one bare and a reader would end the row inside it."""
    import csv
    import io

    import pandas as pd

    from wattwise._safe_text import csv_column

    columns = [
        frame[c].astype(object).where(frame[c].notna(), None).tolist()
        if frame[c].hasnans
        else frame[c].tolist()
        for c in frame.columns
    ]
    # a numeric or boolean column holds no text: only the others are looked at
    carriage_return = False
    for i, values in enumerate(columns):
        if not pd.api.types.is_numeric_dtype(frame.dtypes.iloc[i]):
            columns[i], found = csv_column(values)
            carriage_return = carriage_return or found
    names, found = csv_column(frame.columns)
    quoting = csv.QUOTE_NONNUMERIC if carriage_return or found else csv.QUOTE_MINIMAL
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n", quoting=quoting)
    if header:
        writer.writerow(names)
    writer.writerows(zip(*columns, strict=True))
    return out.getvalue()
