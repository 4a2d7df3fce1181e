"""Grid intensity from codecarbon's shipped data, PUE and CO2e, against hand-worked numbers."""

from __future__ import annotations

import csv
import datetime as dt
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
from importlib import resources

import pytest

from wattwise import carbon
from wattwise.errors import BadInput, UnknownRegion

DATA = pathlib.Path(next(iter(importlib.util.find_spec("codecarbon").submodule_search_locations)))
DATA = DATA / "data"
CODECARBON_VERSION = importlib.metadata.version("codecarbon")


def energy_mix():
    return json.loads((DATA / "private_infra" / "global_energy_mix.json").read_text("utf-8"))


# --- real codecarbon data ---------------------------------------------------------------------


def test_country_values_come_from_codecarbon_file(settings):
    mix = energy_mix()
    fra = carbon.intensity("FRA", settings)
    deu = carbon.intensity("DEU", settings)
    assert fra.gco2e_per_kwh == pytest.approx(mix["FRA"]["carbon_intensity"])
    assert deu.gco2e_per_kwh == pytest.approx(mix["DEU"]["carbon_intensity"])
    assert fra.year == mix["FRA"]["year"]
    # nuclear/hydro France is several times cleaner than Germany
    assert fra.gco2e_per_kwh * 4 < deu.gco2e_per_kwh
    assert 10 < fra.gco2e_per_kwh < 150
    assert 250 < deu.gco2e_per_kwh < 600


def test_lower_case_country_and_spaces(settings):
    assert carbon.intensity(" fra ", settings).gco2e_per_kwh == pytest.approx(
        carbon.intensity("FRA", settings).gco2e_per_kwh
    )
    assert carbon.intensity("fra", settings).region == "FRA"


def test_world_average_without_region(settings):
    mix = energy_mix().values()
    expected = sum(r["carbon_intensity"] * r["total_TWh"] for r in mix) / sum(
        r["total_TWh"] for r in mix
    )
    world = carbon.intensity(None, settings)
    assert world.region is None
    assert world.flags == ("no_region",)
    assert world.gco2e_per_kwh == pytest.approx(expected)
    assert 350 < world.gco2e_per_kwh < 600  # the world's grid is around 480 g/kWh
    assert carbon.intensity("", settings).flags == ("no_region",)


def test_gcp_region_from_impact_csv(settings):
    with (DATA / "cloud" / "impact.csv").open(encoding="utf-8-sig") as fh:
        rows = {r["region"]: r for r in csv.DictReader(fh) if r["provider"] == "gcp"}
    found = carbon.intensity("gcp:europe-west1", settings)
    assert found.gco2e_per_kwh == pytest.approx(float(rows["europe-west1"]["impact"]))
    assert found.year == carbon.GCP_DATA_YEAR
    assert "cloud.google.com" in found.source
    assert carbon.intensity("GCP:Europe-West1", settings).region == "gcp:europe-west1"


def test_aws_us_east_1_is_virginia_egrid(settings):
    usa = json.loads((DATA / "private_infra" / "2023" / "usa_emissions.json").read_text("utf-8"))
    lb_per_mwh = usa["virginia"]["emissions"]
    found = carbon.intensity("aws:us-east-1", settings)
    # lb/MWh -> g/kWh: x 453.59237 g/lb / 1000 kWh/MWh
    assert found.gco2e_per_kwh == pytest.approx(lb_per_mwh * 0.45359237)
    assert found.year == usa["_source"]["year"]
    assert found.provenance["grid"] == "USA/virginia"
    assert "eGRID" in found.source


def test_aws_and_azure_european_regions_use_their_country(settings):
    mix = energy_mix()
    assert carbon.intensity("aws:eu-west-3", settings).gco2e_per_kwh == pytest.approx(
        mix["FRA"]["carbon_intensity"]
    )
    assert carbon.intensity("azure:westeurope", settings).gco2e_per_kwh == pytest.approx(
        mix["NLD"]["carbon_intensity"]
    )


@pytest.mark.parametrize(
    "region",
    [None, "FRA", "usa", "gcp:us-central1", "aws:us-west-2", "azure:eastus", "azure:swedencentral"],
)
def test_every_result_carries_data_year_and_codecarbon_version(settings, region):
    found = carbon.intensity(region, settings)
    assert found.provenance["codecarbon_version"] == CODECARBON_VERSION
    assert isinstance(found.provenance["data_year"], int)
    assert found.provenance["data_year"] == found.year
    assert 2000 < found.year <= dt.date.today().year
    assert found.source


