"""Grid carbon intensity, PUE and CO2e.

Where the numbers come from (nothing is fetched over the network):

- countries (ISO-3166 alpha-3, ``FRA``): codecarbon's shipped
  ``data/private_infra/global_energy_mix.json`` (Our World in Data / Ember; each country has its
  own data year);
- the world average (no region given, flagged ``no_region``): the generation-weighted mean of that
  file's countries (sum of intensity x TWh / sum of TWh);
- ``gcp:<region>``: codecarbon's ``data/cloud/impact.csv`` (Google's published 2023 values, copied
  in by mlco2/codecarbon#610);
- ``aws:<region>`` and ``azure:<region>``: ``wattwise/data/cloud_regions.csv`` maps each region to
  the grid it sits on (a US state in EPA eGRID2023 from codecarbon's
  ``data/private_infra/2023/usa_emissions.json``, else its country), with the provider page that
  gives the region's location and the year it was checked;
- the configuration's ``intensities`` table (custom codes, or overrides of built-in ones) and
  ``intensity_series`` (a CSV of ``timestamp,gco2e_per_kwh`` from a grid operator; a run uses the
  time-weighted mean over its own interval, each value holding until the next timestamp).

codecarbon is located with ``importlib.util.find_spec`` and never imported (importing it runs
nvmlInit and network look-ups).
"""

from __future__ import annotations

import csv
import datetime as dt
import difflib
import importlib.metadata
import importlib.util
import itertools
import json
import pathlib
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from wattwise.errors import BadInput, UnknownRegion, WattwiseError
from wattwise.units import G_PER_KG, G_PER_LB, KWH_PER_MWH, j_to_kwh

if TYPE_CHECKING:  # pragma: no cover
    from wattwise.config import Settings

GCP_DATA_YEAR = 2023  # impact.csv carries no year; codecarbon#610 copied Google's 2023 values
_ENERGY_MIX_DATASET = "codecarbon data/private_infra/global_energy_mix.json"


@dataclass(frozen=True, slots=True)
class Intensity:
    """The grid carbon intensity in force for a region, with where it comes from."""

    region: str | None
    gco2e_per_kwh: float
    source: str
    year: int | None
    flags: tuple[str, ...] = ()
    provenance: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "gco2e_per_kwh": self.gco2e_per_kwh,
            "source": self.source,
            "year": self.year,
            "flags": list(self.flags),
            "provenance": self.provenance,
        }


@dataclass(frozen=True, slots=True)
class Pue:
    """Power usage effectiveness: facility energy / IT energy (>= 1)."""

    value: float
    source: str
    year: int | None


def _codecarbon_data() -> pathlib.Path:
    spec = importlib.util.find_spec("codecarbon")
    if spec is None or not spec.submodule_search_locations:
        raise WattwiseError("codecarbon is not installed: its data files give the grid intensity")
    return pathlib.Path(next(iter(spec.submodule_search_locations))) / "data"


@cache
def _codecarbon_version() -> str:
    return importlib.metadata.version("codecarbon")


def _provenance(dataset: str, data_year: int | None, **extra: Any) -> dict[str, Any]:
    return {
        "dataset": dataset,
        "data_year": data_year,
        "codecarbon_version": _codecarbon_version(),
        **extra,
    }


@cache
def _countries() -> dict[str, dict[str, Any]]:
    path = _codecarbon_data() / "private_infra" / "global_energy_mix.json"
    return json.loads(path.read_text(encoding="utf-8"))


@cache
def _usa_states() -> tuple[dict[str, float], str, int]:
    path = _codecarbon_data() / "private_infra" / "2023" / "usa_emissions.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    meta = data["_source"]
    states = {
        name: row["emissions"] * G_PER_LB / KWH_PER_MWH  # lb/MWh -> g/kWh
        for name, row in data.items()
        if not name.startswith("_")
    }
    return states, f"{meta['name']} ({meta['url']})", int(meta["year"])


@cache
def _gcp() -> dict[str, tuple[float, str, str]]:
    path = _codecarbon_data() / "cloud" / "impact.csv"
    with path.open(encoding="utf-8-sig", newline="") as fh:
        return {
            f"{row['provider']}:{row['region']}".lower(): (
                float(row["impact"]),
                row["source"],
                row["countryIsoCode"],
            )
            for row in csv.DictReader(fh)
        }


@cache
def _cloud_regions() -> dict[str, dict[str, str]]:
    text = resources.files("wattwise").joinpath("data/cloud_regions.csv").read_text("utf-8")
    return {f"{r['provider']}:{r['region']}": r for r in csv.DictReader(text.splitlines())}


@cache
def _pue_table() -> dict[str, Pue]:
    text = resources.files("wattwise").joinpath("data/pue.csv").read_text("utf-8")
    return {
        r["provider"]: Pue(float(r["pue"]), r["source"], int(r["year"]))
        for r in csv.DictReader(text.splitlines())
    }


