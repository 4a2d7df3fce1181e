"""`wattwise replay`: integrate a recorded NVML trace offline, optionally into the ledger.

Phase i runs from mark i to mark i+1 and is named after mark i (the last mark closes the last
phase); with no marks file the whole trace is one phase. With ``--ledger`` the trace is recorded
as a finished run: each training epoch spans ``train_epoch_start`` .. ``train_epoch_end`` (the
validation inside it as stage ``validate``, the rest ``train``), time outside epochs is ``other``.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any

import typer

from wattwise._safe_text import printable
from wattwise.commands import console, make_table, print_json, print_table
from wattwise.errors import BadInput

if TYPE_CHECKING:  # pragma: no cover
    from wattwise.sensors.replay import Marks, Trace
    from wattwise.types import DeviceInfo, PhaseEnergy

METHODS = ("counter", "power")
# "<prefix>_start" opens a stage, "<prefix>_end" closes it (Lightning hook names)
STAGES = {
    "train_epoch": "train",
    "train": "train",
    "val": "validate",
    "validation": "validate",
    "sanity_check": "sanity_check",
    "test": "test",
    "predict": "predict",
}


def replay_phases(
    trace: Trace, info: DeviceInfo, marks: Marks | None, method: str
) -> list[PhaseEnergy]:
    """The trace's phases as the command reports them (trace clock)."""
    from wattwise.integrate import integrate_phases

    if method not in METHODS:
        raise BadInput(f"--method {method!r} is not accepted; use one of {', '.join(METHODS)}")
    if marks is not None:
        first, last = trace.t_s[0], trace.t_s[-1]
        for label, t_s in marks.marks:
            if not first <= t_s <= last:
                raise BadInput(
                    f"{marks.path}: mark {label!r} at {t_s} s lies outside the trace "
                    f"{trace.path} ({first}-{last} s); marks must be on the trace's clock"
                )
    samples = trace.samples(info.device_id)
    if marks is None or not marks.marks:
        boundaries, end_s = [("trace", trace.t_s[0])], trace.t_s[-1]
    elif len(marks.marks) == 1:
        boundaries, end_s = marks.marks, trace.t_s[-1]
    else:
        boundaries, end_s = marks.marks[:-1], marks.marks[-1][1]
    return integrate_phases(samples, [info], boundaries, end_s, method)


def ledger_epochs(
    marks: Marks, start_s: float, end_s: float
) -> tuple[list[tuple[str, float]], list[int | None], int]:
    """Stage boundaries, the epoch of each stage, and the number of completed epochs.

    Stages nest like the hooks that marked them; outside any stage the time is ``other``.
    """
    boundaries = [("other", start_s)]
    epochs: list[int | None] = [None]
    stack: list[str] = []
    epoch: int | None = None
    completed = 0
    for label, t_s in marks.marks:
        if not start_s <= t_s <= end_s:
            continue
        prefix, _, edge = label.rpartition("_")
        if edge == "start":
            stack.append(STAGES.get(prefix, prefix))
            if prefix == "train_epoch":
                epoch = completed
        elif edge == "end":
            if stack:
                stack.pop()
            if prefix == "train_epoch" and epoch is not None:
                completed += 1
                epoch = None
        else:  # a plain label names the stage from here on
            stack = [label]
        if t_s == boundaries[-1][1]:  # replaces an empty stage
            boundaries.pop()
            epochs.pop()
        boundaries.append((stack[-1] if stack else "other", t_s))
        epochs.append(epoch)
    return boundaries, epochs, completed


def _record(
    ledger_path: str,
    trace: Trace,
    info: DeviceInfo,
    marks: Marks | None,
    method: str,
    architecture: str | None,
    gpu: str,
) -> str:
    from datetime import UTC, datetime, timedelta

    from wattwise.integrate import integrate_phases
    from wattwise.ledger import Ledger
    from wattwise.types import ArchSnapshot

    if marks is None:
        raise BadInput("--ledger needs --marks: the epochs come from the marks file")
    if not marks.marks and (marks.fit_start_s is None or marks.fit_end_s is None):
        raise BadInput(
            f"{marks.path}: no marks and no fit_start/fit_end; accepted with --ledger: a marks "
            "file whose marks (or fit_start and fit_end) give the fit's span"
        )
    info = dataclasses.replace(info, name=gpu, details={**info.details, "gpu": gpu})
    start_s = marks.fit_start_s if marks.fit_start_s is not None else marks.marks[0][1]
    end_s = marks.fit_end_s if marks.fit_end_s is not None else marks.marks[-1][1]
    first, last = trace.t_s[0], trace.t_s[-1]
    if not first <= start_s < end_s <= last:
        raise BadInput(
            f"{marks.path}: the fit spans {start_s}-{end_s} s (fit_start-fit_end, else the first "
            f"and last mark); accepted: a start before the end, both inside the trace "
            f"{trace.path} ({first}-{last} s)"
        )
    boundaries, epochs, completed = ledger_epochs(marks, start_s, end_s)
    samples = trace.samples(info.device_id)
    phases = integrate_phases(samples, [info], boundaries, end_s, method)
    label = architecture or str(marks.extra.get("workload") or trace.path.stem)
    snapshot = None
    if marks.params is not None:
        snapshot = ArchSnapshot(marks.params, marks.params, "replay", label)
    by_epoch: dict[int | None, list[PhaseEnergy]] = {}
    for phase in phases:
        by_epoch.setdefault(epochs[phase.index], []).append(phase)
    settings: dict[str, Any] = {"replay": str(trace.path.resolve()), "method": method}
    if marks.peak_mem_gib is not None:
        settings["peak_mem_gib"] = marks.peak_mem_gib
    if isinstance(marks.extra.get("train_steps"), int):
        settings["steps_per_epoch"] = marks.extra["train_steps"]
    points = [
        (t, p) for t, p in zip(trace.t_s, trace.best_power_w, strict=True) if start_s <= t <= end_s
    ]
    # the run lasts as long as the recorded fit (its rental cost depends on it), ending now
    ended_at = datetime.now(UTC)
    started_at = ended_at - timedelta(seconds=end_s - start_s)
    with Ledger(ledger_path) as ledger:
        run_id = ledger.begin_run(
            architecture=label,
            tags=("replay",),
            settings=settings,
            devices=[info],
            started_at=started_at,
        )
        ledger.add_epochs(
            run_id,
            [(e, ps, snapshot if e is not None else None) for e, ps in by_epoch.items()],
            epochs_completed=completed,
            devices=[info],
        )
        ledger.add_timeline(run_id, info.device_id, points)
        ledger.finish_run(run_id, status="finished", ended_at=ended_at)
    return run_id