def test_every_cloud_region_row_has_source_and_year_and_resolves(settings):
    text = resources.files("wattwise").joinpath("data/cloud_regions.csv").read_text("utf-8")
    rows = list(csv.DictReader(text.splitlines()))
    assert {r["provider"] for r in rows} == {"aws", "azure"}
    for row in rows:
        assert "https://" in row["source"], row  # checked rows and "unverified:" rows both cite
        assert 2020 <= int(row["year"]) <= dt.date.today().year, row
        found = carbon.intensity(f"{row['provider']}:{row['region']}", settings)
        assert found.gco2e_per_kwh > 0


def test_every_pue_row_has_source_and_year():
    text = resources.files("wattwise").joinpath("data/pue.csv").read_text("utf-8")
    rows = list(csv.DictReader(text.splitlines()))
    assert {"onprem", "aws", "gcp", "azure"} <= {r["provider"] for r in rows}
    for row in rows:
        assert row["source"].strip() and 2015 <= int(row["year"]) <= dt.date.today().year, row
        assert 1.0 <= float(row["pue"]) < 3.0


# --- errors and custom rows -------------------------------------------------------------------


def test_unknown_region_lists_closest(settings):
    with pytest.raises(UnknownRegion) as err:
        carbon.intensity("FRX", settings)
    assert "'FRX'" in str(err.value)
    assert "FRA" in str(err.value)
    with pytest.raises(UnknownRegion, match="aws:us-east-1"):
        carbon.intensity("aws:us-east-9", settings)


def test_custom_intensity_overrides_and_adds(settings_from):
    settings = settings_from(
        '[intensities.lab]\ngco2e_per_kwh = 12.5\nsource = "our PPA"\nyear = 2024\n'
        '[intensities.FRA]\ngco2e_per_kwh = 70\nsource = "RTE eco2mix"\nyear = 2024\n',
    )
    lab = carbon.intensity("LAB", settings)
    assert (lab.gco2e_per_kwh, lab.source, lab.year) == (12.5, "our PPA", 2024)
    assert lab.provenance["codecarbon_version"] == CODECARBON_VERSION
    assert lab.provenance["entry"] == "lab"
    assert lab.provenance["data_year"] == 2024
    assert lab.provenance["dataset"] == f"configuration ({settings.source('intensities')})"
    assert carbon.intensity("fra", settings).gco2e_per_kwh == 70
    assert "LAB" in carbon.known_regions(settings)


# --- time series ------------------------------------------------------------------------------

SERIES = (
    "timestamp,gco2e_per_kwh\n2025-01-01T00:00:00Z,100\n2025-01-01T01:00:00Z,300\n"
    "2025-01-01T02:00:00,200\n"
)


def utc(hour, minute=0, day=1):
    return dt.datetime(2025, 1, day, hour, minute, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("start", "end", "expected", "flags"),
    [
        (utc(0, 30), utc(1, 30), (0.5 * 100 + 0.5 * 300) / 1.0, ()),
        (utc(0), utc(2), (100 + 300) / 2, ()),
        (utc(1, 30), utc(3), (0.5 * 300 + 1.0 * 200) / 1.5, ()),
        (utc(1, 15), utc(1, 15), 300, ()),
        (dt.datetime(2024, 12, 31, 23), utc(0, 30), 100, ("intensity_extrapolated",)),
        (utc(2), utc(4), 200, ("intensity_extrapolated",)),
        # naive datetimes are UTC
        (dt.datetime(2025, 1, 1, 0, 30), dt.datetime(2025, 1, 1, 1, 30), 200, ()),
    ],
)
def test_series_time_weighted_mean(tmp_path, settings_from, start, end, expected, flags):
    (tmp_path / "grid.csv").write_text(SERIES, encoding="utf-8")
    settings = settings_from('intensity_series = "grid.csv"\nregion = "FRA"\n')
    found = carbon.intensity("FRA", settings, start=start, end=end)
    assert found.gco2e_per_kwh == pytest.approx(expected)
    assert found.flags == flags
    assert found.region == "FRA"
    assert "grid.csv" in found.source
    assert found.provenance["codecarbon_version"] == CODECARBON_VERSION
    assert found.provenance["dataset"] == str((tmp_path / "grid.csv").resolve())
    assert found.provenance["data_year"] == found.year == start.year
    assert found.provenance["points"] == 3


