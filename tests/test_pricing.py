"""Money: on-prem energy + amortisation, partial cloud instances, break-even, by hand."""

from __future__ import annotations

import csv
import datetime as dt
import math
import re
from importlib import resources

import pytest

from wattwise import hardware, pricing
from wattwise.errors import BadInput

KWH = 3.6e6  # J


def test_onprem_energy_pue_tariff_and_amortisation(settings):
    s = settings.with_overrides(
        tariff_per_kwh=0.2, pue=1.5, hardware_price_usd=26280.0, service_hours=26280.0
    )
    cost = pricing.cost(10 * KWH, 2 * 3600.0, gpu_name="H100", n_gpus=4, settings=s)
    # energy: 10 kWh x PUE 1.5 x 0.2 USD = 3.00; hardware: 26280 / 26280 h = 1 USD/h x 2 h x 4 GPUs
    assert cost.energy_usd == pytest.approx(3.0)
    assert cost.hardware_usd == pytest.approx(8.0)
    assert cost.instance_usd == 0.0
    assert cost.total_usd == pytest.approx(11.0)
    assert cost.pue == 1.5
    assert cost.scenario == "onprem"


def test_onprem_defaults_use_table_price(settings):
    h100 = hardware.lookup("H100")
    cost = pricing.cost(10 * KWH, 2 * 3600.0, gpu_name="NVIDIA H100 80GB HBM3", settings=settings)
    # 10 kWh x 1.58 (Uptime 2023) x 0.13 USD/kWh; the H100 row's price over 26280 h, for 2 h
    assert cost.energy_usd == pytest.approx(10 * 1.58 * 0.13)
    assert cost.hardware_usd == pytest.approx(h100.price_usd / 26280 * 2)
    assert cost.date == h100.date
    assert "H100 SXM 80 GB" in cost.source


def test_onprem_non_usd_tariff(settings_from):
    s = settings_from(
        'tariff_per_kwh = 0.25\ncurrency = "EUR"\nusd_per_currency = 1.2\npue = 1.0\n'
        "hardware_price_usd = 0\n",
    )
    cost = pricing.cost(4 * KWH, 3600.0, gpu_name="L4", settings=s)
    assert cost.energy_usd == pytest.approx(4 * 0.25 * 1.2)  # 1.20 USD
    assert cost.hardware_usd == 0.0


def test_cpu_only_run_amortises_the_cpu_machine_once(settings):
    cpu = hardware.lookup("CPU only")
    cost = pricing.cost(0.0, 3600.0, n_gpus=3, settings=settings)
    assert cost.energy_usd == 0.0
    assert cost.hardware_usd == pytest.approx(cpu.price_usd / 26280)


def test_partial_instance_is_charged_k_over_n(settings):
    cost = pricing.cost(
        50 * KWH, 1.5 * 3600, scenario="aws:p5.48xlarge", n_gpus=2, settings=settings
    )
    row = pricing.instance("aws:p5.48xlarge", settings)
    assert row.n_gpus == 8
    # table price x 1.5 h x 2/8 GPUs; electricity is inside the price
    assert cost.instance_usd == pytest.approx(row.price_per_hour_usd * 1.5 * 2 / 8)
    assert cost.total_usd == cost.instance_usd
    assert cost.energy_usd == 0.0 and cost.hardware_usd == 0.0
    assert cost.pue == pytest.approx(1.15)
    assert cost.date == row.date
    assert row.source in cost.source and "2/8 charged" in cost.source


def test_custom_instance_and_case(settings_from):
    s = settings_from(
        '[instances."lab:box"]\ngpus = 8\ngpu = "H100"\nprice_per_hour_usd = 16.0\n'
        'source = "recharge rate"\ndate = "2025-01"\n'
        '[instances.small]\ngpus = 1\ngpu = "L4"\nprice_per_hour_usd = 0.5\n'
        'source = "x"\ndate = 2025\n',
    )
    cost = pricing.cost(0.0, 1800.0, scenario="LAB:Box", n_gpus=3, settings=s)
    assert cost.total_usd == pytest.approx(16.0 * 0.5 * 3 / 8)  # 3.00
    assert cost.date == "2025-01"
    assert "recharge rate" in cost.source
    assert pricing.cost(0.0, 3600.0, scenario="custom:small", settings=s).total_usd == 0.5


def test_more_gpus_than_the_instance_has(settings):
    with pytest.raises(BadInput, match="n_gpus from 1 to 1"):
        pricing.cost(0.0, 1.0, scenario="aws:g5.xlarge", n_gpus=2, settings=settings)


def test_unknown_instance_lists_closest(settings):
    with pytest.raises(BadInput) as err:
        pricing.cost(0.0, 1.0, scenario="aws:p5.48xl", settings=settings)
    assert "'aws:p5.48xl'" in str(err.value)
    assert "closest: aws:p5.48xlarge" in str(err.value)


