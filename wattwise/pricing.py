"""Money: on-prem electricity plus hardware amortisation, or cloud instance hours. USD throughout.

Scenarios:

- ``onprem`` (default): ``kWh x PUE x tariff`` + amortisation ``price / service_hours x hours x
  n_gpus``. The tariff is ``tariff_per_kwh`` in ``currency``, turned into USD with
  ``usd_per_currency``. The price is the configuration's ``hardware_price_usd`` or the hardware
  table's price of ``gpu_name``; a run without a GPU (``gpu_name=None``) amortises the table's
  CPU-only machine once.
- ``provider:instance`` (``aws:p5.48xlarge``, or a custom ``[instances]`` row): ``hours x
  instance price x k / n`` for a run on k of the instance's n GPUs; electricity and hardware are in
  the price.

Instance prices live in ``wattwise/data/instance_prices.csv``: public on-demand list prices, each
row with its region, currency, source and the date the price was believed to hold.
"""

from __future__ import annotations

import csv
import difflib
import math
from dataclasses import asdict, dataclass
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from wattwise import carbon, hardware
from wattwise.errors import BadInput, UnknownHardware
from wattwise.units import HOURS_PER_YEAR, S_PER_HOUR, j_to_kwh

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Iterable

    from wattwise.config import Settings
    from wattwise.types import DeviceInfo


@dataclass(frozen=True, slots=True)
class Instance:
    """One cloud instance type at its on-demand price."""

    provider: str
    instance: str
    gpu: str
    n_gpus: int
    price_per_hour_usd: float
    region: str
    currency: str
    source: str
    date: str

    @property
    def name(self) -> str:
        return f"{self.provider}:{self.instance}"

    @property
    def price_per_gpu_hour_usd(self) -> float:
        return self.price_per_hour_usd / self.n_gpus

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            **asdict(self),
            "price_per_gpu_hour_usd": self.price_per_gpu_hour_usd,
        }


@dataclass(frozen=True, slots=True)
class Cost:
    """The bill of one run under one scenario, with where the numbers come from."""

    scenario: str
    total_usd: float
    energy_usd: float
    hardware_usd: float
    instance_usd: float
    pue: float
    source: str
    date: str | None
    flags: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        row = asdict(self)
        row["flags"] = list(self.flags)
        return row


@cache
def _builtin() -> tuple[Instance, ...]:
    text = resources.files("wattwise").joinpath("data/instance_prices.csv").read_text("utf-8")
    return tuple(
        Instance(
            provider=r["provider"],
            instance=r["instance"],
            gpu=r["gpu"],
            n_gpus=int(r["n_gpus"]),
            price_per_hour_usd=float(r["price_per_hour_usd"]),
            region=r["region"],
            currency=r["currency"],
            source=r["source"],
            date=r["date"],
        )
        for r in csv.DictReader(text.splitlines())
    )


def instances(settings: Settings | None = None) -> list[Instance]:
    """Every instance: the configuration's ``[instances]`` rows first, then the built-in table."""
    settings = _settings(settings)
    user = []
    for name, row in settings.get("instances").items():
        provider, _, instance = name.rpartition(":")
        user.append(
            Instance(
                provider=provider or "custom",
                instance=instance,
                gpu=row["gpu"],
                n_gpus=row["gpus"],
                price_per_hour_usd=row["price_per_hour_usd"],
                region=row.get("region", "custom"),
                currency="USD",
                source=f"{row['source']} (configuration {settings.source('instances')})",
                date=row["date"],
            )
        )
    taken = {i.name.lower() for i in user}
    return user + [i for i in _builtin() if i.name.lower() not in taken]


def instances_for_gpu(gpu_name: str, settings: Settings | None = None) -> list[Instance]:
    """The instances built on ``gpu_name`` (forgiving match), cheapest per GPU-hour first."""
    settings = _settings(settings)
    target = hardware.lookup(gpu_name, settings).name
    rows = []
    for row in instances(settings):
        try:
            if hardware.lookup(row.gpu, settings).name == target:
                rows.append(row)
        except UnknownHardware:
            continue  # a custom instance on a GPU the table does not know
    return sorted(rows, key=lambda r: r.price_per_gpu_hour_usd)


def instance(name: str, settings: Settings | None = None) -> Instance:
    """The instance ``provider:instance`` (case-insensitive); BadInput lists the closest names."""
    rows = instances(settings)
    by_name = {i.name.lower(): i for i in rows}
    key = name.strip().lower()
    if key in by_name:
        return by_name[key]
    closest = difflib.get_close_matches(key, by_name, n=5, cutoff=0.4)
    hint = f"closest: {', '.join(by_name[c].name for c in closest)}; " if closest else ""
    raise BadInput(
        f"unknown pricing scenario {name!r}: {hint}accepted: onprem or provider:instance, one of "
        f"{', '.join(i.name for i in rows)} (add your own under [instances] in wattwise.toml)"
    )


def _settings(settings: Settings | None) -> Settings:
    if settings is None:
        from wattwise.config import load

        return load()
    return settings


