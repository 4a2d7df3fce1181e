"""Reports: one self-contained HTML page and CSV files that compare runs and architectures.

``build_report`` reads runs from a :class:`~wattwise.ledger.Ledger`, prices them with
``wattwise.pricing`` and ``wattwise.carbon``, and writes ``runs.csv`` (one row per run),
``phases.csv`` (one row per run x epoch x stage x device) and ``report.html`` (CSS, charts and a
small sort script inline; nothing fetched from anywhere, readable offline and in print).

runs.csv columns: ``run_id, architecture, status, started_at, parent_run_id, tags, user, job_id``,
the scheduler fields ``slurm_*``, ``kubernetes_*``, ``torchrun_*``
(``wattwise.scheduler.flatten``), ``params_start, params_end, epochs, duration_s, gpu_wh, cpu_wh,
ram_wh, total_wh, method_mix, estimated_kinds, flags, region, gco2e_per_kwh``, then
``cost_usd[<scenario>]`` and ``co2e_kg[<scenario>]`` for each pricing scenario, one
``metric/<name>`` column per final metric, ``j_per_train_sample`` (energy of every stage of the
training epochs per training sample they processed; empty when any epoch's count is unknown),
``wh_to_best_val`` (the run's energy up to the end of the epoch with the best per-epoch validation
metric: the headline metric if it is one, else ``val_loss``) and ``cumulative_wh`` (own energy plus
every ancestor's). docs/internals.md defines both precisely.
"""

from __future__ import annotations

import logging
import os
import pathlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from wattwise.ledger import Ledger
    from wattwise.runfilter import RunFilter

logger = logging.getLogger(__name__)

