"""Report data: the ledger's rows as the runs and phases tables, with cost and CO2e attached.

Everything here reads the ledger through its public API and prices it through ``pricing`` and
``carbon``; nothing is invented. Energies stay in J inside and become Wh only in the tables.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from wattwise.errors import BadInput, UnknownHardware, UnknownRegion
from wattwise.units import J_PER_WH

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from wattwise.ledger import Ledger

log = logging.getLogger(__name__)

STAGE_ORDER = ("sanity_check", "train", "validate", "test", "predict", "other")
KINDS = ("gpu", "cpu", "ram")
# metric names whose smaller values are better; anything else is taken as higher-is-better
_LOWER_IS_BETTER = ("loss", "err", "mse", "mae", "rmse", "perplexity", "ppl", "wer", "cer")
# metrics preferred as the headline accuracy, in order
_PREFERRED_METRICS = ("val_acc", "test_acc", "val_accuracy", "test_accuracy", "acc", "accuracy")
# settings / metrics keys that give the number of training samples a run saw
_SAMPLES_TOTAL_KEYS = ("train_samples",)
_SAMPLES_PER_EPOCH_KEYS = ("train_samples_per_epoch",)

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
    "energy_wh",
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
    """region label -> carbon.Intensity used for the runs in that region."""
    metric: str | None
    """The headline metric column (``metric/<name>``) or None when no run has metrics."""
    metric_lower_is_better: bool
    ledger_path: str
    notes: list[str] = field(default_factory=list)


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


def text_list(value: Any) -> str:
    """Tags and similar list-or-text values as one comma-joined string."""
    return ",".join(split_flags(value))


def lower_is_better(metric: str) -> bool:
    name = metric.removeprefix("metric/").lower()
    return any(word in name for word in _LOWER_IS_BETTER)


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
) -> ReportData:
    """Read the selected runs (all when ``run_ids`` is None) and price them under each scenario
    of ``pricing``; with none given, the configured one plus those the runs were recorded with."""
    import pandas as pd

    all_runs = ledger.runs()
    if all_runs.empty:
        raise BadInput(
            f"ledger {ledger.path} has no runs: record some with EnergyCallback, wattwise.Meter or "
            "`wattwise run -- COMMAND`, or pass --ledger with a ledger that has runs"
        )
    if run_ids:
        wanted = list(dict.fromkeys(ledger.get_run(r).run_id for r in run_ids))
        runs = all_runs[all_runs["run_id"].isin(wanted)]
    else:
        runs = all_runs
    runs = runs.reset_index(drop=True)
    selected = set(runs["run_id"])
    records = {r.run_id: r for r in ledger.list_runs() if r.run_id in selected}
    phases = _phase_table(ledger.phases(), runs)
    snapshots = ledger.snapshots()
    snapshots = snapshots[snapshots["run_id"].isin(selected)].reset_index(drop=True)
    notes: list[str] = []
    scenarios = (
        parse_scenarios(pricing)
        or parse_scenarios([*parse_scenarios(settings.get("pricing")), *runs["pricing"].dropna()])
        or ["onprem"]
    )

    table = pd.DataFrame(
        {
            "run_id": runs["run_id"],
            "architecture": runs["architecture"],
            "status": runs["status"],
            "started_at": runs["started_at"],
            "parent_run_id": runs["parent_run_id"],
            "tags": runs["tags"].map(text_list),
            "params_start": runs["params_start"].astype("Int64"),
            "params_end": runs["params_end"].astype("Int64"),
            "epochs": runs["epochs"].astype("Int64"),
            "duration_s": runs["duration_s"],
            "gpu_wh": runs["gpu_energy_j"].fillna(0.0) / J_PER_WH,
            "cpu_wh": runs["cpu_energy_j"].fillna(0.0) / J_PER_WH,
            "ram_wh": runs["ram_energy_j"].fillna(0.0) / J_PER_WH,
            "total_wh": runs["energy_j"].fillna(0.0) / J_PER_WH,
            "method_mix": runs["method_mix"],
            "estimated_kinds": _estimated_kinds(phases, runs["run_id"]),
            "flags": runs["flags"].map(text_list),
        }
    )

    intensities, run_regions = _intensities(runs, region, settings, notes)
    table["region"] = [intensities[r].region or "world" for r in run_regions]
    table["gco2e_per_kwh"] = [intensities[r].gco2e_per_kwh for r in run_regions]
    priced, scenario_info = _price(runs, run_regions, intensities, scenarios, settings, notes)
    for name, (costs, _) in priced.items():
        table[cost_column(name)] = costs
    for name, (_, co2e) in priced.items():
        table[co2e_column(name)] = co2e

    metric_columns = [c for c in runs.columns if c.startswith("metric/")]
    for column in metric_columns:
        table[column] = runs[column]
    table["j_per_train_sample"] = _j_per_train_sample(runs, phases, records)
    table["wh_to_best_val"] = None  # see build_report's docstring: needs per-epoch metrics
    table["cumulative_wh"] = [
        ledger.cumulative_energy_j(rid) / J_PER_WH if isinstance(parent, str) else own
        for rid, parent, own in zip(
            table["run_id"], table["parent_run_id"], table["total_wh"], strict=True
        )
    ]
    metric = pick_metric([c for c in metric_columns if table[c].notna().any()])
    return ReportData(
        runs=table,
        phases=phases,
        snapshots=snapshots,
        records=records,
        scenarios=scenario_info,
        intensities=intensities,
        metric=metric,
        metric_lower_is_better=lower_is_better(metric) if metric else False,
        ledger_path=str(ledger.path),
        notes=notes,
    )


def _phase_table(phases: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Ledger phases of the selected runs, one row per run x epoch x stage x device.

    A stage that ran several times inside one epoch (e.g. ``val_check_interval``) is summed.
    """
    import pandas as pd

    phases = phases[phases["run_id"].isin(set(runs["run_id"]))]
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
            )
            .reset_index()
        )
        merged["mean_power_w"] = merged["energy_j"] / merged["duration_s"].where(
            merged["duration_s"] > 0
        )
        phases = pd.concat([phases[~repeated], merged], ignore_index=True)
    phases = phases.merge(runs[["run_id", "architecture"]], on="run_id", how="left")
    phases["epoch"] = phases["epoch"].astype("Int64")
    phases["flags"] = phases["flags"].map(text_list)
    phases["energy_wh"] = phases["energy_j"] / J_PER_WH
    run_order = {rid: i for i, rid in enumerate(runs["run_id"])}
    stage_order = {s: i for i, s in enumerate(STAGE_ORDER)}
    phases = phases.assign(
        _run=phases["run_id"].map(run_order),
        _stage=phases["stage"].map(stage_order).fillna(len(STAGE_ORDER)),
    ).sort_values(["_run", "epoch", "start_s", "_stage", "device_id"], na_position="last")
    return phases[PHASE_COLUMNS].reset_index(drop=True)