def _warn_unknown_gpu(gpu: str) -> None:
    """A recorded run whose GPU the spec table lacks is kept (a spec row may be added later),
    but ``wattwise estimate --run`` cannot use it until then: say so on stderr now."""
    from wattwise import config, hardware
    from wattwise.errors import UnknownHardware

    settings = config.load()
    try:
        hardware.lookup(gpu, settings)
    except UnknownHardware:
        near = hardware.closest(gpu, settings, n=3)
        typer.echo(
            printable(
                f"wattwise: warning: GPU {gpu!r} is not in the spec table "
                f"(closest: {', '.join(near) if near else 'none'}), so `wattwise estimate --run` "
                "cannot use this run until it is: check the name (see `wattwise hardware`) or "
                "add a spec row under [gpus] in the configuration file (wattwise.toml)"
            ),
            err=True,
        )


def _phase_json(phase: PhaseEnergy) -> dict[str, Any]:
    return {
        "name": phase.name,
        "start_s": phase.start_s,
        "end_s": phase.end_s,
        "duration_s": phase.duration_s,
        "energy_j": phase.energy_j,
        "mean_power_w": phase.mean_power_w,
        "peak_power_w": phase.peak_power_w,
        "method": phase.method,
        "flags": sorted(phase.flags),
    }


def _show(trace: Trace, info: DeviceInfo, phases: Sequence[PhaseEnergy], total_j: float) -> None:
    table = make_table(title=f"{trace.path.name}: {info.name}, {len(trace.t_s)} rows")
    for column in ("#", "phase", "start s", "end s", "duration s", "energy J", "mean W", "flags"):
        left = column in ("phase", "flags")
        table.add_column(column, justify="left" if left else "right", no_wrap=column == "phase")
    for p in phases:
        mean = f"{p.mean_power_w:.1f}" if p.mean_power_w is not None else "-"
        table.add_row(
            str(p.index),
            p.name,
            f"{p.start_s:.3f}",
            f"{p.end_s:.3f}",
            f"{p.duration_s:.3f}",
            f"{p.energy_j:,.1f}",
            mean,
            ", ".join(sorted(p.flags)),
        )
    method = phases[0].method if phases else "-"
    table.add_row("", "total", "", "", "", f"{total_j:,.1f}", "", f"method: {method}")
    print_table(console(), table)


def register(app: typer.Typer) -> None:
    """Add ``wattwise replay`` to the app."""

    @app.command("replay")
    def replay(
        trace_path: Annotated[
            pathlib.Path, typer.Argument(metavar="TRACE.csv", help="A recorded NVML trace (CSV).")
        ],
        marks_path: Annotated[
            pathlib.Path | None,
            typer.Option("--marks", metavar="MARKS.json", help="Phase marks of the trace."),
        ] = None,
        method: Annotated[
            str, typer.Option("--method", help="counter (anchored on the counter) or power.")
        ] = "counter",
        json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
        ledger: Annotated[
            str | None,
            typer.Option(
                "--ledger",
                help="Record the trace as a finished run in this ledger (a file or a "
                "postgresql:// URL).",
            ),
        ] = None,
        architecture: Annotated[
            str | None, typer.Option("--architecture", help="Run label (with --ledger).")
        ] = None,
        gpu: Annotated[
            str | None,
            typer.Option("--gpu", help="GPU model of the recording (default: the marks' gpu)."),
        ] = None,
    ) -> None:
        """Integrate a recorded NVML trace: energy per phase between its marks."""
        from wattwise.sensors.replay import load_marks, load_trace, replay_device

        trace = load_trace(trace_path)
        marks = load_marks(marks_path) if marks_path is not None else None
        gpu = gpu or (marks.gpu if marks is not None else None)
        info = replay_device(trace, gpu)
        phases = replay_phases(trace, info, marks, method)
        total_j = sum(p.energy_j for p in phases)
        run_id = None
        if ledger is not None:
            if not gpu:
                raise BadInput(
                    "--gpu is needed with --ledger: the marks file names no GPU "
                    "(give the recording GPU's model, e.g. --gpu H200)"
                )
            run_id = _record(ledger, trace, info, marks, method, architecture, gpu)
            _warn_unknown_gpu(gpu)
        if json_out:
            out = {
                "trace": str(trace_path),
                "device": {"device_id": info.device_id, "name": info.name, "uuid": info.uuid},
                "total": {
                    "energy_j": total_j,
                    "method": phases[0].method if phases else method,
                    "duration_s": sum(p.duration_s for p in phases),
                },
                "phases": [_phase_json(p) for p in phases],
                "run_id": run_id,
            }
            print_json(out)
            return
        _show(trace, info, phases, total_j)
        if run_id is not None:
            from wattwise.ledger import mask

            typer.echo(printable(f"recorded run {run_id} in {mask(ledger)}"))
