"""Checks of the demo's settings, kept free of torch and Lightning so that bad flags are refused
at once, before anything heavy is imported, trained or written."""

from __future__ import annotations

import os

from wattwise.errors import BadInput

MAX_SEED = 2**32 - 1
"""Seeds go to NumPy (through Lightning's seed_everything), which takes 0 to 2**32 - 1."""


def check_settings(
    epochs: int,
    region: str | None,
    pricing: str | None,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    seed: int = 0,
) -> None:
    """BadInput unless ``epochs`` is a whole number >= 1, ``seed`` one NumPy accepts, the
    region and pricing scenario(s) in force (the arguments, else the environment and
    configuration) are known, and the report can be written under ``out_dir`` (when given; the
    folder is created)."""
    from wattwise import carbon, config
    from wattwise import pricing as pricing_tables
    from wattwise.report import check_output

    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise BadInput(f"epochs={epochs!r}: expected a whole number of epochs >= 1")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise BadInput(f"seed={seed!r}: expected a whole number from 0 to {MAX_SEED}")
    settings = config.load().with_overrides(region=region, pricing=pricing)
    carbon.intensity(settings.get("region"), settings)
    scenarios = settings.get("pricing")
    for scenario in [scenarios] if isinstance(scenarios, str) else scenarios:
        if scenario.strip().lower() != "onprem":
            pricing_tables.instance(scenario, settings)
    if out_dir is not None:
        check_output(out_dir)