__all__ = ["ReportResult", "build_report", "check_output"]


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
    run_filter: RunFilter | None = None,
) -> ReportResult:
    """Write the HTML report and the CSV files for ``run_ids`` (every run when None).

    ``ledger`` is a Ledger or its path; ``run_ids`` are ids or unique prefixes. ``region``
    overrides every run's own region for CO2e; ``pricing`` is a scenario name, a comma list or a
    sequence of names (default: the configured scenario plus those the runs were recorded with).
    ``run_filter`` (a ``wattwise.runfilter.RunFilter``) keeps the runs it matches (of
    ``run_ids`` when given; BadInput when none does).
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
        data = _data.collect(
            opened,
            run_ids,
            region=region,
            pricing=pricing,
            settings=settings,
            run_filter=run_filter,
        )
        result = ReportResult(html, csvs / "runs.csv", csvs / "phases.csv", len(data.runs))
        paths = (result.runs_csv, result.phases_csv, result.html_path)
        _make_folders(paths)
        try:
            # phases.csv (600,000 rows for 1,000 runs x 100 epochs: ~4 s of CPU) is written by
            # a forked child while this process draws the charts, where fork is safe
            children = _fork_csv_writers(result.phases_csv, data.phases)
            try:
                page = _html.render(data, opened)
                _write_tmp(result.runs_csv, _data.csv_text(data.runs))
                _write_tmp(result.html_path, page)
            finally:
                forked_ok = _join_parts(result.phases_csv, children)
            if not forked_ok:
                _write_tmp(result.phases_csv, _data.csv_text(data.phases))
        except BaseException:
            for path in paths:
                _remove(_tmp(path))
            raise
    for path in paths:
        os.replace(_tmp(path), path)
    return result


FORK_MIN_ROWS = 50_000
"""Below this many phase rows phases.csv is written in-process (a fork costs more)."""


def check_output(out_dir: str | os.PathLike[str]) -> None:
    """BadInput unless the report's files can be written under ``out_dir`` (the folder is
    created when missing, and a file written and removed there), by the rules ``build_report``
    applies: for callers that must know before a long job (``wattwise demo --out`` before
    training)."""
    from wattwise.errors import BadInput

    out = pathlib.Path(out_dir)
    paths = (out / "runs.csv", out / "phases.csv", out / "report.html")
    accepted = "a folder that can be created and written (--out DIR)"
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out {str(out)!r} is not a folder; accepted: {accepted}")
    _make_folders(paths, accepted=accepted, not_a_folder=accepted)
    probe = _tmp(out / "report.html")
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise _bad_path(out, err, accepted) from err


def _tmp(path: pathlib.Path) -> pathlib.Path:
    return path.with_name(f".{path.name}.tmp")


def _remove(path: pathlib.Path) -> None:
    """Clean-up that never hides the error being handled: where the file cannot be removed
    (a read-only file system refuses even a missing one) it cannot have been written either."""
    try:
        path.unlink(missing_ok=True)
    except OSError as err:
        logger.debug("could not remove %s: %s", path, err)


_ACCEPTED = "a writable location (--out DIR, --html FILE, --csv DIR)"
_NOT_A_FOLDER = "a file path for --html and a different folder for --csv"


def _bad_path(path: pathlib.Path, err: OSError, accepted: str = _ACCEPTED) -> Exception:
    from wattwise.errors import BadInput

    return BadInput(f"cannot write {str(path)!r} ({err.strerror or err}); accepted: {accepted}")


def _make_folders(
    paths: Sequence[pathlib.Path], accepted: str = _ACCEPTED, not_a_folder: str = _NOT_A_FOLDER
) -> None:
    """Every folder first, and every file through a temporary one renamed at the end, so a bad
    path leaves nothing half-written behind. ``accepted`` and ``not_a_folder`` end the messages
    of an unwritable path and of a file path that is a folder (they name the caller's options)."""
    from wattwise.errors import BadInput

    folders = {path.parent.absolute() for path in paths}
    for path in paths:
        full = path.absolute()
        if path.is_dir() or any(full == f or full in f.parents for f in folders):
            raise BadInput(f"cannot write {str(path)!r}: it is a folder; accepted: {not_a_folder}")
    for path in paths:
        if path.parent.exists() and not path.parent.is_dir():
            raise BadInput(
                f"cannot write {str(path)!r}: {str(path.parent)!r} is not a folder; "
                f"accepted: {accepted}"
            )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise _bad_path(path, err, accepted) from err


def _write_tmp(path: pathlib.Path, text: str) -> None:
    try:
        _tmp(path).write_text(text, encoding="utf-8")
    except OSError as err:
        raise _bad_path(path, err) from err


def _fork_csv_writers(path: pathlib.Path, frame: Any) -> list[int] | None:
    """Fork children that write ``frame`` as CSV, one slice of rows each (one per core, at most
    4), to numbered temporary files; their pids, or None where forking is not safe or not worth
    it (no ``os.fork``, other threads running, fewer than ``FORK_MIN_ROWS`` rows): the caller
    then writes the file itself."""
    import threading

    from wattwise.report import _data

    if len(frame) < FORK_MIN_ROWS or not hasattr(os, "fork") or threading.active_count() > 1:
        return None
    n = max(1, min(4, os.cpu_count() or 1))
    bounds = [len(frame) * k // n for k in range(n + 1)]
    pids: list[int] = []
    for k in range(n):
        try:
            pid = os.fork()
        except OSError:
            _join_parts(path, pids)
            return None
        if pid:
            pids.append(pid)
            continue
        code = 1  # the child: write its slice, then leave without the parent's exit handlers
        try:
            part = frame.iloc[bounds[k] : bounds[k + 1]]
            _part(path, k).write_text(_data.csv_text(part, header=k == 0), encoding="utf-8")
            code = 0
        finally:
            os._exit(code)
    return pids


def _part(path: pathlib.Path, k: int) -> pathlib.Path:
    return path.with_name(f".{path.name}.part{k}")


def _join_parts(path: pathlib.Path, pids: list[int] | None) -> bool:
    """Wait for the forked writers; True when every part was written and they are joined into
    ``path``'s temporary file (the parts are removed either way)."""
    import shutil

    if pids is None:
        return False
    ok = True
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        ok = ok and os.waitstatus_to_exitcode(status) == 0
    parts = [_part(path, k) for k in range(len(pids))]
    try:
        if ok:
            with _tmp(path).open("wb") as out:
                for part in parts:
                    with part.open("rb") as src:
                        shutil.copyfileobj(src, out, 1 << 20)
    except OSError:
        ok = False
    finally:
        for part in parts:
            _remove(part)
    return ok