def _union_flags(values: pd.Series) -> str:
    return ",".join(dict.fromkeys(f for v in values for f in split_flags(v)))


def _estimated_kinds(phases: pd.DataFrame, run_ids: pd.Series) -> list[str]:
    """Per run, the device kinds whose energy is a model estimate rather than a measurement."""
    estimated = phases[
        (phases["method"] == "estimate") | phases["flags"].str.contains("estimated", regex=False)
    ]
    kinds = estimated.groupby("run_id")["kind"].agg(
        lambda s: ",".join(k for k in KINDS if k in set(s))
    )
    return [kinds.get(rid, "") for rid in run_ids]


def _intensities(
    runs: pd.DataFrame, region: str | None, settings: Any, notes: list[str]
) -> tuple[dict[str, Any], list[str]]:
    """Grid intensity per region in use; an explicit region applies to every run."""
    from wattwise import carbon

    default = region if region is not None else settings.get("region")
    labels = [
        default if region is not None or not isinstance(r, str) or not r else r
        for r in runs["region"]
    ]
    intensities: dict[str, Any] = {}
    resolved: list[str] = []
    for label in labels:
        key = label or ""
        if key not in intensities:
            try:
                intensities[key] = carbon.intensity(label or None, settings)
            except UnknownRegion as err:
                if label == region:
                    raise
                # a region stored with an old run that today's tables lack: world average
                _note(notes, f"region {label!r} of some runs is unknown ({err}): world average")
                intensities[key] = carbon.intensity(None, settings)
        resolved.append(key)
    return intensities, resolved