def test_series_whole_span_without_interval(tmp_path):
    path = tmp_path / "grid.csv"
    path.write_text(SERIES, encoding="utf-8")
    # last value holds one more step (1 h): (100 + 300 + 200) / 3
    assert carbon.series_mean(str(path), None, None).gco2e_per_kwh == pytest.approx(200)


def test_bad_series(tmp_path):
    path = tmp_path / "grid.csv"
    path.write_text("time,value\n2025-01-01,1\n", encoding="utf-8")
    with pytest.raises(BadInput, match="timestamp,gco2e_per_kwh"):
        carbon.series_mean(str(path), None, None)
    path2 = tmp_path / "grid2.csv"
    path2.write_text("timestamp,gco2e_per_kwh\nyesterday,1\n", encoding="utf-8")
    with pytest.raises(BadInput, match="'yesterday'"):
        carbon.series_mean(str(path2), None, None)
    path3 = tmp_path / "grid3.csv"
    path3.write_text(SERIES, encoding="utf-8")
    with pytest.raises(BadInput, match="before it starts"):
        carbon.series_mean(str(path3), utc(2), utc(1))


# --- PUE and CO2e -----------------------------------------------------------------------------


def test_pue_defaults_per_provider(settings):
    assert carbon.pue("onprem", settings).value == pytest.approx(1.58)
    assert carbon.pue("aws:p5.48xlarge", settings).value == pytest.approx(1.15)
    assert carbon.pue("gcp", settings).value == pytest.approx(1.10)
    for scenario in ("onprem", "aws", "gcp", "azure", "lambda:x", "coreweave:x", "runpod:x"):
        found = carbon.pue(scenario, settings)
        assert found.source and found.year, scenario
    custom = carbon.pue("lab:box", settings)
    assert custom.value == pytest.approx(1.58)
    assert "no PUE known for provider 'lab'" in custom.source


def test_pue_overrides(settings_from):
    single = settings_from("pue = 1.3\n")
    assert carbon.pue("aws:p5.48xlarge", single).value == 1.3
    assert carbon.pue("onprem", single).value == 1.3
    table = settings_from("pue = { onprem = 1.4, AWS = 1.05 }\n")
    assert carbon.pue("aws:p5.48xlarge", table).value == 1.05
    assert carbon.pue("onprem", table).value == 1.4
    assert carbon.pue("gcp:a2-highgpu-1g", table).value == pytest.approx(1.10)  # built-in
    assert carbon.pue("lab:box", table).value == 1.4  # unknown provider -> on-prem


def test_co2e_kg_hand_worked():
    # 36 MJ = 10 kWh; x PUE 1.5 = 15 kWh at the meter; x 400 g/kWh = 6000 g = 6 kg
    assert carbon.co2e_kg(36e6, 400.0, 1.5) == pytest.approx(6.0)
    found = carbon.Intensity("X", 400.0, "s", 2024)
    assert carbon.co2e_kg(36e6, found, carbon.Pue(1.5, "s", 2024)) == pytest.approx(6.0)
    assert carbon.co2e_kg(0.0, found, 1.5) == 0.0


def test_every_known_region_has_source_and_year(settings):
    codes = carbon.known_regions(settings)
    assert len(codes) > 250
    for code in codes:
        found = carbon.intensity(code, settings)
        assert found.source.strip() and isinstance(found.year, int), code
        assert found.gco2e_per_kwh >= 0, code
        assert found.provenance["codecarbon_version"] == CODECARBON_VERSION, code


def test_missing_series_file_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="cannot be read"):
        carbon.series_mean(str(tmp_path / "absent.csv"), None, None)


def test_edited_series_is_read_again(tmp_path):
    path = tmp_path / "grid.csv"
    path.write_text("timestamp,gco2e_per_kwh\n2025-01-01T00:00:00Z,100\n", encoding="utf-8")
    assert carbon.series_mean(str(path), None, None).gco2e_per_kwh == 100
    path.write_text("timestamp,gco2e_per_kwh\n2025-01-01T00:00:00Z,50\n", encoding="utf-8")
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    assert carbon.series_mean(str(path), None, None).gco2e_per_kwh == 50


def test_codecarbon_and_heavy_modules_are_never_imported(tmp_path):
    code = (
        "import sys\n"
        "from wattwise import carbon, config, hardware, pricing\n"
        "s = config.load(env={})\n"
        "carbon.intensity('FRA', s); carbon.intensity('gcp:us-west1', s)\n"
        "pricing.cost(1e6, 60.0, gpu_name='H100', settings=s); hardware.all_gpus(s)\n"
        "heavy = ('codecarbon', 'torch', 'pynvml', 'pandas')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
