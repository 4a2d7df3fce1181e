"""Every shipped data row says where its numbers come from, in a form the loaders accept."""

from __future__ import annotations

import csv
import datetime as dt
import re
from importlib import resources

import pytest

from wattwise import hardware, pricing

# file -> (date column, pattern the loader and the config checks accept)
FILES = {
    "gpu_specs.csv": ("date", r"\d{4}-\d{2}"),
    "instance_prices.csv": ("date", r"\d{4}-\d{2}"),
    "pue.csv": ("year", r"\d{4}"),
    "cloud_regions.csv": ("year", r"\d{4}"),
}
# a checked source names an address: a web page or a repository file at a commit
ADDRESS = re.compile(r"https://\S+|[\w.-]+/[\w.-]+ \S+@[0-9a-f]{7}")


def rows(name: str) -> list[dict[str, str]]:
    text = resources.files("wattwise").joinpath(f"data/{name}").read_text("utf-8")
    return list(csv.DictReader(text.splitlines()))


@pytest.mark.parametrize("name", sorted(FILES))
def test_every_row_has_a_source_and_a_loadable_date(name):
    column, pattern = FILES[name]
    found = rows(name)
    assert found, name
    for row in found:
        assert row["source"].strip(), row
        assert re.fullmatch(pattern, row[column]), row
        assert 2015 <= int(row[column][:4]) <= dt.date.today().year, row


@pytest.mark.parametrize("name", sorted(FILES))
def test_sources_are_checked_addresses_or_say_unverified(name):
    for row in rows(name):
        source = row["source"]
        assert source.startswith("unverified:") or ADDRESS.search(source), row
        # "unverified" must explain itself, not stand alone
        if source.startswith("unverified:"):
            assert len(source) > len("unverified: ") + 20, row


def test_unverified_marks_reach_the_hardware_and_prices_listings():
    marked = [s.name for s in hardware.all_gpus() if "unverified" in s.source]
    assert "CPU only" in marked and "A10G" in marked
    assert any(r.source.startswith("unverified:") for r in pricing.instances())
