"""`wattwise estimate`: what a planned run will take and cost on one or more GPUs."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated

import typer

from wattwise._safe_text import literal
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
    pick_run,
)
from wattwise.errors import BadInput
from wattwise.types import FLAGS

if TYPE_CHECKING:  # pragma: no cover
    from rich.text import Text

    from wattwise.estimate import EstimateResult


def _check_positive(flag: str, value: float | None, whole: bool = False) -> None:
    if value is None:
        return
    if not math.isfinite(value) or value <= 0 or (whole and value != int(value)):
        accepted = "a whole number > 0" if whole else "a number > 0"
        raise BadInput(f"{flag} {value:g} is not accepted: give {accepted}")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.3g}s"
    if seconds < 7200:
        return f"{seconds / 60:.3g}m"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.3g}h"
    return f"{seconds / 86400:.3g}d"


def _band(value: str, lo: str, hi: str) -> Text:
    from rich.text import Text

    return Text.assemble(value, "\n", (f"{lo}-{hi}", "dim"))


def _show(result: EstimateResult) -> None:
    from rich.text import Text

    def yes_no(value: bool | None) -> Text:
        return {True: Text("yes"), False: Text("no", "red"), None: Text("?")}[value]

    table = make_table(
        title=f"Estimate for {result.epochs:g} epochs ({result.pricing}, "
        f"{result.region or 'world average'}: {result.gco2e_per_kwh:.0f} gCO2e/kWh, "
        f"PUE {result.pue:g})",
        caption="each figure with its low-high band below it",
    )
    for column in ("GPU", "fits", "time", "kWh", "USD", "kgCO2e"):
        left = column == "GPU"
        table.add_column(
            column,
            justify="left" if left else "right",
            no_wrap=not left,
            min_width=9 if left else 0,
        )
    for t in result.targets:
        b = t.band
        row = [
            f"{t.n_gpus} x {t.gpu}" if t.n_gpus > 1 else t.gpu,
            yes_no(t.fits_memory),
            _band(_duration(t.seconds), *map(_duration, b["seconds"])),
            _band(*(f"{v:.3g}" for v in (t.energy_kwh, *b["energy_kwh"]))),
            _band(*(f"{v:,.3g}" for v in (t.cost_usd, *b["cost_usd"]))),
            _band(*(f"{v:.3g}" for v in (t.co2e_kg, *b["co2e_kg"]))),
        ]
        table.add_row(*row)
    out = console()
    print_table(out, table)
    if result.budgets:
        limits = ", ".join(f"{name} {limit:g}" for name, limit in result.budgets.items())
        out.print(literal(f"budgets ({limits}):"))
        for t in result.targets:
            over = [name for name, ok in t.verdicts.items() if not ok]
            verdict = literal(f"over: {', '.join(over)}", "red") if over else "within"
            out.print(Text.assemble("  ", literal(t.gpu), ": ", verdict))
    for label, name in (
        ("cheapest", result.cheapest),
        ("fastest", result.fastest),
        ("greenest", result.greenest),
    ):
        out.print(
            literal(f"{label}: {name or 'none of the targets fits the measured peak memory'}")
        )
    for t in result.targets:
        hours = t.break_even_gpu_hours_per_year
        if t.pricing != result.pricing:
            out.print(literal(f"{t.gpu}: priced as {t.pricing} ({result.pricing} has no {t.gpu})"))
        if hours is None:
            continue
        if math.isinf(hours):
            out.print(literal(f"{t.gpu}: renting ({t.break_even_instance}) is always cheaper"))
        else:
            out.print(
                literal(
                    f"{t.gpu}: owning beats renting ({t.break_even_instance}) above "
                    f"{hours:,.0f} GPU-hours a year"
                )
            )
    for flag in result.flags:
        out.print(literal(f"flag {flag}: {FLAGS.get(flag, '')}"))


def _used_run(record) -> dict:
    """Which ledger run an estimate took its rates from (when filters or 'latest' picked it)."""
    return {
        "run_id": record.run_id,
        "architecture": record.architecture,
        "status": record.status,
        "started_at": record.started_at,
        "user": record.user,
        "job_id": record.job_id,
    }


def register(app: typer.Typer) -> None:
    """Add `wattwise estimate` to the app."""

    @app.command("estimate")
    def estimate_command(
        run: Annotated[
            str | None,
            typer.Option(
                "--run",
                help="Ledger run (id or unique prefix) to take the measured rates from; "
                "'latest': the newest finished run (that the run filters match).",
            ),
        ] = None,
        ledger: Annotated[
            str | None,
            typer.Option(
                "--ledger",
                help="Ledger: a file or a postgresql:// URL (default $WATTWISE_LEDGER or "
                "./wattwise.db).",
            ),
        ] = None,
        measured_gpu: Annotated[
            str | None,
            typer.Option("--measured-gpu", help="GPU the typed-in numbers were measured on."),
        ] = None,
        seconds_per_epoch: Annotated[
            float | None,
            typer.Option("--seconds-per-epoch", help="Measured steady seconds per epoch."),
        ] = None,
        joules_per_epoch: Annotated[
            float | None,
            typer.Option("--joules-per-epoch", help="Measured steady device joules per epoch."),
        ] = None,
        peak_mem_gib: Annotated[
            float | None, typer.Option("--peak-mem-gib", help="Measured peak GPU memory in GiB.")
        ] = None,
        epochs: Annotated[float | None, typer.Option("--epochs", help="Planned epochs.")] = None,
        steps: Annotated[
            float | None, typer.Option("--steps", help="Planned optimizer steps.")
        ] = None,
        steps_per_epoch: Annotated[
            float | None, typer.Option("--steps-per-epoch", help="Steps per epoch (for --steps).")
        ] = None,
        gpu: Annotated[
            str | None,
            typer.Option(
                "--gpu",
                help="Target GPUs, comma-separated (default: the run's GPU for --run, else all).",
            ),
        ] = None,
        region: Annotated[
            str | None, typer.Option("--region", help="Grid region (FRA, aws:...).")
        ] = None,
        pricing: Annotated[
            str | None,
            typer.Option("--pricing", help="Pricing scenario: onprem or provider:instance."),
        ] = None,
        budget_kwh: Annotated[
            float | None, typer.Option("--budget-kwh", help="Energy budget, kWh before PUE.")
        ] = None,
        budget_usd: Annotated[
            float | None, typer.Option("--budget-usd", help="Money budget, USD.")
        ] = None,
        budget_kgco2e: Annotated[
            float | None, typer.Option("--budget-kgco2e", help="Carbon budget in kg CO2e.")
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
        user: UserFilter = None,
        job: JobFilter = None,
        tag: TagFilter = None,
        architecture: ArchitectureFilter = None,
        since: SinceFilter = None,
        until: UntilFilter = None,
        status: StatusFilter = None,
    ) -> None:
        """Predict time, energy, cost and CO2e of a planned run, from a measured one.

        With run filters, --run picks among the runs they match; without --run they pick the
        newest finished matching run."""
        from wattwise import config, hardware
        from wattwise.commands.money import first_scenario
        from wattwise.estimate import Budgets, Plan, Profile, estimate, profile_from_run

        for flag, value in (
            ("--seconds-per-epoch", seconds_per_epoch),
            ("--joules-per-epoch", joules_per_epoch),
            ("--peak-mem-gib", peak_mem_gib),
            ("--epochs", epochs),
            ("--budget-kwh", budget_kwh),
            ("--budget-usd", budget_usd),
            ("--budget-kgco2e", budget_kgco2e),
        ):
            _check_positive(flag, value)
        _check_positive("--steps", steps, whole=True)
        _check_positive("--steps-per-epoch", steps_per_epoch, whole=True)
        if (epochs is None) == (steps is None):
            raise BadInput(
                "give exactly one of --epochs N or --steps N (a number > 0), "
                f"not {'both' if epochs is not None else 'neither'}"
            )
        if steps_per_epoch is not None and steps is None:
            raise BadInput("--steps-per-epoch goes with --steps N; with --epochs leave it out")
        steps = None if steps is None else int(steps)
        steps_per_epoch = None if steps_per_epoch is None else int(steps_per_epoch)

        typed = {
            "--seconds-per-epoch": seconds_per_epoch,
            "--joules-per-epoch": joules_per_epoch,
            "--peak-mem-gib": peak_mem_gib,
        }
        settings = config.load()
        run_filter = build(user, job, tag, architecture, since, until, status)
        from_ledger = run is not None or not run_filter.empty
        used = None  # the run the rates come from, when picked by filters or 'latest'
        if from_ledger:
            if measured_gpu is not None or any(v is not None for v in typed.values()):
                given = "--run" if run is not None else "run filters"
                raise BadInput(
                    f"{given} take the measured numbers from the ledger: leave out "
                    "--measured-gpu, --seconds-per-epoch, --joules-per-epoch and --peak-mem-gib"
                )
            from wattwise.ledger import Ledger

            with Ledger(ledger) as store:
                record = pick_run(store, run, run_filter)
                if run is None or run.strip() == "latest" or not run_filter.empty:
                    used = record
                profile = profile_from_run(store, record.run_id, settings=settings)
        elif measured_gpu is not None:
            missing = [
                flag
                for flag in ("--seconds-per-epoch", "--joules-per-epoch")
                if typed[flag] is None
            ]
            if missing:
                raise BadInput(f"--measured-gpu {measured_gpu!r} needs {' and '.join(missing)}")
            profile = Profile(
                gpu=hardware.lookup(measured_gpu, settings),
                seconds_per_epoch=seconds_per_epoch,
                joules_per_epoch=joules_per_epoch,
                peak_mem_gib=peak_mem_gib,
                steps_per_epoch=steps_per_epoch,
            )
        else:
            raise BadInput(
                "no measured input: give --run RUN_ID, or --measured-gpu NAME with "
                "--seconds-per-epoch S and --joules-per-epoch J"
            )

        if gpu is not None:
            names = [name.strip() for name in gpu.split(",") if name.strip()]
            if not names:
                raise BadInput(f"--gpu {gpu!r} names no GPU: give NAME[,NAME...]")
            targets = [hardware.lookup(name, settings) for name in names]
        elif from_ledger:
            targets = [profile.gpu]
        else:
            targets = hardware.all_gpus(settings)

        result = estimate(
            profile,
            Plan(epochs=epochs, steps=steps, steps_per_epoch=steps_per_epoch),
            targets,
            region=region or settings.get("region"),
            pricing=pricing or first_scenario(settings.get("pricing")),
            budgets=Budgets(max_kwh=budget_kwh, max_usd=budget_usd, max_kgco2e=budget_kgco2e),
            settings=settings,
        )
        if as_json:
            shown = result.to_json()
            if used is not None:
                shown["run"] = _used_run(used)
            print_json(shown)
        else:
            if used is not None:
                latest = run is None or run.strip() == "latest"
                newest = "the newest run" if run_filter.status else "the newest finished run"
                how = newest if latest else f"--run {run}"
                if not run_filter.empty:
                    how += f" {'matching' if latest else 'among runs matching'} "
                    how += run_filter.describe()
                console().print(
                    f"rates from run {used.run_id} ({used.architecture}, {used.status}, started "
                    f"{used.started_at[:16].replace('T', ' ')} UTC): {how}",
                    highlight=False,
                )
            _show(result)
