"""`wattwise report`: the HTML page and CSV files that compare the runs of a ledger."""

from __future__ import annotations

import pathlib
from typing import Annotated

import typer

from wattwise._safe_text import printable
from wattwise.commands import print_json
from wattwise.commands._filters import (
    ArchitectureFilter,
    JobFilter,
    SinceFilter,
    StatusFilter,
    TagFilter,
    UntilFilter,
    UserFilter,
    build,
)


def report_command(
    run_ids: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[RUN_ID]...", help="Runs to include (ids or unique prefixes; default all)."
        ),
    ] = None,
    ledger: Annotated[
        str | None,
        typer.Option(
            "--ledger",
            help="Ledger: a file or a postgresql:// URL (default: $WATTWISE_LEDGER or "
            "./wattwise.db).",
        ),
    ] = None,
    out: Annotated[
        pathlib.Path,
        typer.Option(
            "--out",
            metavar="DIR",
            help="Folder for report.html, runs.csv and phases.csv (as `wattwise demo --out`); "
            "--html and --csv, when given, win for their files.",
        ),
    ] = pathlib.Path("reports"),
    html: Annotated[
        pathlib.Path | None,
        typer.Option(
            "--html", metavar="FILE", help="HTML file to write (default: report.html in --out)."
        ),
    ] = None,
    csv_dir: Annotated[
        pathlib.Path | None,
        typer.Option(
            "--csv", metavar="DIR", help="Folder for runs.csv and phases.csv (default: --out)."
        ),
    ] = None,
    region: Annotated[
        str | None,
        typer.Option(
            "--region",
            help="Grid region for every run's CO2e (default: each run's own, else the "
            "configured one).",
        ),
    ] = None,
    pricing: Annotated[
        list[str] | None,
        typer.Option(
            "--pricing",
            help="Pricing scenario: onprem or provider:instance; repeat it or give a comma list.",
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Machine-readable JSON on stdout.")
    ] = False,
    user: UserFilter = None,
    job: JobFilter = None,
    tag: TagFilter = None,
    architecture: ArchitectureFilter = None,
    since: SinceFilter = None,
    until: UntilFilter = None,
    status: StatusFilter = None,
) -> None:
    """Write one self-contained HTML report and runs.csv / phases.csv comparing the runs
    (those given, or all; of them, those the run filters match)."""
    from wattwise.errors import BadInput
    from wattwise.ledger import FileLocation, Ledger, default_location, parse_location
    from wattwise.report import build_report

    run_filter = build(user, job, tag, architecture, since, until, status)
    path = parse_location(ledger if ledger is not None else default_location())
    if isinstance(path, FileLocation) and not path.path.exists():
        raise BadInput(
            f"no ledger at {path.masked!r}: accepted: an existing ledger file (--ledger PATH or "
            "$WATTWISE_LEDGER), written by EnergyCallback, wattwise.Meter or `wattwise run`"
        )
    with Ledger(path.url if not isinstance(path, FileLocation) else path.path) as opened:
        result = build_report(
            opened,
            run_ids or None,
            out_dir=out,
            html_path=html,
            csv_dir=csv_dir,
            region=region,
            pricing=pricing,
            run_filter=run_filter,
        )
    if as_json:
        print_json(result.to_json())
        return
    typer.echo(f"report of {result.n_runs} run{'s' if result.n_runs != 1 else ''}:")
    typer.echo(printable(f"  html:       {result.html_path}"))
    typer.echo(printable(f"  runs.csv:   {result.runs_csv}"))
    typer.echo(printable(f"  phases.csv: {result.phases_csv}"))


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""
    app.command("report")(report_command)
