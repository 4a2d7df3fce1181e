"""The GPU/CPU spec table the estimator and the on-prem pricing use.

Rows come from ``wattwise/data/gpu_specs.csv`` (one row per part, each with its source and date)
plus user rows from the configuration's ``gpus`` table, which win over built-in rows of the same
name. Rates are dense (no structured sparsity); ``memory_gib`` is the capacity the driver reports
where known (slightly below the marketed figure); ``price_usd`` is a typical purchase price of one
card (the whole machine for the CPU-only row).

Names are matched forgivingly: the NVML name (``NVIDIA H100 80GB HBM3``), the short name
(``H100 PCIe``), case, spaces, hyphens and the words NVIDIA / GeForce / Tesla do not matter. A bare
family name means its flagship part: ``H100`` is the H100 SXM 80 GB, ``A100`` the A100 SXM 80 GB.
"""

from __future__ import annotations

import csv
import difflib
import re
from dataclasses import asdict, dataclass
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from wattwise.errors import UnknownHardware

if TYPE_CHECKING:  # pragma: no cover
    from wattwise.config import Settings

_NOISE_WORDS = re.compile(r"\b(nvidia|geforce|tesla)\b")
_NON_ALNUM = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True, slots=True)
class GpuSpec:
    """One hardware part: power, speed, memory and price, with where the numbers come from."""

    name: str
    aliases: tuple[str, ...]
    vendor: str
    kind: str
    """``gpu`` or ``cpu`` (the CPU-only row)."""
    architecture: str
    tdp_w: float
    idle_w: float
    bf16_tflops: float
    """Dense bf16 tensor rate; parts without bf16 tensor cores carry their fp32 rate."""
    fp16_tflops: float
    fp32_tflops: float
    memory_gib: float
    memory_bandwidth_gbs: float
    price_usd: float
    source: str
    date: str

    def to_json(self) -> dict[str, Any]:
        row = asdict(self)
        row["aliases"] = list(self.aliases)
        return row


NUMERIC_FIELDS: tuple[str, ...] = (
    "tdp_w",
    "idle_w",
    "bf16_tflops",
    "fp16_tflops",
    "fp32_tflops",
    "memory_gib",
    "memory_bandwidth_gbs",
    "price_usd",
)


def normalise(name: str) -> str:
    """The matching key of a name: lower case, no vendor words, letters and digits only."""
    return _NON_ALNUM.sub("", _NOISE_WORDS.sub("", name.lower()))


@cache
def _builtin() -> tuple[GpuSpec, ...]:
    text = resources.files("wattwise").joinpath("data/gpu_specs.csv").read_text(encoding="utf-8")
    return tuple(_from_row(row) for row in csv.DictReader(text.splitlines()))


def _from_row(row: dict[str, str]) -> GpuSpec:
    return GpuSpec(
        name=row["name"],
        aliases=tuple(a for a in row["aliases"].split("|") if a),
        vendor=row["vendor"],
        kind=row["kind"],
        architecture=row["architecture"],
        source=row["source"],
        date=row["date"],
        **{key: float(row[key]) for key in NUMERIC_FIELDS},
    )


def _user_rows(settings: Settings | None) -> list[GpuSpec]:
    if settings is None:
        return []
    rows = []
    for name, row in settings.get("gpus").items():
        numbers = {key: float(row[key]) for key in NUMERIC_FIELDS if key in row}
        numbers.setdefault("fp16_tflops", numbers["bf16_tflops"])
        rows.append(
            GpuSpec(
                name=name,
                aliases=tuple(row.get("aliases", ())),
                vendor=row.get("vendor", "custom"),
                kind=row.get("kind", "gpu"),
                architecture=row.get("architecture", "custom"),
                source=row["source"],
                date=str(row["date"]),
                **numbers,
            )
        )
    return rows


def all_gpus(settings: Settings | None = None) -> list[GpuSpec]:
    """Every row: the user's rows from the configuration first, then the built-in table."""
    user = _user_rows(settings)
    taken = {normalise(spec.name) for spec in user}
    return user + [spec for spec in _builtin() if normalise(spec.name) not in taken]


def lookup(name: str, settings: Settings | None = None) -> GpuSpec:
    """The row for ``name`` (forgiving match); :class:`UnknownHardware` lists the closest names."""
    if not isinstance(name, str):
        raise UnknownHardware(f"bad hardware name {name!r}; accepted: a GPU name such as 'H100'")
    rows = all_gpus(settings)
    key = normalise(name)
    for spec in rows:
        if key in {normalise(n) for n in (spec.name, *spec.aliases)}:
            return spec
    names = [spec.name for spec in rows]
    near = closest(name, settings)
    hint = f"closest: {', '.join(near)}; " if near else ""
    raise UnknownHardware(
        f"unknown hardware {name!r}: {hint}known: {', '.join(names)} "
        "(add your own under [gpus] in wattwise.toml)"
    )


def closest(name: str, settings: Settings | None = None, n: int = 8) -> list[str]:
    """Up to ``n`` table names closest to ``name`` (by name or alias), best first; may be
    empty."""
    rows = all_gpus(settings)
    candidates = {normalise(a): spec.name for spec in rows for a in (spec.name, *spec.aliases)}
    matches = difflib.get_close_matches(normalise(name), candidates, n=n, cutoff=0.5)
    return list(dict.fromkeys(candidates[k] for k in matches))
