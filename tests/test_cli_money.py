"""`wattwise carbon / config / hardware / prices` through the real CLI entry point."""

from __future__ import annotations

import json

import pytest

from wattwise import config, pricing
from wattwise.cli import main

pytestmark = pytest.mark.usefixtures("no_wattwise_env")  # see conftest.py


def run_json(capsys, *argv):
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_carbon_json_shape(capsys):
    data = run_json(capsys, "carbon", "--region", "fra")
    assert {"region", "gco2e_per_kwh", "source", "year", "flags"} <= set(data)
    assert data["region"] == "FRA"
    assert data["flags"] == []
    assert data["region_source"] == "argument"
    assert data["provenance"]["codecarbon_version"]


def test_carbon_without_region_is_world_average_flagged(capsys):
    data = run_json(capsys, "carbon")
    assert data["region"] is None
    assert data["flags"] == ["no_region"]
    assert data["gco2e_per_kwh"] > 300


def test_carbon_region_from_env_and_file(tmp_path, capsys, monkeypatch):
    (tmp_path / "wattwise.toml").write_text('region = "SWE"\n', encoding="utf-8")
    assert run_json(capsys, "carbon")["region"] == "SWE"
    monkeypatch.setenv("WATTWISE_REGION", "gcp:europe-west9")
    data = run_json(capsys, "carbon")
    assert data["region"] == "gcp:europe-west9"
    assert data["region_source"] == "env:WATTWISE_REGION"


def test_carbon_text_and_list(capsys):
    assert main(["carbon", "--region", "aws:us-east-1"]) == 0
    out = capsys.readouterr().out
    assert "gCO2e/kWh" in out and "eGRID" in out
    codes = run_json(capsys, "carbon", "--list")
    assert {"FRA", "gcp:europe-west1", "aws:us-east-1", "azure:westeurope"} <= set(codes)


def test_unknown_region_exits_2_with_closest(capsys):
    assert main(["carbon", "--region", "DEX"]) == 2
    err = capsys.readouterr().err
    assert "'DEX'" in err and "DEU" in err
    assert "Traceback" not in err


def test_config_json_lists_every_setting_with_source(tmp_path, capsys, monkeypatch):
    toml = tmp_path / "wattwise.toml"
    toml.write_text("tariff_per_kwh = 0.3\n", encoding="utf-8")
    monkeypatch.setenv("WATTWISE_LEDGER", "/tmp/other.db")
    data = run_json(capsys, "config")
    assert data["file"] == str(toml.resolve())
    settings = data["settings"]
    assert set(settings) == set(config.KEYS)
    assert settings["tariff_per_kwh"] == {"value": 0.3, "source": f"file:{toml.resolve()}"}
    assert settings["ledger"] == {"value": "/tmp/other.db", "source": "env:WATTWISE_LEDGER"}
    assert settings["region"]["source"] == "default"


def test_config_text(capsys):
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert "tariff_per_kwh" in out and "default" in out


@pytest.mark.parametrize("command", ["config", "carbon", "hardware", "prices"])
def test_bad_config_exits_2_naming_file_and_key(tmp_path, capsys, command):
    toml = tmp_path / "wattwise.toml"
    toml.write_text('regoin = "FRA"\n', encoding="utf-8")
    assert main([command]) == 2
    err = capsys.readouterr().err
    assert str(toml.resolve()) in err
    assert "'regoin'" in err and "'region'" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("WATTWISE_REGION", "XYZ", "unknown region 'XYZ'"),
        ("WATTWISE_PRICING", "aws:p9.nope", "unknown pricing scenario 'aws:p9.nope'"),
    ],
)
def test_config_refuses_a_region_or_pricing_that_resolves_to_nothing(
    monkeypatch, capsys, variable, value, named
):
    """Regression: `config` showed an unknown WATTWISE_REGION with exit code 0, while `carbon`
    (and every run) refused it."""
    monkeypatch.setenv(variable, value)
    for argv in (["config"], ["config", "--json"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"env:{variable}" in err and named in err and "accepted" in err
        assert "Traceback" not in err
    monkeypatch.setenv(variable, "FRA" if variable == "WATTWISE_REGION" else "aws:p5.48xlarge")
    assert main(["config"]) == 0


def test_negative_price_in_pyproject_exits_2(tmp_path, capsys):
    project = tmp_path / "pyproject.toml"
    project.write_text("[tool.wattwise]\ntariff_per_kwh = -0.2\n", encoding="utf-8")
    assert main(["config", "--json"]) == 2
    err = capsys.readouterr().err
    assert str(project.resolve()) in err and "'tariff_per_kwh'" in err and ">= 0" in err


def test_non_usd_tariff_without_rate_exits_2(tmp_path, capsys):
    (tmp_path / "wattwise.toml").write_text('currency = "GBP"\n', encoding="utf-8")
    assert main(["config"]) == 2
    assert "'usd_per_currency'" in capsys.readouterr().err


def test_hardware_json(capsys):
    rows = run_json(capsys, "hardware")
    by_name = {row["name"]: row for row in rows}
    assert by_name["H100 SXM 80 GB"]["tdp_w"] == 700
    assert all(row["source"] and row["date"] for row in rows)
    assert main(["hardware"]) == 0
    assert "RTX 4090" in capsys.readouterr().out


def test_prices_json(capsys):
    rows = run_json(capsys, "prices")
    p5 = next(r for r in rows if r["name"] == "aws:p5.48xlarge")
    table = pricing.instance("aws:p5.48xlarge")
    assert p5["n_gpus"] == table.n_gpus == 8
    assert p5["price_per_gpu_hour_usd"] == pytest.approx(table.price_per_hour_usd / 8)
    assert all(r["source"] and r["date"] for r in rows)


def test_listings_mark_rows_whose_source_is_unverified(capsys):
    assert main(["hardware"]) == 0
    out = capsys.readouterr().out
    assert "* = unverified" in out
    assert "CPU only *" in out  # an assumed row
    assert "H100 SXM 80 GB *" not in out and "H100 SXM 80 GB" in out  # a checked row
    assert main(["prices"]) == 0
    assert "* = unverified" in capsys.readouterr().out
    rows = run_json(capsys, "prices")
    assert any(r["source"].startswith("unverified:") for r in rows)
    assert not any(r["name"].endswith("*") for r in rows)  # the marker is for humans only
