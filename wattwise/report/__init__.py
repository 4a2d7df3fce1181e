"""Reports: one self-contained HTML page and CSV files that compare runs and architectures.

``build_report`` reads runs from a :class:`~wattwise.ledger.Ledger`, prices them with
``wattwise.pricing`` and ``wattwise.carbon``, and writes ``runs.csv`` (one row per run),
``phases.csv`` (one row per run x epoch x stage x device) and ``report.html`` (CSS, charts and a
small sort script inline; nothing fetched from anywhere, readable offline and in print).

runs.csv columns: ``run_id, architecture, status, started_at, parent_run_id, tags, params_start,
params_end, epochs, duration_s, gpu_wh, cpu_wh, ram_wh, total_wh, method_mix, estimated_kinds,
flags, region, gco2e_per_kwh``, then ``cost_usd[<scenario>]`` and ``co2e_kg[<scenario>]`` for each
pricing scenario, one ``metric/<name>`` column per final metric, ``j_per_train_sample``
(energy of every stage of the training epochs per training sample they processed; empty when any
epoch's count is unknown), ``wh_to_best_val`` (the run's energy up to the end of the epoch with
the best per-epoch validation metric: the headline metric if it is one, else ``val_loss``) and
``cumulative_wh`` (own energy plus every ancestor's). docs/internals.md defines both precisely.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from wattwise.ledger import Ledger

__all__ = ["ReportResult", "build_report"]


@dataclass(frozen=True)
class ReportResult:
    """Where a report was written and how many runs it covers."""

    html_path: pathlib.Path
    runs_csv: pathlib.Path
    phases_csv: pathlib.Path
    n_runs: int

    def to_json(self) -> dict[str, Any]:
        return {
            "html": str(self.html_path),
            "runs_csv": str(self.runs_csv),
            "phases_csv": str(self.phases_csv),
            "n_runs": self.n_runs,
        }


def build_report(
    ledger: Ledger | str | os.PathLike[str],
    run_ids: Sequence[str] | None = None,
    *,
    out_dir: str | os.PathLike[str] = "reports",
    html_path: str | os.PathLike[str] | None = None,
    csv_dir: str | os.PathLike[str] | None = None,
    region: str | None = None,
    pricing: str | Sequence[str] | None = None,
    settings: Any = None,
) -> ReportResult:
    """Write the HTML report and the CSV files for ``run_ids`` (every run when None).

    ``ledger`` is a Ledger or its path; ``run_ids`` are ids or unique prefixes. ``region``
    overrides every run's own region for CO2e; ``pricing`` is a scenario name, a comma list or a
    sequence of names (default: the configured scenario plus those the runs were recorded with).
    Defaults: ``<out_dir>/report.html``, ``<out_dir>/runs.csv``, ``<out_dir>/phases.csv``.
    Raises BadInput for an empty ledger, an unknown run id, region or pricing scenario; nothing is
    written then.
    """
    from contextlib import nullcontext

    from wattwise import config
    from wattwise.ledger import Ledger
    from wattwise.report import _data, _html

    settings = settings if settings is not None else config.load()
    out = pathlib.Path(out_dir)
    html = pathlib.Path(html_path) if html_path is not None else out / "report.html"
    csvs = pathlib.Path(csv_dir) if csv_dir is not None else out
    with nullcontext(ledger) if isinstance(ledger, Ledger) else Ledger(ledger) as opened:
        data = _data.collect(opened, run_ids, region=region, pricing=pricing, settings=settings)
        page = _html.render(data, opened)
    result = ReportResult(html, csvs / "runs.csv", csvs / "phases.csv", len(data.runs))
    _write(
        {
            result.runs_csv: _data.csv_text(data.runs),
            result.phases_csv: _data.csv_text(data.phases),
            result.html_path: page,
        }
    )
    return result


def _write(files: dict[pathlib.Path, str]) -> None:
    """Write every file through a temporary one, after making every folder, so a bad path
    leaves nothing half-written behind."""
    from wattwise.errors import BadInput

    path = next(iter(files))
    try:
        for path in files:
            path.parent.mkdir(parents=True, exist_ok=True)
        for path, text in files.items():
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
    except OSError as err:
        raise BadInput(
            f"cannot write {str(path)!r} ({err.strerror or err}); accepted: a writable location "
            "(--html FILE, --csv DIR)"
        ) from err
