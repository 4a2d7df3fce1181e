"""Charts as inline SVG text, drawn with matplotlib's object API (no pyplot, no global state).

Text stays text (``svg.fonttype='none'``) so the page is small and searchable; user strings are
drawn literally (no mathtext), their control characters shown escaped
(``wattwise._safe_text.printable``: no glyph-missing warning carries them to the terminal), and
matplotlib escapes them in the SVG; each chart gets its own id
salt so ids never collide between the charts of one page and the output is reproducible.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from wattwise._safe_text import printable
from wattwise.report._data import (
    STAGE_ORDER,
    best_epochs,
    co2e_column,
    cost_column,
    pareto_mask,
)
from wattwise.units import J_PER_WH

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from wattwise.report._data import ReportData

TIMELINE_POINTS = 200
STAGE_COLORS = {
    "sanity_check": "#c7c7c7",
    "train": "#1f77b4",
    "validate": "#ff7f0e",
    "test": "#2ca02c",
    "predict": "#9467bd",
    "other": "#8c564b",
}
KIND_COLORS = {"gpu": "#d62728", "cpu": "#1f77b4", "ram": "#7f7f7f"}
_STYLE = {
    "svg.fonttype": "none",
    "text.parse_math": False,
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.frameon": False,
}
_DROP = re.compile(r"<\?xml[^>]*>|<!DOCTYPE[^>]*>|<metadata>.*?</metadata>", re.S)


@contextmanager
def _style() -> Iterator[None]:
    import matplotlib as mpl

    with mpl.rc_context(_STYLE):
        yield


def _grid(
    rows: int,
    cols: int = 1,
    *,
    row_in: float,
    left_in: float = 0.85,
    gap_in: float = 0.55,
    width_in: float = 7.5,
    **share: bool,
) -> tuple[Figure, Any]:
    """A figure of ``rows`` x ``cols`` axes with fixed margins in inches (constrained layout
    would cost most of the report's time); returns the figure and a 2-D array of axes."""
    from matplotlib.figure import Figure

    top_in, bottom_in = 0.3, 0.5
    height_in = top_in + rows * row_in + (rows - 1) * gap_in + bottom_in
    fig = Figure(figsize=(width_in, height_in))
    axes = fig.subplots(rows, cols, squeeze=False, **share)
    fig.subplots_adjust(
        left=left_in / width_in,
        right=1 - 0.15 / width_in,
        top=1 - top_in / height_in,
        bottom=bottom_in / height_in,
        hspace=gap_in / row_in,
        wspace=0.08,
    )
    return fig, axes


def _label_width_in(labels: Sequence[str]) -> float:
    """Left margin that fits tick labels of this many characters at 9 pt."""
    return min(3.0, 0.3 + 0.068 * max((len(label) for label in labels), default=0))


def _svg(fig: Figure, name: str) -> str:
    """The figure as an ``<svg>`` element for inline use: no XML prolog, DOCTYPE or metadata."""
    import matplotlib as mpl

    buf = io.StringIO()
    with mpl.rc_context({"svg.hashsalt": name}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    return _DROP.sub("", buf.getvalue()).strip()


def architecture_colors(architectures: Sequence[str]) -> dict[str, str]:
    """A stable colour per architecture, in order of first appearance."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    palette = colormaps["tab10" if len(architectures) <= 10 else "tab20"]
    return {a: to_hex(palette(i % palette.N)) for i, a in enumerate(architectures)}


def pareto(data: ReportData, colors: dict[str, str]) -> str | None:
    """Headline metric against total energy, one point per run, the Pareto frontier drawn."""
    if data.metric is None:
        return None
    runs = data.runs[data.runs[data.metric].notna()]
    if runs.empty:
        return None
    energy = runs["total_wh"].tolist()
    metric = runs[data.metric].astype(float).tolist()
    frontier = pareto_mask(energy, metric, lower=data.metric_lower_is_better)
    with _style():
        fig, axes = _grid(1, row_in=3.4)
        ax = axes[0, 0]
        for arch, group in runs.groupby("architecture", sort=False):
            ax.scatter(
                group["total_wh"],
                group[data.metric],
                s=22,
                color=colors[arch],
                label=printable(arch),
            )
        points = sorted((e, m) for e, m, f in zip(energy, metric, frontier, strict=True) if f)
        ax.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            drawstyle="steps-post",
            color="black",
            linewidth=1,
            marker="o",
            markersize=9,
            markerfacecolor="none",
            label="Pareto frontier",
        )
        if min(energy) > 0 and max(energy) > 50 * min(energy):  # a log axis hides zeros
            ax.set_xscale("log")
        ax.set_xlabel("energy (Wh, device total before PUE)")
        better = "lower is better" if data.metric_lower_is_better else "higher is better"
        ax.set_ylabel(printable(f"{data.metric.removeprefix('metric/')} ({better})"))
        _legend(ax)
        return _svg(fig, "pareto")


def epoch_energy(data: ReportData, architectures: Sequence[str]) -> str | None:
    """Mean energy per run of each training epoch, split by stage, one panel per architecture."""
    phases = data.phases[
        data.phases["epoch"].notna() & data.phases["architecture"].isin(architectures)
    ]
    if phases.empty:
        return None
    per_run = phases.groupby(["architecture", "run_id", "epoch", "stage"])["energy_j"].sum()
    mean = per_run.groupby(["architecture", "epoch", "stage"]).mean() / J_PER_WH
    present = [a for a in architectures if a in mean.index.get_level_values(0)]
    stages = [s for s in STAGE_ORDER if s in set(mean.index.get_level_values(2))]
    stages += sorted(set(mean.index.get_level_values(2)) - set(stages))
    with _style():
        fig, grid = _grid(len(present), row_in=1.5, sharex=True)
        axes = grid[:, 0]
        for ax, arch in zip(axes, present, strict=True):
            table = mean.loc[arch].unstack("stage").reindex(columns=stages).fillna(0.0)
            epochs = table.index.to_numpy(dtype=float)
            bottom = 0.0
            for stage in stages:
                values = table[stage].to_numpy()
                color = STAGE_COLORS.get(stage, "#bcbd22")
                if len(epochs) <= 40:
                    ax.bar(
                        epochs,
                        values,
                        bottom=bottom,
                        width=0.8,
                        color=color,
                        label=printable(stage),
                    )
                else:
                    ax.fill_between(
                        epochs,
                        bottom,
                        bottom + values,
                        step="mid",
                        color=color,
                        label=printable(stage),
                    )
                bottom = bottom + values
            ax.set_title(printable(arch), loc="left")
            ax.set_ylabel("Wh per epoch")
        axes[-1].set_xlabel("epoch")
        _legend(axes[0])
        return _svg(fig, "epochs")


def timelines(
    data: ReportData, run_ids: Sequence[str], series: dict[str, dict[str, Any]]
) -> str | None:
    """Power over time of each run: its stored timeline downsampled, else per-phase mean power."""
    if not run_ids:
        return None
    names = data.phases.drop_duplicates("device_id").set_index("device_id")
    with _style():
        fig, grid = _grid(len(run_ids), row_in=1.0)
        axes = grid[:, 0]
        for ax, rid in zip(axes, run_ids, strict=True):
            run = data.runs.loc[data.runs["run_id"] == rid].iloc[0]
            source = series[rid]
            for device_id, (t_s, power_w) in source["lines"].items():
                kind = names["kind"].get(device_id, device_id.split(":")[0])
                ax.plot(
                    t_s,
                    power_w,
                    linewidth=0.9,
                    color=KIND_COLORS.get(kind),
                    label=printable(f"{kind}: {names['device_name'].get(device_id, device_id)}"),
                    drawstyle="steps-post" if source["from_phases"] else "default",
                )
            how = "per-phase mean power" if source["from_phases"] else "sampled power"
            ax.set_title(printable(f"{run['architecture']} · {rid[:8]} ({how})"), loc="left")
            ax.set_ylabel("W")
            ax.set_ylim(bottom=0)
            _legend(ax, fontsize=7)
        axes[-1].set_xlabel("seconds since the run started")
        return _svg(fig, "timelines")


def timeline_series(data: ReportData, ledger: Any, run_id: str) -> dict[str, Any]:
    """``{"lines": {device_id: (t_s, power_w)}, "from_phases": bool}`` for one run."""
    import numpy as np

    stored = ledger.timeline(run_id)
    if any(len(points) for points in stored.values()):
        t0 = min(points[0][0] for points in stored.values() if len(points))
        lines = {}
        for device_id, points in stored.items():
            if len(points):
                arr = np.asarray(points, dtype=float)
                lines[device_id] = (_downsample(arr[:, 0] - t0), _downsample(arr[:, 1]))
        return {"lines": lines, "from_phases": False}
    phases = data.phases[data.phases["run_id"] == run_id].dropna(subset=["mean_power_w"])
    lines = {}
    if not phases.empty:
        t0 = phases["start_s"].min()
        for device_id, group in phases.groupby("device_id", sort=False):
            group = group.sort_values("start_s")
            t = np.append(group["start_s"].to_numpy(), group["end_s"].iloc[-1]) - t0
            p = np.append(group["mean_power_w"].to_numpy(), group["mean_power_w"].iloc[-1])
            lines[device_id] = (_downsample(t), _downsample(p))
    return {"lines": lines, "from_phases": True}


def _downsample(values: Any, points: int = TIMELINE_POINTS) -> Any:
    """Bucket means down to at most ``points`` values (keeps the energy shape of the curve)."""
    import numpy as np

    if len(values) <= points:
        return values
    edges = np.linspace(0, len(values), points + 1).astype(int)[:-1]
    counts = np.diff(np.append(edges, len(values)))
    return np.add.reduceat(values, edges) / counts


def cost_and_carbon(data: ReportData, architectures: Sequence[str], colors: dict[str, str]) -> str:
    """Mean cost and CO2e per run of each architecture, grouped by pricing scenario."""
    import numpy as np
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    runs = data.runs[data.runs["architecture"].isin(architectures)]
    means = runs.groupby("architecture", sort=False).mean(numeric_only=True)
    means = means.reindex([a for a in architectures if a in means.index])
    names = [s.name for s in data.scenarios]
    with _style():
        labels = [printable(a) for a in means.index]
        fig, grid = _grid(
            1,
            2,
            row_in=0.3 * len(means) * max(len(names), 1) + 0.4,
            left_in=_label_width_in(labels),
            sharey=True,
        )
        ax_cost, ax_co2 = grid[0]
        height = 0.8 / max(len(names), 1)
        y = np.arange(len(means))
        hatches = ["", "//", "..", "xx", "\\\\", "++"]
        keys = []
        for i, name in enumerate(names):
            offset = y - 0.4 + height * (i + 0.5)
            hatch = hatches[i % len(hatches)]
            style = {"height": height, "hatch": hatch, "edgecolor": "white"}
            bar_colors = [colors[a] for a in means.index]
            ax_cost.barh(offset, means[cost_column(name)], color=bar_colors, **style)
            ax_co2.barh(offset, means[co2e_column(name)], color=bar_colors, **style)
            keys.append(
                Patch(facecolor="#777777", edgecolor="white", hatch=hatch, label=printable(name))
            )
        ax_cost.set_yticks(y, labels)
        ax_cost.invert_yaxis()
        ax_cost.set_xlabel("USD per run (mean)")
        ax_co2.set_xlabel("kg CO2e per run (mean)")
        for ax in (ax_cost, ax_co2):
            ax.xaxis.set_major_locator(MaxNLocator(4))
            ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 4))
        if len(names) > 1:
            ax_co2.legend(handles=keys, title="scenario", fontsize=7, loc="lower right")
        return _svg(fig, "cost")


def params_energy(data: ReportData, run_ids: Sequence[str], colors: dict[str, str]) -> str | None:
    """Trainable parameters against cumulative energy at each epoch end, for models that grow."""
    if not run_ids:
        return None
    phases = data.phases[data.phases["run_id"].isin(run_ids) & data.phases["epoch"].notna()]
    per_epoch = phases.groupby(["run_id", "epoch"])["energy_j"].sum()
    snapshots = data.snapshots[data.snapshots["run_id"].isin(run_ids)]
    with _style():
        fig, axes = _grid(1, row_in=2.8)
        ax = axes[0, 0]
        for rid in run_ids:
            snaps = snapshots[snapshots["run_id"] == rid].sort_values("epoch")
            if rid not in per_epoch.index.get_level_values(0) or snaps.empty:
                continue
            cumulative_wh = per_epoch.loc[rid].cumsum() / J_PER_WH
            wh = cumulative_wh.reindex(snaps["epoch"].astype(int)).ffill().fillna(0.0)
            arch = data.runs.loc[data.runs["run_id"] == rid, "architecture"].iloc[0]
            ax.plot(
                wh.to_numpy(),
                snaps["trainable_params"].to_numpy(),
                marker="o",
                markersize=3,
                drawstyle="steps-pre",
                color=colors[arch],
                label=printable(f"{arch} · {rid[:8]}"),
            )
        ax.set_xlabel("cumulative energy at epoch end (Wh)")
        ax.set_ylabel("trainable parameters")
        _legend(ax)
        return _svg(fig, "params")


def shape_energy(data: ReportData, run_ids: Sequence[str], colors: dict[str, str]) -> str | None:
    """Width and depth (the ``GROWTH_METRICS`` a model records per epoch) against the run's
    cumulative energy at each epoch end, one panel each, for models that grow."""
    curves = {
        name: frame[frame["run_id"].isin(run_ids)]
        for name, frame in data.growth_curves.items()
        if frame is not None
    }
    curves = {name: frame for name, frame in curves.items() if not frame.empty}
    if not run_ids or not curves:
        return None
    architecture = dict(zip(data.runs["run_id"], data.runs["architecture"], strict=True))
    with _style():
        fig, grid = _grid(len(curves), row_in=1.6, sharex=True)
        axes = grid[:, 0]
        for ax, (name, frame) in zip(axes, curves.items(), strict=True):
            for rid, group in frame.groupby("run_id", sort=False):
                group = group.sort_values("epoch")
                arch = architecture[rid]
                ax.plot(
                    group["cumulative_wh"].to_numpy(),
                    group["value"].to_numpy(),
                    marker="o" if len(group) <= 30 else None,
                    markersize=3,
                    drawstyle="steps-pre",
                    color=colors[arch],
                    label=f"{arch} · {rid[:8]}",
                )
            ax.set_ylabel(name.removeprefix("arch/"))
            ax.set_ylim(bottom=0)
        axes[-1].set_xlabel("cumulative energy at epoch end (Wh, device total before PUE)")
        _legend(axes[0], fontsize=7)
        return _svg(fig, "shape")


def val_energy(data: ReportData, run_ids: Sequence[str], colors: dict[str, str]) -> str | None:
    """The per-epoch validation metric against the run's cumulative energy at each epoch end,
    one line per run, its best epoch ringed."""
    if not run_ids or data.val_curves is None or data.val_metric is None:
        return None
    curves = data.val_curves[data.val_curves["run_id"].isin(run_ids)]
    if curves.empty:
        return None
    best = best_epochs(curves, lower=data.val_metric_lower_is_better)
    architecture = dict(zip(data.runs["run_id"], data.runs["architecture"], strict=True))
    with _style():
        fig, axes = _grid(1, row_in=3.0)
        ax = axes[0, 0]
        for rid, group in curves.groupby("run_id", sort=False):
            group = group.sort_values("epoch")
            arch = architecture[rid]
            ax.plot(
                group["cumulative_wh"].to_numpy(),
                group["value"].to_numpy(),
                # a marker per epoch only where there are few: each one is an SVG element
                marker="o" if len(group) <= 30 else None,
                markersize=2.5,
                linewidth=1,
                color=colors[arch],
                label=printable(f"{arch} · {rid[:8]}"),
            )
            ax.plot(
                [best.loc[rid, "cumulative_wh"]],
                [best.loc[rid, "value"]],
                marker="o",
                markersize=8,
                markerfacecolor="none",
                color="black",
                linewidth=0,
            )
        if data.target_val is not None:
            ax.axhline(
                data.target_val, color="#555555", linestyle="--", linewidth=0.8, label="target"
            )
        ax.set_xlabel("cumulative energy at epoch end (Wh, device total before PUE)")
        better = "lower is better" if data.val_metric_lower_is_better else "higher is better"
        ax.set_ylabel(printable(f"{data.val_metric} ({better})"))
        _legend(ax, fontsize=7)
        return _svg(fig, "val")


def lineage(data: ReportData, run_ids: Sequence[str], colors: dict[str, str]) -> str | None:
    """Own energy against cumulative energy including ancestors, per run with lineage."""
    if not run_ids:
        return None
    import numpy as np

    runs = data.runs.set_index("run_id").loc[list(run_ids)]
    with _style():
        labels = [printable(f"{a} · {rid[:8]}") for rid, a in runs["architecture"].items()]
        fig, axes = _grid(1, row_in=0.4 * len(runs) + 0.4, left_in=_label_width_in(labels))
        ax = axes[0, 0]
        y = np.arange(len(runs))
        ax.barh(y, runs["cumulative_wh"], color="#cccccc", label="cumulative (with ancestors)")
        ax.barh(
            y,
            runs["total_wh"],
            height=0.45,
            color=[colors[a] for a in runs["architecture"]],
            label="own",
        )
        ax.set_yticks(y, labels)
        ax.invert_yaxis()
        ax.set_xlabel("energy (Wh)")
        _legend(ax)
        return _svg(fig, "lineage")


def _legend(ax: Axes, fontsize: float = 8) -> None:
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize=fontsize, loc="best", ncols=1 if len(handles) < 6 else 2)
