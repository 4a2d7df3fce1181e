"""Settings: explicit argument > environment > configuration file > defaults.

The file is ``./wattwise.toml`` or the ``[tool.wattwise]`` table of ``./pyproject.toml`` (the
first found, in that order), or the path given to :func:`load`. Relative paths inside a file are
taken relative to that file. Every key is listed in :data:`KEYS` with its type, default and
meaning; anything else is a :class:`~wattwise.errors.ConfigError` naming the file, the key and
what is accepted.

Example ``wattwise.toml``::

    region = "FRA"
    pricing = ["onprem", "aws:p5.48xlarge"]
    tariff_per_kwh = 0.25
    currency = "EUR"
    usd_per_currency = 1.08
    pue = { onprem = 1.4 }

    [instances."lab:dgx-h100"]
    gpus = 8
    gpu = "H100"
    price_per_hour_usd = 20.0
    source = "internal recharge rate"
    date = "2025-01"
"""

from __future__ import annotations

import copy
import difflib
import math
import os
import pathlib
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from wattwise.errors import BadInput, ConfigError
from wattwise.hardware import NUMERIC_FIELDS
from wattwise.units import HOURS_PER_YEAR

ENV_VARS: dict[str, str] = {
    "region": "WATTWISE_REGION",
    "pricing": "WATTWISE_PRICING",
    "ledger": "WATTWISE_LEDGER",
    "metrics_port": "WATTWISE_METRICS_PORT",
    "pushgateway": "WATTWISE_PUSHGATEWAY",
}


@dataclass(frozen=True, slots=True)
class Key:
    """One setting: its accepted type (in words), default and meaning."""

    type: str
    default: Any
    meaning: str
    check: Callable[[Any, str, str], Any] = field(repr=False)
    """``check(value, key, where)`` returns the value normalised or raises ConfigError."""


