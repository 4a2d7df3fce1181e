"""`wattwise runs` (list, show, rm, merge) and `wattwise run -- COMMAND ...` (measure a command)."""

from __future__ import annotations

import json
import pathlib
import shutil
import signal
from typing import Annotated

import typer

from wattwise._safe_text import literal, printable
from wattwise._supervise import Outcome, Supervisor, signal_name
from wattwise.commands import console, make_table, print_json, print_table
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
from wattwise.errors import BadInput
from wattwise.ledger.location import mask
from wattwise.units import j_to_wh

LedgerOption = Annotated[
    str | None,
    typer.Option(
        "--ledger",
        help="Ledger: a file or a postgresql:// URL (default: $WATTWISE_LEDGER or ./wattwise.db).",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]
RunArgument = Annotated[str, typer.Argument(help="Run id or a unique prefix of one.")]

_ID_PREFIX = 8

runs_app = typer.Typer(
    name="runs",
    help="List the runs in the ledger; show, remove or merge them.",
    invoke_without_command=True,
    no_args_is_help=False,
)


def _ledger(path: str | None, ctx: typer.Context):  # -> wattwise.ledger.Ledger
    from wattwise.ledger import Ledger

    if path is None and ctx.parent is not None:
        path = ctx.parent.params.get("ledger")
    return Ledger(path)


def _want_json(flag: bool, ctx: typer.Context) -> bool:
    return flag or bool(ctx.parent is not None and ctx.parent.params.get("json_out"))


def _wh(energy_j: float) -> str:
    return f"{j_to_wh(energy_j):.4g}"


@runs_app.callback()
def runs_command(
    ctx: typer.Context,
    ledger: LedgerOption = None,
    json_out: JsonOption = False,
    user: UserFilter = None,
    job: JobFilter = None,
    tag: TagFilter = None,
    architecture: ArchitectureFilter = None,
    since: SinceFilter = None,
    until: UntilFilter = None,
    status: StatusFilter = None,
) -> None:
    """List the runs in the ledger (a run whose process is gone shows as interrupted)."""
    if ctx.invoked_subcommand is not None:
        return
    run_filter = build(user, job, tag, architecture, since, until, status)
    with _ledger(ledger, ctx) as book:
        records = book.list_runs(run_filter)
    if json_out:
        print_json([rec.to_json() for rec in records])
        return
    out = console()
    if not records:
        matching = "" if run_filter.empty else f" matching {run_filter.describe()}"
        out.print(literal(f"No runs{matching} in {book.path}."))
        return
    table = make_table(title=str(book.path))
    # in a narrow terminal labels fold and the rest wraps at spaces: ids, numbers and method
    # names stay whole (see print_table)
    columns = ["id", "architecture", "status", "started (UTC)", "epochs", "Wh", "method mix"]
    # a lab's ledger: who ran it and as which job (a ledger of one person's runs shows neither)
    if any(rec.job_id for rec in records) or len({rec.user for rec in records}) > 1:
        columns[2:2] = ["user", "job"]
    if book.is_server:  # runs whose latest writes are still in this folder's spool
        columns.append("shipped")
    for name in columns:
        table.add_column(
            name,
            no_wrap=name in ("id", "epochs", "Wh", "job"),
            overflow="fold" if name in ("architecture", "user") else "ellipsis",
        )
    for rec in records:
        cells = {
            "id": rec.run_id[:_ID_PREFIX],
            "architecture": rec.architecture,
            "user": rec.user or "-",
            "job": rec.job_id or "-",
            "status": rec.status,
            "started (UTC)": rec.started_at[:16].replace("T", " "),
            "epochs": str(rec.epochs),
            "Wh": _wh(rec.energy_j),
            "method mix": rec.method_mix,
            "shipped": "waiting (spool)" if rec.waiting else "yes",
        }
        table.add_row(*(cells[name] for name in columns))
    print_table(out, table)
    waiting = sum(rec.waiting for rec in records)
    if waiting:
        out.print(
            literal(
                f"{waiting} run(s) still waiting in the spool {book.spool_path}: "
                "`wattwise runs sync` ships them"
            )
        )


@runs_app.command("show")
def show_command(
    ctx: typer.Context,
    run: RunArgument,
    ledger: LedgerOption = None,
    json_out: JsonOption = False,
) -> None:
    """One run: its record, energy per epoch x stage x device, snapshots and lineage."""
    with _ledger(ledger, ctx) as book:
        rec = book.get_run(run)
        phases = book.phases(rec.run_id)
        snapshots = book.snapshots(rec.run_id)
        own_j = book.own_energy_j(rec.run_id)
        lineage = [
            {
                "run_id": rid,
                "architecture": book.get_run(rid).architecture,
                "own_energy_wh": j_to_wh(book.own_energy_j(rid)),
            }
            for rid in book.ancestors(rec.run_id)
        ]
        cumulative_j = book.cumulative_energy_j(rec.run_id)
    phase_rows = json.loads(phases.to_json(orient="records"))
    snapshot_rows = json.loads(snapshots.to_json(orient="records"))
    if _want_json(json_out, ctx):
        print_json(
            {
                **rec.to_json(),
                "phases": phase_rows,
                "snapshots": snapshot_rows,
                "lineage": {
                    "ancestors": lineage,
                    "own_energy_wh": j_to_wh(own_j),
                    "cumulative_energy_wh": j_to_wh(cumulative_j),
                },
            }
        )
        return
    _show(rec, phase_rows, snapshot_rows, lineage, own_j, cumulative_j)


def _show(rec, phase_rows, snapshot_rows, lineage, own_j, cumulative_j) -> None:
    from rich.text import Text

    out = console()
    duration = "-" if rec.duration_s is None else f"{rec.duration_s:.1f} s"
    # a kind no device measured is missing ("-"), never a silent 0 Wh (as in `runs --json`)
    by_kind = ", ".join(
        f"{k} {_wh(v) if k in rec.measured_kinds else '-'}" for k, v in rec.energy_by_kind_j.items()
    )
    for label, value in (
        ("run", rec.run_id),
        ("architecture", rec.architecture),
        ("status", rec.status + (f" ({rec.reason})" if rec.reason else "")),
        ("started (UTC)", rec.started_at),
        ("ended (UTC)", rec.ended_at or "-"),
        ("duration", duration),
        ("epochs", str(rec.epochs)),
        ("energy", f"{_wh(rec.energy_j)} Wh ({rec.method_mix or 'no phases'})"),
        ("by kind (Wh)", by_kind),
        ("flags", ", ".join(rec.flags) or "-"),
        ("host / pid", f"{rec.host} / {rec.pid}"),
        ("git commit", rec.git_commit or "-"),
        ("versions", ", ".join(f"{k} {v}" for k, v in sorted(rec.versions.items()) if v)),
        ("region / pricing", f"{rec.region or '-'} / {rec.pricing or '-'}"),
        ("metrics", ", ".join(f"{k}={v:.4g}" for k, v in sorted(rec.metrics.items())) or "-"),
    ):
        out.print(Text.assemble((f"{label:>17}", "bold"), "  ", literal(value)))
    _show_scheduler(out, rec.scheduler)
    if lineage:
        out.print(
            Text.assemble(
                (f"{'lineage':>17}", "bold"),
                f"  own {_wh(own_j)} Wh, with {len(lineage)} ancestor(s) {_wh(cumulative_j)} Wh",
            )
        )
        for item in lineage:
            out.print(
                literal(
                    f"{'':>19}<- {item['run_id'][:_ID_PREFIX]} {item['architecture']} "
                    f"{item['own_energy_wh']:.4g} Wh"
                )
            )
    if phase_rows:
        table = make_table(title="Energy per epoch x stage x device")
        for name in ("epoch", "stage", "device", "s", "Wh", "mean W", "peak W", "method", "flags"):
            table.add_column(name, overflow="fold" if name == "device" else "ellipsis")
        for row in phase_rows:
            table.add_row(
                "-" if row["epoch"] is None else str(row["epoch"]),
                row["stage"],
                row["device_id"],
                f"{row['duration_s']:.2f}" if row["duration_s"] is not None else "-",
                _wh(row["energy_j"]),
                "-" if row["mean_power_w"] is None else f"{row['mean_power_w']:.1f}",
                "-" if row["peak_power_w"] is None else f"{row['peak_power_w']:.1f}",
                row["method"],
                row["flags"],
            )
        print_table(out, table)
    if snapshot_rows:
        table = make_table(title="Model size per epoch")
        for name in ("epoch", "trainable", "total", "class", "label"):
            table.add_column(name)
        for row in snapshot_rows:
            table.add_row(
                "-" if row["epoch"] is None else str(row["epoch"]),
                str(row["trainable_params"]),
                str(row["total_params"]),
                str(row["model_class"]),
                str(row["label"]),
            )
        print_table(out, table)


_SECTION_TITLES = {"slurm": "SLURM", "kubernetes": "Kubernetes", "torchrun": "torchrun"}


def _show_scheduler(out, scheduler: dict) -> None:
    """The Scheduler section: the join keys, then each scheduler's fields that were set."""
    from rich.text import Text

    out.print(Text("Scheduler", "bold"))
    if not scheduler:
        out.print(literal(f"{'':>19}not recorded (a run from before wattwise recorded it)"))
        return
    rows = [(label, scheduler.get(key) or "-") for label, key in _JOIN_KEYS]
    for section, title in _SECTION_TITLES.items():
        values = scheduler.get(section)
        if values:
            shown = ", ".join(f"{k}={v}" for k, v in values.items() if v is not None)
            rows.append((title, shown or "-"))
    for label, value in rows:
        out.print(Text.assemble((f"{label:>17}", "bold"), "  ", literal(str(value))))


_JOIN_KEYS = (("user", "user"), ("job", "job_id"), ("OS user", "os_user"))


@runs_app.command("rm")
def rm_command(
    ctx: typer.Context,
    run: RunArgument,
    ledger: LedgerOption = None,
    json_out: JsonOption = False,
) -> None:
    """Delete a run and everything recorded for it."""
    with _ledger(ledger, ctx) as book:
        run_id = book.get_run(run).run_id
        book.remove(run_id)
    if _want_json(json_out, ctx):
        print_json({"removed": run_id})
    else:
        typer.echo(printable(f"removed run {run_id}"))


@runs_app.command("merge")
def merge_command(
    ctx: typer.Context,
    other: Annotated[
        str,
        typer.Argument(
            help="Another ledger (a file or a postgresql:// URL) whose runs this one lacks."
        ),
    ],
    ledger: LedgerOption = None,
    json_out: JsonOption = False,
) -> None:
    """Import the runs of another ledger (idempotent: runs already here are skipped)."""
    with _ledger(ledger, ctx) as book:
        added, skipped = book.merge(other)
    if _want_json(json_out, ctx):
        print_json({"added": added, "skipped": skipped, "ledger": str(book.path)})
    else:
        typer.echo(
            printable(
                f"merged {mask(other)} into {book.path}: {added} run(s) added, "
                f"{skipped} already there"
            )
        )


@runs_app.command("sync")
def sync_command(
    ctx: typer.Context,
    ledger: LedgerOption = None,
    json_out: JsonOption = False,
) -> None:
    """Ship the runs waiting in this folder's spool to the ledger server (idempotent)."""
    with _ledger(ledger, ctx) as book:
        if not book.is_server:
            raise BadInput(
                f"ledger {str(book.path)!r} is a file: it has no spool to ship; accepted: a "
                "postgresql:// ledger (--ledger URL or WATTWISE_LEDGER)"
            )
        shipped, waiting = book.sync()
        spool = str(book.spool_path)
    if _want_json(json_out, ctx):
        print_json(
            {"shipped": shipped, "waiting": waiting, "ledger": str(book.path), "spool": spool}
        )
    else:
        typer.echo(
            printable(f"shipped {shipped} run(s) from {spool} to {book.path}; {waiting} waiting")
        )


def run_command(
    command: Annotated[
        list[str] | None,
        typer.Argument(help="The command to measure, after --.", show_default=False),
    ] = None,
    ledger: LedgerOption = None,
    architecture: Annotated[
        str | None,
        typer.Option("--architecture", help="Label of the run (default: the program's name)."),
    ] = None,
    metrics_port: Annotated[
        str | None,
        typer.Option(
            "--metrics-port",
            help="Serve live OpenMetrics on http://HOST:PORT/metrics while the command runs: a "
            "port (all interfaces) or HOST:PORT (default: $WATTWISE_METRICS_PORT, else none).",
            show_default=False,
        ),
    ] = None,
    pushgateway: Annotated[
        str | None,
        typer.Option(
            "--pushgateway",
            help="HOST:PORT of a Prometheus Pushgateway to push the run's metrics to at its "
            "end (default: $WATTWISE_PUSHGATEWAY, else none).",
            show_default=False,
        ),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Measure any command: its energy becomes a run in the ledger; its exit code is passed on.

    SIGHUP, SIGINT and SIGTERM sent to wattwise are passed on to the command (Ctrl+C in a
    terminal reaches it directly, once); wattwise waits for it to end however many signals
    come, records the run as interrupted, with the energy measured until then and the signal
    as its reason, and exits as the command did (128 + N when signal N killed it)."""
    from wattwise.ledger import Ledger
    from wattwise.meter import Meter

    if not command:
        raise BadInput("no command given; use: wattwise run [OPTIONS] -- COMMAND [ARGS ...]")
    if shutil.which(command[0]) is None:
        raise BadInput(
            f"command {command[0]!r} not found or not executable; give a program on PATH"
        )
    metrics_port, pushgateway = _live_settings(metrics_port, pushgateway)
    label = architecture or pathlib.Path(command[0]).name
    # signals are held before the meter starts its sampler thread, which inherits the mask
    with Ledger(ledger) as book, Supervisor(notify=lambda m: typer.echo(m, err=True)) as sup:
        meter = Meter(
            ledger=book, architecture=label, metrics_port=metrics_port, pushgateway=pushgateway
        )
        meter.start()
        if meter.metrics_url is not None:
            typer.echo(f"wattwise: live metrics on {meter.metrics_url}", err=True)
        try:
            outcome = sup.run(command)
        except OSError as err:  # found on PATH but cannot be executed
            result = meter.stop("failed")
            if result.run_id is not None:
                book.set_status(result.run_id, "failed", reason=f"cannot start: {err}")
            raise BadInput(
                f"command {command[0]!r} cannot be started ({err}); give an executable program"
            ) from err
        except BaseException:
            meter.stop("failed")
            raise
        status, reason = _status(outcome)
        result = meter.stop(status)
        if reason is not None and result.run_id is not None:
            book.set_status(result.run_id, status, reason=reason)
    code = outcome.exit_code
    summary = {
        "run_id": result.run_id,
        "architecture": label,
        "status": result.status,
        "reason": reason,
        "exit_code": code,
        "duration_s": result.duration_s,
        "energy_j": result.energy_j,
        "energy_wh": result.energy_wh,
        # as in `runs --json`: a kind no device measured is null, not 0
        "energy_by_kind_wh": {
            k: j_to_wh(v) if any(d.kind == k for d in result.devices) else None
            for k, v in result.energy_by_kind_j.items()
        },
        "methods": result.methods,
        "flags": sorted(result.flags),
        "ledger": str(book.path),
    }
    if json_out:
        print_json(summary)
    else:
        typer.echo(
            printable(
                f"wattwise: run {result.run_id} {result.status} "
                + (f"({reason}, exit code {code}): " if reason else f"(exit code {code}): ")
                + f"{result.duration_s:.1f} s, {result.energy_wh:.4g} Wh, "
                + ", ".join(f"{d} {m}" for d, m in sorted(result.methods.items()))
            ),
            err=True,
        )
    if code != 0:
        raise typer.Exit(code)


def _live_settings(metrics_port: str | None, pushgateway: str | None) -> tuple[str | None, ...]:
    """The flags, else the configuration in force (``WATTWISE_METRICS_PORT``,
    ``WATTWISE_PUSHGATEWAY``, wattwise.toml), checked before the command starts (exit 2)."""
    from wattwise import config, metrics

    if metrics_port is None or pushgateway is None:
        settings = config.load()
        metrics_port = metrics_port or settings.get("metrics_port")
        pushgateway = pushgateway or settings.get("pushgateway")
    if metrics_port is not None:
        metrics.parse_endpoint(metrics_port, "--metrics-port")
    if pushgateway is not None:
        metrics.parse_gateway(pushgateway, "--pushgateway")
    return metrics_port, pushgateway


# a command killed by one of these was stopped from outside, not failing by itself
_STOPPING = tuple(getattr(signal, n) for n in ("SIGHUP", "SIGINT", "SIGTERM", "SIGKILL"))


def _status(outcome: Outcome) -> tuple[str, str | None]:
    """The run's status and reason for how the command ended (``_supervise.Outcome``)."""
    if outcome.signals:  # wattwise was asked to stop: the run was interrupted
        name = signal_name(outcome.signals[0])
        return "interrupted", f"{name} received; the command {outcome.ended()}"
    if outcome.killed_by in _STOPPING:
        return "interrupted", f"the command {outcome.ended()}"
    if outcome.killed_by is not None:
        return "failed", f"command {outcome.ended()}"
    if outcome.returncode != 0:
        return "failed", f"command exited with code {outcome.returncode}"
    return "finished", None


def register(app: typer.Typer) -> None:
    """Add `wattwise runs ...` and `wattwise run -- COMMAND ...` to the app."""
    app.add_typer(runs_app)
    app.command(
        "run",
        context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True},
    )(run_command)