def tariff_usd_per_kwh(settings: Settings | None = None) -> float:
    """The on-prem electricity tariff in USD per kWh."""
    settings = _settings(settings)
    tariff = settings.get("tariff_per_kwh")
    if settings.get("currency") == "USD":
        return tariff
    return tariff * settings.get("usd_per_currency")


def _check(energy_j: float, duration_s: float, n_gpus: int) -> None:
    for name, value in (("energy_j", energy_j), ("duration_s", duration_s)):
        if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
            raise BadInput(f"bad {name} {value!r}; accepted: a finite number >= 0")
    if isinstance(n_gpus, bool) or not isinstance(n_gpus, int) or n_gpus < 1:
        raise BadInput(f"bad n_gpus {n_gpus!r}; accepted: an integer >= 1")


def priced_gpus(devices: Iterable[DeviceInfo]) -> tuple[str | None, int]:
    """(GPU model for the price table, number of GPUs, at least 1) of measured devices."""
    gpus = [d for d in devices if d.kind == "gpu"]
    name = (gpus[0].details.get("gpu") or gpus[0].name) if gpus else None
    return name, max(1, len(gpus))


def cost(
    energy_j: float,
    duration_s: float,
    *,
    scenario: str = "onprem",
    gpu_name: str | None = None,
    n_gpus: int = 1,
    settings: Settings | None = None,
) -> Cost:
    """What a run of ``energy_j`` device energy over ``duration_s`` costs under ``scenario``."""
    settings = _settings(settings)
    _check(energy_j, duration_s, n_gpus)
    hours = duration_s / S_PER_HOUR
    if scenario.strip().lower() != "onprem":
        row = instance(scenario, settings)
        if n_gpus > row.n_gpus:
            raise BadInput(
                f"a run on {n_gpus} GPUs does not fit {row.name} ({row.n_gpus} x {row.gpu}); "
                f"accepted: n_gpus from 1 to {row.n_gpus}, or a larger instance"
            )
        instance_usd = hours * row.price_per_hour_usd * n_gpus / row.n_gpus
        return Cost(
            scenario=row.name,
            total_usd=instance_usd,
            energy_usd=0.0,
            hardware_usd=0.0,
            instance_usd=instance_usd,
            pue=carbon.pue(row.name, settings).value,
            source=f"{row.name} {row.price_per_hour_usd:g} USD/h for {row.n_gpus} x {row.gpu} "
            f"in {row.region}, {n_gpus}/{row.n_gpus} charged ({row.source})",
            date=row.date,
        )
    pue = carbon.pue("onprem", settings)
    tariff = tariff_usd_per_kwh(settings)
    energy_usd = j_to_kwh(energy_j) * pue.value * tariff
    spec = hardware.lookup(gpu_name or "CPU only", settings)
    units = n_gpus if spec.kind == "gpu" else 1
    price_usd = settings.get("hardware_price_usd")
    price_source = f"configuration ({settings.source('hardware_price_usd')})"
    if price_usd is None:
        price_usd, price_source = spec.price_usd, spec.source
    service_hours = settings.get("service_hours")
    hardware_usd = price_usd / service_hours * hours * units
    return Cost(
        scenario="onprem",
        total_usd=energy_usd + hardware_usd,
        energy_usd=energy_usd,
        hardware_usd=hardware_usd,
        instance_usd=0.0,
        pue=pue.value,
        source=f"tariff {tariff:g} USD/kWh ({settings.source('tariff_per_kwh')}); PUE "
        f"{pue.value:g} ({pue.source}); {units} x {spec.name} at {price_usd:g} USD over "
        f"{service_hours:g} h ({price_source})",
        date=spec.date,
    )


def break_even_gpu_hours_per_year(
    gpu_name: str, scenario: str, settings: Settings | None = None
) -> float:
    """GPU-hours per year above which owning ``gpu_name`` beats renting it under ``scenario``.

    Owning costs ``P / L`` a year whether used or not (purchase price ``P`` written off over
    ``L = service_hours / 8760`` years) plus ``e`` per hour used (electricity at the card's TDP:
    ``tdp_w / 1000 kWh x PUE_onprem x tariff``); renting costs ``r`` per GPU-hour (instance price /
    its GPUs). Owning wins above ``h* = (P / L) / (r - e)``; ``inf`` when ``r <= e`` (renting is
    never dearer). A result above 8760 means renting wins even at full use."""
    settings = _settings(settings)
    if scenario.strip().lower() == "onprem":
        raise BadInput(
            "break-even needs a cloud scenario to compare with; accepted: provider:instance "
            "(e.g. aws:p5.48xlarge), not 'onprem'"
        )
    row = instance(scenario, settings)
    spec = hardware.lookup(gpu_name, settings)
    price_usd = settings.get("hardware_price_usd")
    if price_usd is None:
        price_usd = spec.price_usd
    life_years = settings.get("service_hours") / HOURS_PER_YEAR
    own_per_hour_usd = (
        j_to_kwh(spec.tdp_w * S_PER_HOUR)
        * carbon.pue("onprem", settings).value
        * tariff_usd_per_kwh(settings)
    )
    margin_usd = row.price_per_gpu_hour_usd - own_per_hour_usd
    if margin_usd <= 0:
        return math.inf
    return price_usd / life_years / margin_usd