def world_average() -> Intensity:
    """Generation-weighted mean intensity of every country in codecarbon's energy-mix file."""
    rows = _countries().values()
    total_twh = sum(r["total_TWh"] for r in rows)
    value = sum(r["carbon_intensity"] * r["total_TWh"] for r in rows) / total_twh
    year = max(r["year"] for r in rows)
    return Intensity(
        region=None,
        gco2e_per_kwh=value,
        source=f"world average: generation-weighted mean of {len(rows)} countries, "
        f"Our World in Data / Ember via codecarbon {_codecarbon_version()}",
        year=year,
        flags=("no_region",),
        provenance=_provenance(_ENERGY_MIX_DATASET, year, countries=len(rows), total_twh=total_twh),
    )


def _country(code: str, region: str) -> Intensity:
    row = _countries()[code]
    return Intensity(
        region=region,
        gco2e_per_kwh=float(row["carbon_intensity"]),
        source=f"{row['country_name']}: Our World in Data / Ember via codecarbon "
        f"{_codecarbon_version()}",
        year=int(row["year"]),
        provenance=_provenance(_ENERGY_MIX_DATASET, int(row["year"]), country=code),
    )


def _grid(grid: str, region: str) -> Intensity:
    """A grid named in cloud_regions.csv: ``USA/<state>`` (eGRID) or an ISO alpha-3 country."""
    if grid.startswith("USA/"):
        states, source, year = _usa_states()
        state = grid.removeprefix("USA/")
        dataset = "codecarbon data/private_infra/2023/usa_emissions.json"
        return Intensity(
            region=region,
            gco2e_per_kwh=states[state],
            source=f"{state} grid: {source} via codecarbon {_codecarbon_version()}",
            year=year,
            provenance=_provenance(dataset, year, state=state),
        )
    return _country(grid, region)


def known_regions(settings: Settings | None = None) -> list[str]:
    """Every region code :func:`intensity` accepts."""
    custom = [_normalise(k) for k in settings.get("intensities")] if settings is not None else []
    return sorted({*custom, *_countries(), *_gcp(), *_cloud_regions()})


def _normalise(region: str) -> str:
    region = region.strip()
    if ":" in region:
        return region.lower()
    return region.upper()


def intensity(
    region: str | None,
    settings: Settings | None = None,
    *,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
) -> Intensity:
    """The grid intensity in force for ``region`` (``None``: the world average, flagged
    ``no_region``). With an ``intensity_series`` configured, the series wins: its time-weighted
    mean over ``[start, end]`` (the whole series without them). ``settings=None`` reads the
    configuration in force (:func:`wattwise.config.load`)."""
    if settings is None:
        from wattwise.config import load

        settings = load()
    series = settings.get("intensity_series")
    if series is not None:
        return series_mean(series, start, end, region=region)
    if region is None or not region.strip():
        return world_average()
    code = _normalise(region)
    custom = {_normalise(k): (k, v) for k, v in settings.get("intensities").items()}
    if code in custom:
        name, row = custom[code]
        where = settings.source("intensities")
        return Intensity(
            region=code,
            gco2e_per_kwh=row["gco2e_per_kwh"],
            source=row["source"],
            year=row["year"],
            provenance=_provenance(f"configuration ({where})", row["year"], entry=name),
        )
    if code in _countries():
        return _country(code, code)
    if code in _gcp():
        value, source, country = _gcp()[code]
        dataset = "codecarbon data/cloud/impact.csv"
        return Intensity(
            region=code,
            gco2e_per_kwh=value,
            source=f"Google Cloud region carbon data ({source}) via codecarbon "
            f"{_codecarbon_version()}",
            year=GCP_DATA_YEAR,
            provenance=_provenance(dataset, GCP_DATA_YEAR, country=country),
        )
    if code in _cloud_regions():
        row = _cloud_regions()[code]
        found = _grid(row["grid"], code)
        return Intensity(
            region=code,
            gco2e_per_kwh=found.gco2e_per_kwh,
            source=f"{found.source}; {code} is in {row['location']} ({row['source']}, "
            f"checked {row['year']})",
            year=found.year,
            provenance={
                **found.provenance,
                "grid": row["grid"],
                "location": row["location"],
                "location_source": row["source"],
                "location_year": int(row["year"]),
            },
        )
    known = known_regions(settings)
    closest = difflib.get_close_matches(code, known, n=5, cutoff=0.5)
    hint = f"closest: {', '.join(closest)}; " if closest else ""
    raise UnknownRegion(
        f"unknown region {region!r}: {hint}accepted: an ISO-3166 alpha-3 country code (FRA) "
        "or provider:region (gcp:europe-west1, aws:us-east-1, azure:westeurope); "
        "`wattwise carbon --list` shows all, [intensities] in wattwise.toml adds your own"
    )


