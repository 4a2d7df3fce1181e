"""The run filters shared by `wattwise runs`, `wattwise report` and `wattwise estimate --run`:
``--user --job --tag --architecture --since --until --status`` (see wattwise/runfilter.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:  # pragma: no cover
    from wattwise.ledger import Ledger, RunRecord
    from wattwise.runfilter import RunFilter

_PANEL = "Run filters"


def _option(name: str, help_text: str, metavar: str):
    return typer.Option(
        name, help=help_text, metavar=metavar, show_default=False, rich_help_panel=_PANEL
    )


UserFilter = Annotated[
    str | None, _option("--user", "Runs of this user (SLURM_JOB_USER, else the OS user).", "USER")
]
JobFilter = Annotated[
    str | None,
    _option(
        "--job",
        "Runs of this job: a SLURM job id (an array job's id: all its tasks), "
        "a Kubernetes pod or a torchrun run id.",
        "JOB",
    ),
]
TagFilter = Annotated[str | None, _option("--tag", "Runs with this tag.", "TAG")]
ArchitectureFilter = Annotated[
    str | None, _option("--architecture", "Runs with this label, exactly.", "LABEL")
]
SinceFilter = Annotated[
    str | None,
    _option(
        "--since",
        "Runs started at or after: 2026-11-02, 2026-11-02T09:30 (UTC unless an offset is "
        "given), or back from now: 30m, 12h, 7d, 2w.",
        "WHEN",
    ),
]
UntilFilter = Annotated[
    str | None,
    _option(
        "--until", "Runs started at or before (forms as --since; a date alone: to its end).", "WHEN"
    ),
]
StatusFilter = Annotated[
    str | None,
    _option("--status", "running, finished, failed or interrupted.", "STATUS"),
]


def build(
    user: str | None,
    job: str | None,
    tag: str | None,
    architecture: str | None,
    since: str | None,
    until: str | None,
    status: str | None,
) -> RunFilter:
    """The RunFilter of the options given (BadInput naming a bad value)."""
    from wattwise.runfilter import RunFilter

    return RunFilter.from_cli(
        user=user,
        job=job,
        tag=tag,
        architecture=architecture,
        since=since,
        until=until,
        status=status,
    )


def pick_run(ledger: Ledger, run: str | None, flt: RunFilter) -> RunRecord:
    """The run ``estimate --run`` means: an id or unique prefix among the runs the filters
    match; ``latest`` (or no --run with filters) the newest finished matching run (the newest
    of the given ``--status`` when one is given)."""
    from dataclasses import replace

    from wattwise.errors import BadInput

    if run is None or run.strip() == "latest":
        if flt.status is None:
            flt = replace(flt, status="finished")
        records = ledger.list_runs(flt)
        if not records:
            raise BadInput(
                f"no run in ledger {str(ledger.path)!r} matches {flt.describe()}; "
                "accepted: filters that some run matches (see `wattwise runs` with them)"
            )
        return max(records, key=lambda r: (r.started_at, r.run_id))
    if flt.empty:
        return ledger.get_run(run)
    prefix = run.strip()
    found = [r for r in ledger.list_runs(flt) if r.run_id.startswith(prefix)]
    exact = [r for r in found if r.run_id == prefix]
    if exact:
        return exact[0]
    if len(found) == 1:
        return found[0]
    if not found:
        raise BadInput(
            f"no run {prefix!r} among the runs of ledger {str(ledger.path)!r} that match "
            f"{flt.describe()}; accepted: a run id or unique prefix of a matching run "
            "(see `wattwise runs` with the same filters)"
        )
    shown = ", ".join(r.run_id for r in found[:5]) + (" ..." if len(found) > 5 else "")
    raise BadInput(
        f"run prefix {prefix!r} is ambiguous among the runs that match {flt.describe()}: it "
        f"matches {shown}; give more characters"
    )
