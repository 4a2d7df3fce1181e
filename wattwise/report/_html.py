"""The HTML page: one self-contained file rendered from ``templates/report.html.j2``.

Jinja2 autoescaping is on, so every user string (architecture labels, tags, run ids, sources) is
escaped; only the chart SVGs, which matplotlib has already escaped, are inserted as markup.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from wattwise.report import _charts
from wattwise.report._data import (
    FALLBACK_VAL_METRIC,
    GROWTH_METRICS,
    J_PER_TRAIN_SAMPLE_DEFINITION,
    KINDS,
    TARGET_FRACTION,
    best_epochs,
    co2e_column,
    cost_column,
    pareto_mask,
    split_flags,
)
from wattwise.types import FLAGS
from wattwise.units import J_PER_WH

if TYPE_CHECKING:  # pragma: no cover
    from wattwise.report._data import ReportData

# per-run charts (timelines, growth, lineage) are drawn for at most this many runs, and per-
# architecture charts for at most this many architectures; the tables and CSVs stay complete
MAX_RUN_CHARTS = 12
MAX_ARCHITECTURES = 10
METHODS = {
    "counter": "the device's hardware energy counter (NVML total energy), measured",
    "power": "polled power integrated over time (trapezoid), measured",
    "rapl": "Intel/AMD RAPL powercap energy counter, measured",
    "estimate": "a model (CPU utilisation x TDP, RAM size x W/GB), estimated, not measured",
}
_URL = re.compile(r"https?://\S+")


def render(data: ReportData, ledger: Any) -> str:
    """The whole page as text."""
    import jinja2

    from wattwise import __version__

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("wattwise.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = num
    env.filters["links"] = links
    runs = data.runs
    architectures = list(dict.fromkeys(runs["architecture"]))
    colors = _charts.architecture_colors(architectures)
    by_count = list(runs["architecture"].value_counts(sort=True).index)
    shown_architectures = [a for a in architectures if a in by_count[:MAX_ARCHITECTURES]]
    timeline_runs = _timeline_runs(data)
    growing = _growing_runs(data)
    lineage_rows = _lineage_rows(data, ledger)
    series = {rid: _charts.timeline_series(data, ledger, rid) for rid in timeline_runs}
    val_runs = _val_runs(data)
    charts = {
        "pareto": _charts.pareto(data, colors),
        "val": _charts.val_energy(data, val_runs, colors),
        "epochs": _charts.epoch_energy(data, shown_architectures),
        "timelines": _charts.timelines(data, timeline_runs, series),
        "cost": _charts.cost_and_carbon(data, shown_architectures, colors),
        "params": _charts.params_energy(data, [r["run_id"] for r in growing], colors),
        "shape": _charts.shape_energy(data, [r["run_id"] for r in growing], colors),
        "lineage": _charts.lineage(
            data, [r["run_id"] for r in lineage_rows[:MAX_RUN_CHARTS]], colors
        ),
    }
    return env.get_template("report.html.j2").render(
        title="wattwise report",
        generated_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        version=__version__,
        data=data,
        n_runs=len(runs),
        n_architectures=len(architectures),
        shown_architectures=shown_architectures,
        metric=data.metric.removeprefix("metric/") if data.metric else None,
        metric_better="lower" if data.metric_lower_is_better else "higher",
        val_metric=data.val_metric,
        val_better="lower" if data.val_metric_lower_is_better else "higher",
        val_runs=len(val_runs),
        val_runs_total=_n_val_runs(data),
        target=_target(data),
        derived=_derived(data),
        summary=_summary(data),
        architecture_rows=_architecture_rows(data, architectures),
        timeline_runs=[_short(data, rid) for rid in timeline_runs],
        growing=growing,
        lineage_rows=lineage_rows,
        devices=_device_rows(data),
        methods=METHODS,
        sampling=_sampling(data),
        flags=_flag_rows(data),
        intensities=_intensity_rows(data),
        versions=_versions(data),
        charts={k: _markup(v) for k, v in charts.items()},
        cost_column=cost_column,
        co2e_column=co2e_column,
        max_run_charts=MAX_RUN_CHARTS,
    )


def num(value: Any, digits: int = 3) -> str:
    """A number for a table cell: about ``digits`` significant digits, no thousands separator
    (so the sort script can read it), an en dash when missing."""
    if value is None or isinstance(value, str):
        return value or "–"
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "–"
    if math.isnan(value):
        return "–"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if value == 0 or abs(value) >= 10 ** (digits - 1):
        return f"{value:.0f}"
    if abs(value) < 1e-3:
        return f"{value:.{digits - 1}e}"
    decimals = digits - 1 - math.floor(math.log10(abs(value)))
    return f"{value:.{decimals}f}"


def links(text: Any) -> Any:
    """Source text with its URLs as plain ``<a href>`` links (text escaped)."""
    from markupsafe import Markup, escape

    text = "" if text is None else str(text)
    out, last = [], 0
    for match in _URL.finditer(text):
        url = match.group(0).rstrip(".,;)")
        out.append(escape(text[last : match.start()]))
        out.append(Markup('<a href="{0}">{0}</a>').format(url))
        last = match.start() + len(url)
    out.append(escape(text[last:]))
    return Markup("").join(out)


def _markup(svg: str | None) -> Any:
    from markupsafe import Markup

    return Markup(svg) if svg else None


def _short(data: ReportData, run_id: str) -> dict[str, str]:
    arch = data.runs.loc[data.runs["run_id"] == run_id, "architecture"].iloc[0]
    return {"run_id": run_id, "short": run_id[:8], "architecture": arch}


def _summary(data: ReportData) -> dict[str, Any]:
    """Header and rows of the summary table (every run)."""
    runs = data.runs
    names = [s.name for s in data.scenarios]
    metric_columns = [c for c in runs.columns if c.startswith("metric/")]
    has_lineage = runs["parent_run_id"].map(lambda p: isinstance(p, str)).any()
    has_samples = runs["j_per_train_sample"].notna().any()
    has_best = runs["wh_to_best_val"].notna().any()
    has_target = data.target_val is not None
    header = [
        ("run", False),
        ("architecture", False),
        ("status", False),
        ("tags", False),
        ("epochs", True),
        ("params start", True),
        ("params end", True),
        ("duration (s)", True),
        ("GPU (Wh)", True),
        ("CPU (Wh)", True),
        ("RAM (Wh)", True),
        ("total (Wh)", True),
        ("method mix", False),
    ]
    header += [(f"cost {n} (USD)", True) for n in names]
    header += [(f"CO2e {n} (kg)", True) for n in names]
    header += [(m.removeprefix("metric/"), True) for m in metric_columns]
    if has_samples:
        header.append(("J per train sample", True))
    if has_best:
        header.append((f"Wh to best {data.val_metric}", True))
    if has_target:
        header.append((f"Wh to {data.val_metric} ≥ {num(data.target_val)}", True))
    if has_lineage:
        header.append(("cumulative (Wh)", True))
    header.append(("flags", False))
    rows = []
    for r in runs.to_dict("records"):
        record = data.records.get(r["run_id"])
        estimated = set(split_flags(r["estimated_kinds"]))
        cells: list[tuple[str, str]] = [
            (r["run_id"][:8], r["run_id"]),
            (r["architecture"], ""),
            (r["status"], (record.reason if record is not None else None) or ""),
            (r["tags"], ""),
            (num(r["epochs"], 6), ""),
            (num(r["params_start"], 12), ""),
            (num(r["params_end"], 12), ""),
            (num(r["duration_s"], 4), ""),
        ]
        for kind in KINDS:
            cells.append((num(r[f"{kind}_wh"], 4), "estimated" if kind in estimated else ""))
        cells.append((num(r["total_wh"], 4), "includes estimated energy" if estimated else ""))
        cells.append((r["method_mix"] if isinstance(r["method_mix"], str) else "", ""))
        cells += [(num(r[cost_column(n)], 3), "") for n in names]
        cells += [(num(r[co2e_column(n)], 3), "") for n in names]
        cells += [(num(r[m], 4), "") for m in metric_columns]
        if has_samples:
            cells.append((num(r["j_per_train_sample"], 3), ""))
        if has_best:
            cells.append((num(r["wh_to_best_val"], 4), ""))
        if has_target:
            reached = r["wh_to_target_val"]
            missed = reached is None or (isinstance(reached, float) and math.isnan(reached))
            cells.append(("not reached" if missed else num(reached, 4), ""))
        if has_lineage:
            cells.append((num(r["cumulative_wh"], 4), ""))
        cells.append((r["flags"], ""))
        rows.append({"cells": cells, "estimated": bool(estimated)})
    return {"header": header, "rows": rows}


def _architecture_rows(data: ReportData, architectures: Sequence[str]) -> list[dict[str, Any]]:
    """Per architecture: runs, mean energy and duration, mean cost and CO2e per scenario."""
    runs = data.runs
    means = runs.groupby("architecture", sort=False).mean(numeric_only=True)
    counts = runs["architecture"].value_counts()
    rows = []
    for arch in architectures:
        row = {
            "architecture": arch,
            "runs": int(counts[arch]),
            "total_wh": means.loc[arch, "total_wh"],
            "duration_s": means.loc[arch, "duration_s"],
            "cost": [means.loc[arch, cost_column(s.name)] for s in data.scenarios],
            "co2e": [means.loc[arch, co2e_column(s.name)] for s in data.scenarios],
            "metric": means.loc[arch, data.metric] if data.metric else None,
        }
        rows.append(row)
    return rows


def _timeline_runs(data: ReportData) -> list[str]:
    """Runs whose power timeline is drawn: the Pareto-optimal ones first, then the most recent."""
    runs = data.runs
    chosen: list[str] = []
    if data.metric:
        mask = pareto_mask(
            runs["total_wh"].tolist(),
            runs[data.metric].astype(float).tolist(),
            lower=data.metric_lower_is_better,
        )
        chosen = [rid for rid, on in zip(runs["run_id"], mask, strict=True) if on]
    for rid in reversed(runs["run_id"].tolist()):
        if len(chosen) >= MAX_RUN_CHARTS:
            break
        if rid not in chosen:
            chosen.append(rid)
    chosen = chosen[:MAX_RUN_CHARTS]
    order = {rid: i for i, rid in enumerate(runs["run_id"])}
    return sorted(chosen, key=order.__getitem__)


def _n_val_runs(data: ReportData) -> int:
    return 0 if data.val_curves is None else int(data.val_curves["run_id"].nunique())


def _val_runs(data: ReportData) -> list[str]:
    """Runs drawn in the validation-metric chart: every run with per-epoch values when there are
    few; else the best run of each architecture, then the best of the others, MAX_RUN_CHARTS
    in all (the CSV keeps every run's wh_to_best_val)."""
    curves = data.val_curves
    if curves is None or curves.empty:
        return []
    best = best_epochs(curves, lower=data.val_metric_lower_is_better)
    architecture = dict(zip(data.runs["run_id"], data.runs["architecture"], strict=True))
    ranked = best.sort_values("value", ascending=data.val_metric_lower_is_better, kind="stable")
    chosen: list[str] = []
    seen: set[str] = set()
    for rid in ranked.index:
        if architecture[rid] not in seen:
            seen.add(architecture[rid])
            chosen.append(rid)
    chosen += [rid for rid in ranked.index if rid not in chosen]
    chosen = chosen[:MAX_RUN_CHARTS]
    order = {rid: i for i, rid in enumerate(data.runs["run_id"])}
    return sorted(chosen, key=order.__getitem__)


def _derived(data: ReportData) -> list[tuple[str, str]]:
    """How the derived per-run columns are worked out, for the provenance section."""
    if data.val_metric is None:
        best = "empty: no run recorded a per-epoch validation metric"
    else:
        better = "lowest" if data.val_metric_lower_is_better else "highest"
        best = (
            f"the run's own energy (Wh, device total before PUE) from its start to the end of "
            f"the training epoch with the {better} per-epoch {data.val_metric} (the earliest such "
            "epoch on a tie), counting every row recorded by then. The metric is the report's "
            f"headline metric when that is a per-epoch validation metric, else "
            f"{FALLBACK_VAL_METRIC}; an epoch without validation repeats the last validation's "
            "values (Lightning keeps them)"
        )
    if data.target_val is None:
        target = (
            f"empty: {data.val_metric} is lower-is-better (a fraction of it is no target)"
            if data.val_metric is not None
            else "empty: no run recorded a per-epoch validation metric"
        )
    else:
        target = (
            f"the run's own energy (Wh, as for wh_to_best_val) to the end of the first training "
            f"epoch whose {data.val_metric} reached the target {num(data.target_val)}: "
            f"{TARGET_FRACTION:.0%} of the best per-epoch {data.val_metric} any run in this "
            f"report reached ({num(data.target_val / TARGET_FRACTION)}); empty for a run that "
            "never reached it"
        )
    return [
        ("j_per_train_sample", J_PER_TRAIN_SAMPLE_DEFINITION),
        (f"wh_to_best_val ({data.val_metric or 'no metric'})", best),
        ("wh_to_target_val", target),
    ]


def _growing_runs(data: ReportData) -> list[dict[str, Any]]:
    """Runs whose trainable parameter count changed between epochs (adaptive models), with the
    shape (width, depth) they started and ended with where they recorded it per epoch."""
    snaps = data.snapshots
    counts = snaps.groupby("run_id", sort=False)["trainable_params"].nunique()
    growing = [rid for rid in data.runs["run_id"] if counts.get(rid, 1) > 1][:MAX_RUN_CHARTS]
    snaps = snaps[snaps["run_id"].isin(growing)].sort_values(["run_id", "epoch"])
    rows = []
    for rid in growing:
        group = snaps[snaps["run_id"] == rid]
        params = group["trainable_params"].tolist()
        epochs = group["epoch"].tolist()
        grew = [int(e) for e, a, b in zip(epochs[1:], params, params[1:], strict=False) if b != a]
        shape = {}
        for name in GROWTH_METRICS:
            curve = data.growth_curves.get(name)
            values = [] if curve is None else curve[curve["run_id"] == rid].sort_values("epoch")
            key = name.removeprefix("arch/")
            shape[key] = (
                f"{num(values['value'].iloc[0])} → {num(values['value'].iloc[-1])}"
                if len(values)
                else "–"
            )
        rows.append(
            {
                **_short(data, rid),
                "start": params[0],
                "end": params[-1],
                "epochs": grew,
                **shape,
            }
        )
    return rows


def _target(data: ReportData) -> dict[str, Any] | None:
    """The target of ``wh_to_target_val`` and the runs that never reached it."""
    if data.target_val is None:
        return None
    runs = data.runs
    missed = runs[runs["wh_to_target_val"].isna()]
    return {
        "value": data.target_val,
        "fraction": TARGET_FRACTION,
        "best": data.target_val / TARGET_FRACTION,
        "missed": [_short(data, rid) for rid in missed["run_id"]],
    }


def _lineage_rows(data: ReportData, ledger: Any) -> list[dict[str, Any]]:
    """Runs with a parent: own and cumulative energy, the chain of ancestors."""
    runs = data.runs
    architecture = dict(zip(runs["run_id"], runs["architecture"], strict=True))
    rows = []
    for run in runs.itertuples(index=False):
        if not isinstance(run.parent_run_id, str):
            continue
        chain = ledger.ancestors(run.run_id)
        rows.append(
            {
                **_short(data, run.run_id),
                "parent": run.parent_run_id[:8],
                "parent_architecture": architecture.get(run.parent_run_id, ""),
                "ancestors": len(chain),
                "own_wh": run.total_wh,
                "cumulative_wh": run.cumulative_wh,
            }
        )
    return rows


def _device_rows(data: ReportData) -> list[dict[str, Any]]:
    """Every device and method behind the numbers, with the runs and energy it accounts for."""
    phases = data.phases
    total = phases["energy_j"].sum() / J_PER_WH
    grouped = phases.groupby(["kind", "device_name", "method"], sort=False, dropna=False).agg(
        runs=("run_id", "nunique"), energy_j=("energy_j", "sum")
    )
    rows = []
    for (kind, name, method), row in grouped.iterrows():
        rows.append(
            {
                "kind": kind,
                "name": name,
                "method": method,
                "estimated": "estimate" in str(method),
                "runs": int(row["runs"]),
                "energy_wh": row["energy_j"] / J_PER_WH,
                "share": row["energy_j"] / J_PER_WH / total if total > 0 else None,
            }
        )
    return rows


def _sampling(data: ReportData) -> list[tuple[str, int]]:
    """Sampling rates recorded in the runs' settings, with how many runs used each."""
    rates = Counter(
        num((r.settings or {}).get("sample_hz"), 3) + " Hz"
        if (r.settings or {}).get("sample_hz") is not None
        else "not recorded"
        for r in data.records.values()
    )
    return sorted(rates.items())


def _flag_rows(data: ReportData) -> list[dict[str, Any]]:
    """Every flag of the runs (the ledger gathers those of their phases and devices, the report
    adds the carbon ones), with its meaning and how many runs carry it."""
    counts = Counter(flag for flags in data.runs["flags"] for flag in split_flags(flags))
    return [
        {"flag": flag, "meaning": FLAGS.get(flag, "not in wattwise's flag vocabulary"), "runs": n}
        for flag, n in sorted(counts.items())
    ]


def _intensity_rows(data: ReportData) -> list[dict[str, Any]]:
    """The grid intensities behind the CO2e figures, one row per region and data set (runs
    priced over their own interval of an intensity time series share one row)."""
    groups: dict[tuple[Any, Any], list[Any]] = {}
    for found in data.intensities.values():
        dataset = found.provenance.get("dataset", found.source)
        groups.setdefault((found.region, dataset), []).append(found)
    rows = []
    for (region, dataset), found in groups.items():
        low, high = (num(f(i.gco2e_per_kwh for i in found), 4) for f in (min, max))
        single = len(found) == 1
        rows.append(
            {
                "region": region or "world average",
                "value": low if low == high else f"{low}–{high}",
                "source": found[0].source
                if single
                else f"{dataset}: time-weighted mean over each run's interval ({len(found)} runs)",
                "year": ", ".join(sorted({str(i.year) for i in found})),
                "flags": sorted({f for i in found for f in i.flags}),
                "details": found[0].provenance if single else {},
            }
        )
    return rows


def _versions(data: ReportData) -> list[tuple[str, int]]:
    """Software versions the runs were recorded with, with how many runs used each."""
    seen = Counter(
        f"{name} {version}"
        for record in data.records.values()
        for name, version in sorted((record.versions or {}).items())
    )
    return sorted(seen.items())