def _parse_time(text: str, where: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError as err:
        raise BadInput(
            f"{where}: bad timestamp {text!r}; accepted: ISO 8601, e.g. 2025-01-31T13:00:00Z"
        ) from err
    return _aware(moment)


def _series_points(path: str) -> tuple[tuple[dt.datetime, float], ...]:
    try:
        modified_ns = pathlib.Path(path).stat().st_mtime_ns
    except OSError as err:
        raise BadInput(f"intensity_series {path!r} cannot be read: {err}") from err
    return _load_series(path, modified_ns)


@cache
def _load_series(path: str, modified_ns: int) -> tuple[tuple[dt.datetime, float], ...]:
    """The parsed series (cached per file version: ``modified_ns`` is part of the key)."""
    with open(path, encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or {"timestamp", "gco2e_per_kwh"} - set(rows[0]):
        raise BadInput(
            f"intensity_series {path!r}: accepted: a CSV with columns timestamp,gco2e_per_kwh "
            "and at least one row"
        )
    points = []
    for line, row in enumerate(rows, start=2):
        where = f"{path} line {line}"
        try:
            value = float(row["gco2e_per_kwh"])
        except (TypeError, ValueError):
            value = -1.0
        if not value >= 0:
            raise BadInput(f"{where}: bad gco2e_per_kwh {row['gco2e_per_kwh']!r}; accepted: >= 0")
        points.append((_parse_time(row["timestamp"] or "", where), value))
    return tuple(sorted(points))


def series_mean(
    path: str,
    start: dt.datetime | None,
    end: dt.datetime | None,
    *,
    region: str | None = None,
) -> Intensity:
    """Time-weighted mean of a ``timestamp,gco2e_per_kwh`` series over ``[start, end]``.

    Each value holds from its timestamp until the next one; the last holds on. Before the first
    timestamp the first value is used and the result is flagged ``intensity_extrapolated``, as is
    an interval that runs past the last timestamp by more than the series' last step. Naive
    datetimes are UTC. Without ``start``/``end`` the whole series is averaged."""
    points = _series_points(str(path))
    times = [t for t, _ in points]
    start = _aware(start) if start is not None else times[0]
    last_step = times[-1] - times[-2] if len(times) > 1 else dt.timedelta(0)
    end = _aware(end) if end is not None else times[-1] + last_step
    if end < start:
        raise BadInput(f"intensity series interval ends ({end}) before it starts ({start})")
    flags = []
    if start < times[0] or end > times[-1] + last_step:
        flags.append("intensity_extrapolated")
    if end == start:
        value = _value_at(points, start)
    else:
        edges = sorted({start, end, *(t for t in times if start < t < end)})
        total_s = (end - start).total_seconds()
        value = (
            sum(
                _value_at(points, a) * (b - a).total_seconds() for a, b in itertools.pairwise(edges)
            )
            / total_s
        )
    year = start.year
    return Intensity(
        region=region,
        gco2e_per_kwh=value,
        source=f"time series {path} (time-weighted mean {start.isoformat()} .. {end.isoformat()})",
        year=year,
        flags=tuple(flags),
        provenance=_provenance(
            str(path), year, start=start.isoformat(), end=end.isoformat(), points=len(points)
        ),
    )


def _aware(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _value_at(points: tuple[tuple[dt.datetime, float], ...], moment: dt.datetime) -> float:
    value = points[0][1]
    for t, v in points:
        if t > moment:
            break
        value = v
    return value


def provider_of(scenario: str) -> str:
    """``"aws:p5.48xlarge"`` -> ``"aws"``; ``"onprem"`` -> ``"onprem"``."""
    return scenario.strip().lower().partition(":")[0]


def pue(scenario: str = "onprem", settings: Settings | None = None) -> Pue:
    """PUE for a pricing scenario (``onprem``, ``aws:p5.48xlarge``) or a bare provider name.

    A ``pue`` number in the configuration applies to every scenario; a table overrides per
    provider. Providers without a default (custom instances) use the on-prem value."""
    provider = provider_of(scenario)
    if settings is None:
        from wattwise.config import load

        settings = load()
    configured = settings.get("pue")
    where = settings.source("pue")
    if isinstance(configured, float):
        return Pue(configured, f"configuration ({where})", None)
    if isinstance(configured, dict) and provider in configured:
        return Pue(configured[provider], f"configuration ({where}), {provider}", None)
    table = _pue_table()
    if provider in table:
        return table[provider]
    fallback = table["onprem"]
    if isinstance(configured, dict) and "onprem" in configured:
        fallback = Pue(configured["onprem"], f"configuration ({where}), onprem", None)
    return Pue(
        fallback.value,
        f"no PUE known for provider {provider!r}: on-prem value used ({fallback.source})",
        fallback.year,
    )


def co2e_kg(energy_j: float, intensity: Intensity | float, pue_value: float | Pue) -> float:
    """kg CO2e of ``energy_j`` of device energy: kWh x PUE x gCO2e/kWh / 1000."""
    g_per_kwh = intensity.gco2e_per_kwh if isinstance(intensity, Intensity) else intensity
    factor = pue_value.value if isinstance(pue_value, Pue) else pue_value
    return j_to_kwh(energy_j) * factor * g_per_kwh / G_PER_KG
