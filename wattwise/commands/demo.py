"""`wattwise demo`: the main job. Trains the zoo's baseline, constrained and adaptive models with
energy accounting (GPU when there is one), then writes the ledger and the comparison report."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from wattwise._safe_text import literal
from wattwise.commands import console, make_table, print_json, print_table

if TYPE_CHECKING:  # pragma: no cover
    from rich.progress import Progress

    from wattwise.zoo.demo import DemoResult, ProgressHook

from wattwise.zoo.settings import CPU_QUICK_EPOCHS, EPOCHS, TASKS

QUICK_EPOCHS = EPOCHS["digits"][0]
FULL_EPOCHS = EPOCHS["digits"][1]


def _progress_display() -> tuple[ProgressHook, Progress]:
    """A rich progress display on stderr (one line per model: epochs done, validation accuracy
    and energy so far, then testing) and the hook that drives it."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    display = Progress(
        TextColumn("{task.description:<22}"),
        BarColumn(bar_width=20),
        MofNCompleteColumn(),
        TextColumn("epochs"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[note]}"),
        console=Console(stderr=True),
    )
    tasks: dict[str, int] = {}

    def hook(event: str, label: str, value: int | None, note: str) -> None:
        if event == "start":
            tasks[label] = display.add_task(f"{label}: training", total=value, note=note)
        elif event == "epoch":
            display.update(tasks[label], completed=value, note=note)
        else:  # "test", "done"
            display.update(tasks[label], description=f"{label}: {event}")

    return hook, display


def _notice(note: str) -> None:
    """A note on how this run differs from the task's full form, on stderr before training."""
    from rich.console import Console

    Console(stderr=True).print(literal(f"note: {note}"), soft_wrap=True)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _show(result: DemoResult) -> None:
    epochs = sorted({run.epochs for run in result.runs})
    table = make_table(
        title=f"wattwise demo ({result.task}): what each architecture cost",
        caption=f"{', '.join(map(str, epochs))} training epochs each, then the test set; "
        "cost and CO2e include PUE; shape: width x depth"
        + "".join(f"; {note}" for note in result.notes),
    )
    for column in ("model", "test acc", "s", "Wh", "USD", "gCO2e", "params", "shape"):
        table.add_column(
            column,
            justify="left" if column == "model" else "right",
            no_wrap=column in ("model", "params", "shape"),
        )
    for run in result.runs:
        params = f"{run.params_start:,}"
        if run.params_end != run.params_start:
            params += f" -> {run.params_end:,}"
        shape = f"{run.width_start}x{run.depth_start}"
        if (run.width_end, run.depth_end) != (run.width_start, run.depth_start):
            shape += f" -> {run.width_end}x{run.depth_end}"
        table.add_row(
            run.architecture,
            _fmt(run.test_acc, ".3f"),
            f"{run.duration_s:.1f}",
            f"{run.energy_wh:.3g}",
            _fmt(run.cost_usd, ".2g"),
            _fmt(None if run.co2e_kg is None else run.co2e_kg * 1000, ".3g"),
            params,
            shape,
        )
    out = console()
    print_table(out, table)
    if result.generation_s is not None and result.sizes:
        total = sum(result.sizes.values())
        made = f"{total:,} images generated on {result.device} in {result.generation_s:.2f} s"
        out.print(literal(f"image set: {made}"))
    out.print(literal(f"ledger: {result.ledger_path}"))
    out.print(literal(f"report: {result.html_path}"))
    out.print(literal(f"csv:    {result.runs_csv}, {result.phases_csv}"))


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""

    @app.command("demo")
    def demo(
        quick: Annotated[
            bool,
            typer.Option(
                "--quick",
                help="Short run: "
                + ", ".join(f"{t} {EPOCHS[t][0]}" for t in TASKS)
                + " epochs per model (images on a CPU: "
                + f"{CPU_QUICK_EPOCHS['images']} epochs on a shrunk set).",
            ),
        ] = False,
        epochs: Annotated[
            int | None,
            typer.Option(
                "--epochs",
                help="Training epochs per model (default "
                + ", ".join(f"{t} {EPOCHS[t][1]}" for t in TASKS)
                + "; see --quick).",
            ),
        ] = None,
        task: Annotated[
            str | None,
            typer.Option(
                "--task",
                help="digits (8x8 digits, MLPs; the default on a CPU) or images (generated 32x32 "
                "RGB images, ResNets; the default where CUDA is available).",
            ),
        ] = None,
        ledger: Annotated[
            str | None,
            typer.Option(
                "--ledger",
                help="Ledger to record the runs in (default: $WATTWISE_LEDGER or ./wattwise.db).",
            ),
        ] = None,
        out: Annotated[
            Path, typer.Option("--out", help="Folder for report.html, runs.csv, phases.csv.")
        ] = Path("reports"),
        region: Annotated[
            str | None,
            typer.Option("--region", help="Grid region: FRA, gcp:europe-west1, aws:us-east-1..."),
        ] = None,
        pricing: Annotated[
            str | None,
            typer.Option("--pricing", help="Pricing scenario: onprem or provider:instance."),
        ] = None,
        seed: Annotated[int, typer.Option("--seed", help="Seed of data split and weights.")] = 0,
        as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    ) -> None:
        """Train baseline, constrained and adaptive models with energy accounting and compare
        them in one report (one ledger run per model)."""
        from wattwise.zoo.settings import check_settings, check_task, default_epochs

        check_task(task)
        check_settings(epochs, region, pricing, out, seed=seed)  # before heavy imports

        import torch

        from wattwise.zoo.demo import run_demo

        cuda = torch.cuda.is_available()
        task = task or ("images" if cuda else "digits")
        n_epochs = epochs if epochs is not None else default_epochs(task, quick=quick, cuda=cuda)
        # --json: no progress display, and stdout is nothing but the JSON.
        hook, display = (None, contextlib.nullcontext()) if as_json else _progress_display()
        with display:
            result = run_demo(
                task=task,
                quick=quick,
                notice=None if as_json else _notice,
                epochs=n_epochs,
                ledger=ledger,
                out_dir=out,
                region=region,
                pricing=pricing,
                seed=seed,
                progress=hook,
            )
        if as_json:
            print_json(result.to_json())
            return
        _show(result)