def _price(
    runs: pd.DataFrame,
    run_regions: list[str],
    intensities: dict[str, Any],
    scenarios: Sequence[str],
    settings: Any,
    notes: list[str],
) -> tuple[dict[str, tuple[list[float], list[float]]], list[Scenario]]:
    """Per scenario: the cost (USD) and CO2e (kg) of every run, and where the numbers come from.

    An unknown scenario raises BadInput before anything is priced; a run that one scenario
    cannot price (more GPUs than the instance has) gets no cost there and a note."""
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
        for energy_j, duration_s, gpu, n_gpus, key in zip(
            runs["energy_j"].fillna(0.0),
            runs["duration_s"].fillna(0.0),
            runs["gpu_name"],
            runs["n_gpus"],
            run_regions,
            strict=True,
        ):
            cost = _cost(name, energy_j, duration_s, gpu, n_gpus, settings, notes)
            if cost is not None:
                sources[f"{cost.source} ({cost.date})" if cost.date else cost.source] = None
            costs.append(cost.total_usd if cost is not None else math.nan)
            co2e.append(carbon.co2e_kg(energy_j, intensities[key], pue.value))
        out[name] = (costs, co2e)
        info.append(Scenario(name, pue.value, pue.source, pue.year, tuple(sources)))
    return out, info


def _cost(
    name: str,
    energy_j: float,
    duration_s: float,
    gpu: Any,
    n_gpus: Any,
    settings: Any,
    notes: list[str],
) -> Any:
    """One run's Cost under one scenario; None (and a note) when the scenario cannot price it."""
    from wattwise import pricing

    gpu_name = gpu if isinstance(gpu, str) and gpu else None
    n = int(n_gpus) if _finite(n_gpus) and n_gpus > 0 else 1
    try:
        return pricing.cost(
            energy_j, duration_s, scenario=name, gpu_name=gpu_name, n_gpus=n, settings=settings
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


def _samples_seen(record: Any, epochs: Any) -> float | None:
    """Training samples a run saw, from its settings or final metrics, if it recorded them."""
    sources = (record.settings or {}, record.metrics or {}) if record is not None else ()
    for source in sources:
        for key in _SAMPLES_TOTAL_KEYS:
            if _finite_number(source.get(key)):
                return float(source[key])
        for key in _SAMPLES_PER_EPOCH_KEYS:
            if _finite_number(source.get(key)) and _finite_number(epochs):
                return float(source[key]) * float(epochs)
    return None


def _finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _j_per_train_sample(
    runs: pd.DataFrame, phases: pd.DataFrame, records: dict[str, Any]
) -> list[float | None]:
    """Training-stage energy (whole run when it has no ``train`` stage) per sample seen."""
    train_j = phases[phases["stage"] == "train"].groupby("run_id")["energy_j"].sum()
    out: list[float | None] = []
    for rid, epochs, total_j in zip(runs["run_id"], runs["epochs"], runs["energy_j"], strict=True):
        samples = _samples_seen(records.get(rid), epochs)
        energy_j = train_j.get(rid, total_j)
        out.append(energy_j / samples if samples and _finite(energy_j) else None)
    return out
