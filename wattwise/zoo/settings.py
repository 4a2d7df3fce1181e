"""Checks of the demo's settings, kept free of torch and Lightning so that bad flags are refused
at once, before anything heavy is imported, trained or written."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from wattwise.errors import BadInput

if TYPE_CHECKING:  # pragma: no cover
    from wattwise.config import Settings

MAX_SEED = 2**32 - 1
"""Seeds go to NumPy (through Lightning's seed_everything), which takes 0 to 2**32 - 1."""

TASKS = ("digits", "images")
"""The demo's tasks: scikit-learn's 8x8 digits (MLPs) and generated 32x32 images (ResNets)."""
EPOCHS = {"digits": (10, 40), "images": (15, 40)}
"""Training epochs per model by task: (with --quick, without)."""
CPU_QUICK_EPOCHS = {"images": 6}
"""Where a quick run on a CPU trains fewer epochs than ``EPOCHS`` (its set is shrunk too)."""


def check_task(task: str | None) -> str | None:
    """BadInput unless ``task`` is one of ``TASKS`` (None: chosen by the device later)."""
    if task is not None and task not in TASKS:
        raise BadInput(f"--task {task!r} is not a task; accepted: {', '.join(TASKS)}")
    return task


def default_epochs(task: str, *, quick: bool, cuda: bool) -> int:
    """The demo's epochs per model for ``task`` when none are given."""
    if quick and not cuda and task in CPU_QUICK_EPOCHS:
        return CPU_QUICK_EPOCHS[task]
    return EPOCHS[task][0 if quick else 1]


def check_settings(
    epochs: int | None,
    region: str | None,
    pricing: str | None,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    seed: int = 0,
) -> None:
    """BadInput unless ``epochs`` is a whole number >= 1 (None: the task's default, checked
    later), ``seed`` one NumPy accepts, the
    region and pricing scenario(s) in force (the arguments, else the environment and
    configuration) are known, and the report can be written under ``out_dir`` (when given; the
    folder is created)."""
    from wattwise import config
    from wattwise.report import check_output

    if epochs is not None and (
        isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1
    ):
        raise BadInput(f"epochs={epochs!r}: expected a whole number of epochs >= 1")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise BadInput(f"seed={seed!r}: expected a whole number from 0 to {MAX_SEED}")
    check_resolvable(config.load().with_overrides(region=region, pricing=pricing))
    if out_dir is not None:
        check_output(out_dir)


def check_resolvable(settings: Settings) -> None:
    """BadInput unless the grid intensity (the region's, or the intensity series') and every
    pricing scenario but ``onprem`` in ``settings`` resolve; the message names where the value
    came from. Used by the demo and by ``wattwise config``."""
    from wattwise import carbon
    from wattwise import pricing as pricing_tables

    series = settings.get("intensity_series") is not None
    checks: list[tuple[str, Callable[[], object]]] = [
        (
            "intensity_series" if series else "region",
            lambda: carbon.intensity(settings.get("region"), settings),
        )
    ]
    scenarios = settings.get("pricing")
    for scenario in [scenarios] if isinstance(scenarios, str) else scenarios:
        if scenario != "onprem":  # the configuration accepts no other spelling of it
            checks.append(
                ("pricing", lambda name=scenario: pricing_tables.instance(name, settings))
            )
    for key, check in checks:
        try:
            check()
        except BadInput as err:
            raise BadInput(f"{settings.source(key)}: {err}") from None
