"""Checks of the demo's settings, kept free of torch and Lightning so that bad flags are refused
at once, before anything heavy is imported, trained or written."""

from __future__ import annotations

import os

from wattwise.errors import BadInput


def check_settings(
    epochs: int,
    region: str | None,
    pricing: str | None,
    out_dir: str | os.PathLike[str] | None = None,
) -> None:
    """BadInput unless ``epochs`` is a whole number >= 1, the region and pricing scenario(s)
    in force (the arguments, else the environment and configuration) are known, and the report
    can be written under ``out_dir`` (when given; the folder is created)."""
    from wattwise import carbon, config
    from wattwise import pricing as pricing_tables
    from wattwise.report import check_output

    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise BadInput(f"epochs={epochs!r}: expected a whole number of epochs >= 1")
    settings = config.load().with_overrides(region=region, pricing=pricing)
    carbon.intensity(settings.get("region"), settings)
    scenarios = settings.get("pricing")
    for scenario in [scenarios] if isinstance(scenarios, str) else scenarios:
        if scenario.strip().lower() != "onprem":
            pricing_tables.instance(scenario, settings)
    if out_dir is not None:
        check_output(out_dir)