def _fail(where: str, key: str, value: Any, accepted: str) -> ConfigError:
    return ConfigError(f"{where}: bad value for {key!r}: {value!r}; accepted: {accepted}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _number(minimum: float, *, strict: bool = False, optional: bool = False) -> Callable:
    accepted = f"a number {'>' if strict else '>='} {minimum:g}"

    def check(value: Any, key: str, where: str) -> float | None:
        if value is None and optional:
            return None
        if not _is_number(value) or value < minimum or (strict and value == minimum):
            raise _fail(where, key, value, accepted)
        return float(value)

    return check


def _text(*, optional: bool = False) -> Callable:
    def check(value: Any, key: str, where: str) -> str | None:
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value.strip():
            raise _fail(where, key, value, "a non-empty string")
        return value.strip()

    return check


def _currency(value: Any, key: str, where: str) -> str:
    if not isinstance(value, str) or len(value) != 3 or not value.isalpha():
        raise _fail(where, key, value, "an ISO-4217 currency code such as USD or EUR")
    return value.upper()


def _pricing(value: Any, key: str, where: str) -> str | list[str]:
    accepted = '"onprem" or "provider:instance" (e.g. "aws:p5.48xlarge"), or a list of them'
    names = value if isinstance(value, list) else [value]
    if not names or not all(isinstance(n, str) for n in names):
        raise _fail(where, key, value, accepted)
    names = [n.strip() for n in names]
    for name in names:
        provider, _, instance = name.partition(":")
        if name != "onprem" and not (provider and instance):
            raise _fail(where, key, name, accepted)
    return names if isinstance(value, list) else names[0]


def _endpoint(value: Any, key: str, where: str) -> str | None:
    """``HOST:PORT`` to serve live metrics on (a bare port: all interfaces), or None."""
    from wattwise import metrics

    if value is None:
        return None
    try:
        return metrics.endpoint_text(*metrics.parse_endpoint(value, key))
    except BadInput:
        raise _fail(
            where, key, value, "a port 0-65535, or HOST:PORT (127.0.0.1:9400, [::1]:9400)"
        ) from None


def _gateway(value: Any, key: str, where: str) -> str | None:
    """The Pushgateway's URL, or None."""
    from wattwise import metrics

    if value is None:
        return None
    try:
        return metrics.parse_gateway(value, key)
    except BadInput:
        raise _fail(where, key, value, "HOST:PORT of a Pushgateway, or http://HOST:PORT") from None


def _pue(value: Any, key: str, where: str) -> float | dict[str, float] | None:
    accepted = "a number >= 1, or a table of provider -> number >= 1 (e.g. {onprem = 1.4})"
    if value is None:
        return None
    if isinstance(value, dict):
        if not value:
            raise _fail(where, key, value, accepted)
        return {str(k).lower(): _number(1.0)(v, f"{key}.{k}", where) for k, v in value.items()}
    if not _is_number(value) or value < 1.0:
        raise _fail(where, key, value, accepted)
    return float(value)


def _table(fields: dict[str, Callable], optional: dict[str, Callable] | None = None) -> Callable:
    optional = optional or {}
    required = ", ".join(fields)

    def check(value: Any, key: str, where: str) -> dict[str, dict[str, Any]]:
        if not isinstance(value, dict):
            raise _fail(where, key, value, f"a table of name -> {{{required}}}")
        out = {}
        for name, row in value.items():
            row_key = f"{key}.{name}"
            if not isinstance(row, dict):
                raise _fail(where, row_key, row, f"a table with {required}")
            known = {**fields, **optional}
            for field_name in row:
                if field_name not in known:
                    raise _unknown(where, field_name, list(known), prefix=f"{row_key}.")
            for field_name in fields:
                if field_name not in row:
                    raise ConfigError(
                        f"{where}: {row_key} lacks {field_name!r}; every row needs {required}"
                    )
            out[str(name)] = {k: known[k](v, f"{row_key}.{k}", where) for k, v in row.items()}
        return out

    return check


def _int(minimum: int) -> Callable:
    def check(value: Any, key: str, where: str) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise _fail(where, key, value, f"an integer >= {minimum}")
        return value

    return check


def _date(value: Any, key: str, where: str) -> str:
    if isinstance(value, bool) or (not isinstance(value, str | int) and not hasattr(value, "year")):
        raise _fail(where, key, value, 'a date such as "2025-06" or a year')
    return str(value)


def _aliases(value: Any, key: str, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(where, key, value, "a list of strings")
    return value


# A [gpus] row needs every number of the hardware table but fp16_tflops (default: bf16_tflops).
_GPU_NUMBERS = {name: _number(0.0) for name in NUMERIC_FIELDS if name != "fp16_tflops"}

KEYS: dict[str, Key] = {
    "region": Key(
        "string or null",
        None,
        'grid region: ISO-3166 alpha-3 ("FRA") or provider:region ("gcp:europe-west1", '
        '"aws:us-east-1", "azure:westeurope"); null = world average, flagged no_region',
        _text(optional=True),
    ),
    "pricing": Key(
        "string or list of strings",
        "onprem",
        'pricing scenario(s): "onprem" or "provider:instance" ("aws:p5.48xlarge")',
        _pricing,
    ),
    "tariff_per_kwh": Key(
        "number >= 0",
        0.13,
        "on-prem electricity price per kWh, in `currency` (default: US commercial average, "
        "EIA Electric Power Monthly 2024, rounded)",
        _number(0.0),
    ),
    "currency": Key(
        "ISO-4217 code", "USD", "currency of tariff_per_kwh (money is reported in USD)", _currency
    ),
    "usd_per_currency": Key(
        "number > 0 or null",
        None,
        "USD per one unit of `currency`; required when currency is not USD",
        _number(0.0, strict=True, optional=True),
    ),
    "pue": Key(
        "number >= 1, table provider -> number, or null",
        None,
        "power usage effectiveness; null = built-in per-provider defaults (see `wattwise carbon`)",
        _pue,
    ),
    "hardware_price_usd": Key(
        "number >= 0 or null",
        None,
        "purchase price of one GPU (the machine for CPU-only runs); null = the hardware table's",
        _number(0.0, optional=True),
    ),
    "service_hours": Key(
        "number > 0",
        3 * HOURS_PER_YEAR,
        "hours the hardware is written off over (default 3 years x 8760 h)",
        _number(0.0, strict=True),
    ),
    "ledger": Key("path", "wattwise.db", "ledger file or postgresql:// URL", _text()),
    "metrics_port": Key(
        "port, HOST:PORT or null",
        None,
        "serve live OpenMetrics for Prometheus on http://HOST:PORT/metrics (a bare port: all "
        "interfaces, 0.0.0.0); null = not served",
        _endpoint,
    ),
    "pushgateway": Key(
        "HOST:PORT or null",
        None,
        "Prometheus Pushgateway the live metrics are pushed to at each epoch end and at the "
        "run's end (job wattwise, grouped by run_id); null = no push",
        _gateway,
    ),
    "sample_hz": Key("number > 0", 10.0, "sensor sampling rate in Hz", _number(0.0, strict=True)),
    "instances": Key(
        "table name -> {gpus, gpu, price_per_hour_usd, source, date}",
        {},
        'custom instance prices; a name without "provider:" is used as "custom:<name>"',
        _table(
            {
                "gpus": _int(1),
                "gpu": _text(),
                "price_per_hour_usd": _number(0.0),
                "source": _text(),
                "date": _date,
            },
            {"region": _text()},
        ),
    ),
    "intensities": Key(
        "table region -> {gco2e_per_kwh, source, year}",
        {},
        "custom grid intensities (override built-in regions of the same code)",
        _table({"gco2e_per_kwh": _number(0.0), "source": _text(), "year": _int(1900)}),
    ),
    "intensity_series": Key(
        "path or null",
        None,
        "CSV of timestamp,gco2e_per_kwh (ISO 8601, naive = UTC): a run's CO2e uses its "
        "time-weighted mean over the run",
        _text(optional=True),
    ),
    "gpus": Key(
        "table name -> {tdp_w, idle_w, bf16_tflops, fp32_tflops, memory_gib, "
        "memory_bandwidth_gbs, price_usd, source, date}",
        {},
        "custom hardware rows (optional: fp16_tflops, aliases, vendor, kind, architecture)",
        _table(
            {**_GPU_NUMBERS, "source": _text(), "date": _date},
            {
                "fp16_tflops": _number(0.0),
                "aliases": _aliases,
                "vendor": _text(),
                "kind": _text(),
                "architecture": _text(),
            },
        ),
    ),
}

_PATH_KEYS = ("ledger", "intensity_series")


def _unknown(where: str, key: str, accepted: list[str], prefix: str = "") -> ConfigError:
    close = difflib.get_close_matches(key, accepted, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(
        f"{where}: unknown key {prefix + key!r}{hint}; accepted: {', '.join(accepted)}"
    )


@dataclass(frozen=True)
class Settings:
    """Every setting in force and where each came from."""

    values: Mapping[str, Any]
    sources: Mapping[str, str]
    """key -> "argument", "env:<VAR>", "file:<path>" or "default"."""
    path: pathlib.Path | None = None
    """The configuration file read, if any."""

    def get(self, key: str) -> Any:
        if key not in KEYS:
            raise _unknown("settings", key, list(KEYS))
        return self.values[key]

    def source(self, key: str) -> str:
        if key not in KEYS:
            raise _unknown("settings", key, list(KEYS))
        return self.sources[key]

    def with_overrides(self, **kwargs: Any) -> Settings:
        """Explicit arguments win over everything; a ``None`` argument means "not given"."""
        values, sources = dict(self.values), dict(self.sources)
        for key, value in kwargs.items():
            if value is None:
                continue
            if key not in KEYS:
                raise _unknown("argument", key, list(KEYS))
            values[key] = KEYS[key].check(value, key, "argument")
            sources[key] = "argument"
        _check_together(values, sources)
        return Settings(values, sources, self.path)

    def shown(self, key: str) -> Any:
        """A setting's value as it may be shown: a ledger URL's password masked."""
        value = self.get(key)
        if key == "ledger" and isinstance(value, str):
            from wattwise.ledger.location import mask

            return mask(value)
        return value

    def to_json(self) -> dict[str, Any]:
        return {
            "file": str(self.path) if self.path else None,
            "settings": {
                key: {"value": self.shown(key), "source": self.sources[key]} for key in KEYS
            },
        }


def _check_together(values: dict[str, Any], sources: dict[str, str]) -> None:
    if values["currency"] != "USD" and values["usd_per_currency"] is None:
        where = sources["currency"].removeprefix("file:")
        raise ConfigError(
            f"{where}: 'currency' is {values['currency']!r} but 'usd_per_currency' is not set; "
            'accepted: currency = "USD", or usd_per_currency = <USD per 1 '
            f"{values['currency']}>"
        )


def _find_file(cwd: pathlib.Path) -> tuple[pathlib.Path, dict[str, Any]] | None:
    own = cwd / "wattwise.toml"
    if own.is_file():
        return own, _read(own)
    project = cwd / "pyproject.toml"
    if project.is_file():
        table = _read(project).get("tool", {}).get("wattwise")
        if table is not None:
            return project, table
    return None


def _read(path: pathlib.Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}; accepted: a TOML file") from err
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path}: not UTF-8 text ({err}); accepted: a TOML file in UTF-8"
        ) from err
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the configuration file: {err}") from err


def load(
    path: str | os.PathLike | None = None,
    *,
    env: Mapping[str, str] = os.environ,
    cwd: str | os.PathLike | None = None,
) -> Settings:
    """Read the settings in force (without explicit arguments: add those with
    :meth:`Settings.with_overrides`). ``path`` may be a ``wattwise.toml`` or a ``pyproject.toml``
    (its ``[tool.wattwise]`` table); without it the current directory (or ``cwd``) is searched."""
    values = {key: copy.deepcopy(spec.default) for key, spec in KEYS.items()}
    sources = dict.fromkeys(KEYS, "default")
    found: tuple[pathlib.Path, dict[str, Any]] | None
    if path is not None:
        file = pathlib.Path(path)
        data = _read(file)
        found = (
            file,
            data.get("tool", {}).get("wattwise", {}) if file.name == "pyproject.toml" else data,
        )
    else:
        found = _find_file(pathlib.Path(cwd) if cwd is not None else pathlib.Path.cwd())
    file_path = None
    if found is not None:
        file_path, table = found
        file_path = file_path.resolve()
        where = str(file_path)
        if not isinstance(table, dict):
            raise _fail(
                where, "tool.wattwise", table, "a table of the keys in wattwise.config.KEYS"
            )
        for key, value in table.items():
            if key not in KEYS:
                raise _unknown(where, key, list(KEYS))
            checked = KEYS[key].check(value, key, where)
            if key in _PATH_KEYS and checked is not None and "://" not in str(checked):
                checked = str(file_path.parent / pathlib.Path(checked).expanduser())
            values[key] = checked
            sources[key] = f"file:{file_path}"
    for key, var in ENV_VARS.items():
        raw = env.get(var, "").strip()
        if raw:
            value: Any = [p.strip() for p in raw.split(",")] if "," in raw else raw
            values[key] = KEYS[key].check(value, key, f"environment variable {var}")
            sources[key] = f"env:{var}"
    _check_together(values, sources)
    return Settings(values, sources, file_path)
