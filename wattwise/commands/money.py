"""`wattwise` sub-commands: carbon, config, hardware, prices (money and carbon inputs in force)."""

from __future__ import annotations

import json
from typing import Any

import typer

from wattwise._safe_text import printable
from wattwise.commands import console, make_table, print_json, print_table

_JSON = typer.Option(False, "--json", help="Machine-readable JSON on stdout.")


def _table(columns: list[str], rows: list[list[Any]], title: str) -> None:
    table = make_table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(f"{v:g}" if isinstance(v, float) else str(v) for v in row))
    print_table(console(), table)


def carbon_command(
    region: str | None = typer.Option(
        None, "--region", help="ISO-3166 alpha-3 (FRA) or provider:region (aws:us-east-1)."
    ),
    list_regions: bool = typer.Option(False, "--list", help="List every known region code."),
    as_json: bool = _JSON,
) -> None:
    """The grid carbon intensity in force, with its source, year and flags."""
    from wattwise import carbon, config

    settings = config.load().with_overrides(region=region)
    if list_regions:
        codes = carbon.known_regions(settings)
        if as_json:
            print_json(codes)
        else:
            typer.echo("\n".join(map(printable, codes)))
        return
    found = carbon.intensity(settings.get("region"), settings)
    pue = carbon.pue(first_scenario(settings.get("pricing")), settings)
    if as_json:
        print_json(
            {
                **found.to_json(),
                "region_source": settings.source("region"),
                "pue": {"value": pue.value, "source": pue.source, "year": pue.year},
            }
        )
        return
    for line in (
        f"region:    {found.region or 'none (world average)'} ({settings.source('region')})",
        f"intensity: {found.gco2e_per_kwh:.1f} gCO2e/kWh ({found.year})",
        f"source:    {found.source}",
        f"flags:     {', '.join(found.flags) or '-'}",
        f"PUE:       {pue.value:g} ({pue.source})",
    ):
        typer.echo(printable(line))


def first_scenario(pricing: str | list[str]) -> str:
    """The scenario in force: ``settings.get("pricing")``, the first when it lists several."""
    return pricing[0] if isinstance(pricing, list) else pricing


def config_command(as_json: bool = _JSON) -> None:
    """Every setting in force and where it came from."""
    from wattwise import config
    from wattwise.zoo.settings import check_resolvable

    settings = config.load()
    check_resolvable(settings)  # a region or scenario that resolves to nothing is refused
    if as_json:
        print_json(settings.to_json())
        return
    typer.echo(printable(f"configuration file: {settings.path or 'none'}"))
    rows = [
        [key, json.dumps(settings.shown(key), default=str), settings.source(key)]
        for key in config.KEYS
    ]
    _table(["key", "value", "source"], rows, "settings in force")


def hardware_command(as_json: bool = _JSON) -> None:
    """The GPU/CPU spec table the estimator and the on-prem pricing know."""
    from wattwise import config, hardware

    specs = hardware.all_gpus(config.load())
    if as_json:
        print_json([spec.to_json() for spec in specs])
        return
    columns = ["name", "TDP W", "idle W", "bf16 TF", "fp32 TF", "GiB", "GB/s", "USD"]
    fields = ("tdp_w", "idle_w", "bf16_tflops", "fp32_tflops", "memory_gib")
    fields += ("memory_bandwidth_gbs", "price_usd")
    rows = [[_marked(s.name, s.source), *(getattr(s, f) for f in fields)] for s in specs]
    _table(columns, rows, f"hardware (sources: wattwise hardware --json; {_UNVERIFIED})")


def prices_command(as_json: bool = _JSON) -> None:
    """Cloud instance prices usable as --pricing provider:instance."""
    from wattwise import config, pricing

    rows = pricing.instances(config.load())
    if as_json:
        print_json([row.to_json() for row in rows])
        return
    table = [
        [
            _marked(r.name, r.source),
            r.n_gpus,
            r.gpu,
            r.price_per_hour_usd,
            r.price_per_gpu_hour_usd,
            r.region,
            r.date,
        ]
        for r in rows
    ]
    columns = ["scenario", "gpus", "gpu", "usd_per_hour", "usd_per_gpu_hour", "region", "date"]
    _table(columns, table, f"on-demand prices (sources: wattwise prices --json; {_UNVERIFIED})")


_UNVERIFIED = "* = unverified"


def _marked(name: str, source: str) -> str:
    """A row whose source starts with 'unverified:' gets a '*' after its name."""
    return f"{name} *" if source.lstrip().lower().startswith("unverified:") else name


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""
    app.command("carbon")(carbon_command)
    app.command("config")(config_command)
    app.command("hardware")(hardware_command)
    app.command("prices")(prices_command)