@pytest.mark.parametrize(
    ("kwargs", "bad"),
    [
        ({"energy_j": -1.0, "duration_s": 1.0}, "energy_j"),
        ({"energy_j": 1.0, "duration_s": math.nan}, "duration_s"),
        ({"energy_j": 1.0, "duration_s": 1.0, "n_gpus": 0}, "n_gpus"),
    ],
)
def test_bad_numbers(settings, kwargs, bad):
    energy_j, duration_s = kwargs.pop("energy_j"), kwargs.pop("duration_s")
    with pytest.raises(BadInput, match=bad):
        pricing.cost(energy_j, duration_s, settings=settings, **kwargs)


def break_even_settings(settings_from, rent_usd):
    return settings_from(
        "tariff_per_kwh = 0.1\npue = 1.0\nhardware_price_usd = 10000\nservice_hours = 17520\n"
        '[gpus."Test 1kW"]\ntdp_w = 1000\nidle_w = 50\nbf16_tflops = 100\nfp32_tflops = 10\n'
        "memory_gib = 10\nmemory_bandwidth_gbs = 100\nprice_usd = 10000\n"
        'source = "test"\ndate = "2025-01"\n'
        f'[instances."rent:one"]\ngpus = 2\ngpu = "Test 1kW"\nprice_per_hour_usd = {rent_usd}\n'
        'source = "test"\ndate = "2025-01"\n',
    )


def test_break_even_hand_worked(settings_from):
    s = break_even_settings(settings_from, rent_usd=5.2)
    # own: 10000 USD over 17520 h = 2 years -> 5000 USD/yr fixed; 1 kW x 1.0 x 0.1 = 0.1 USD/h
    # rent: 5.2 USD/h / 2 GPUs = 2.6 USD per GPU-hour -> margin 2.5 -> 5000 / 2.5 = 2000 h/yr
    assert pricing.break_even_gpu_hours_per_year("test 1kw", "rent:one", s) == pytest.approx(2000)


def test_break_even_never_when_renting_is_cheaper_than_power(settings_from):
    s = break_even_settings(settings_from, rent_usd=0.2)  # 0.1 USD per GPU-hour = own power cost
    assert pricing.break_even_gpu_hours_per_year("Test 1kW", "rent:one", s) == math.inf


def test_break_even_real_tables_are_plausible(settings):
    hours = pricing.break_even_gpu_hours_per_year("H100", "aws:p5.48xlarge", settings)
    assert 0 < hours < 8760  # at ~7 USD per GPU-hour owning an H100 pays off within a year


def test_break_even_needs_a_cloud_scenario(settings):
    with pytest.raises(BadInput, match="provider:instance"):
        pricing.break_even_gpu_hours_per_year("H100", "onprem", settings)


def test_every_price_row_has_source_date_and_known_gpu():
    text = resources.files("wattwise").joinpath("data/instance_prices.csv").read_text("utf-8")
    rows = list(csv.DictReader(text.splitlines()))
    providers = {r["provider"] for r in rows}
    assert {"aws", "gcp", "azure"} <= providers
    assert len(providers - {"aws", "gcp", "azure"}) >= 2  # at least two GPU clouds
    gpus = {hardware.lookup(r["gpu"]).name for r in rows}
    parts = ("H200", "H100", "A100 40GB", "A100 80GB", "L40S", "L4", "A10G", "T4", "V100 16GB")
    assert {hardware.lookup(part).name for part in parts} <= gpus
    for row in rows:
        assert row["source"].strip(), row
        assert re.fullmatch(r"\d{4}-\d{2}", row["date"]), row
        assert dt.date(int(row["date"][:4]), int(row["date"][5:]), 1) <= dt.date.today()
        assert row["currency"] == "USD" and row["region"].strip(), row
        assert float(row["price_per_hour_usd"]) > 0 and int(row["n_gpus"]) >= 1, row
    assert len({(r["provider"], r["instance"]) for r in rows}) == len(rows)


def test_instances_json_has_per_gpu_price(settings):
    row = pricing.instance("aws:p4d.24xlarge", settings)
    assert row.n_gpus == 8
    assert row.to_json()["price_per_gpu_hour_usd"] == pytest.approx(row.price_per_hour_usd / 8)


def test_instances_for_gpu_cheapest_first(settings):
    rows = pricing.instances_for_gpu("NVIDIA H100 80GB HBM3", settings)
    names = [r.name for r in rows]
    assert {"aws:p5.48xlarge", "gcp:a3-highgpu-8g", "lambda:gpu_1x_h100_sxm5"} <= set(names)
    assert "runpod:h100-pcie" not in names  # another part
    per_gpu = [r.price_per_gpu_hour_usd for r in rows]
    assert per_gpu == sorted(per_gpu)
    assert pricing.instances_for_gpu("RTX 4060 Ti", settings) == []
