"""Checks of the demo's settings, kept free of torch and Lightning so that bad flags are refused
at once, before anything heavy is imported, trained or written."""

from __future__ import annotations

from wattwise.errors import BadInput


def check_settings(epochs: int, region: str | None, pricing: str | None) -> None:
    """BadInput unless ``epochs`` is a whole number >= 1 and the region and pricing scenario(s)
    in force (the arguments, else the environment and configuration) are known."""
    from wattwise import carbon, config
    from wattwise import pricing as pricing_tables

    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise BadInput(f"epochs={epochs!r}: expected a whole number of epochs >= 1")
    settings = config.load().with_overrides(region=region, pricing=pricing)
    carbon.intensity(settings.get("region"), settings)
    scenarios = settings.get("pricing")
    for scenario in [scenarios] if isinstance(scenarios, str) else scenarios:
        if scenario.strip().lower() != "onprem":
            pricing_tables.instance(scenario, settings)
