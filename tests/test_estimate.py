"""The estimator against numbers worked out by hand (wattwise/estimate.py)."""

from __future__ import annotations

import csv
import json
import pathlib
import re
import statistics

import pytest

from wattwise import carbon, hardware, pricing
from wattwise import estimate as estimate_module
from wattwise.errors import BadInput
from wattwise.estimate import (
    Budgets,
    Plan,
    Profile,
    estimate,
    precision_of,
    steady_state,
    time_band,
    time_ratio,
    utilised_fraction,
)
from wattwise.hardware import GpuSpec


def make_spec(name: str, architecture: str = "X", vendor: str = "V", **numbers: float) -> GpuSpec:
    row = {
        "tdp_w": 400.0,
        "idle_w": 50.0,
        "bf16_tflops": 100.0,
        "fp16_tflops": 100.0,
        "fp32_tflops": 10.0,
        "memory_gib": 40.0,
        "memory_bandwidth_gbs": 1000.0,
        "price_usd": 10000.0,
    }
    row.update(numbers)
    return GpuSpec(
        name=name,
        aliases=(),
        vendor=vendor,
        kind="gpu",
        architecture=architecture,
        source="test",
        date="2025-01",
        **row,
    )


H100 = hardware.lookup("H100")
H200 = hardware.lookup("H200")
A100 = hardware.lookup("A100")


def h100_profile(**changes: object) -> Profile:
    # 100 s and 40 kJ per epoch: 400 W on an H100 (no host energy unless given)
    fields = {"gpu": H100, "seconds_per_epoch": 100.0, "joules_per_epoch": 40_000.0}
    fields.update(changes)
    return Profile(**fields)


# --- steady state and warm-up -------------------------------------------------------------


def test_warmup_epoch_is_split_off_and_its_extra_cost_kept():
    s = steady_state([10.0, 6.0, 6.1, 5.9], [1000.0, 600.0, 610.0, 590.0])
    assert s.warmup_epochs == 1
    assert s.steady_epochs == 3
    assert s.seconds_per_epoch == pytest.approx(6.0)
    assert s.joules_per_epoch == pytest.approx(600.0)
    assert s.warmup_extra_s == pytest.approx(4.0)  # 10 - 6
    assert s.warmup_extra_j == pytest.approx(400.0)  # 1000 - 600
    # stdev of (6, 6.1, 5.9) is 0.1 -> 0.1 / 6 relative; energies the same
    assert s.spread == pytest.approx(0.1 / 6.0)


def test_even_epochs_have_no_warmup():
    s = steady_state([6.0, 6.1, 5.9], [600.0, 610.0, 590.0])
    assert s.warmup_epochs == 0
    assert s.warmup_extra_s == 0.0
    assert s.seconds_per_epoch == pytest.approx(6.0)


def test_warmup_found_by_energy_alone_and_two_epochs_suffice():
    # same time, 20 % more energy in epoch 0 (over the 5 % minimum tolerance)
    s = steady_state([6.0, 6.0], [720.0, 600.0])
    assert s.warmup_epochs == 1
    assert s.warmup_extra_j == pytest.approx(120.0)
    assert s.seconds_per_epoch == pytest.approx(6.0)


def test_single_epoch_is_its_own_steady_rate():
    s = steady_state([8.0], [800.0])
    assert (s.warmup_epochs, s.steady_epochs, s.spread) == (0, 1, 0.0)
    assert s.joules_per_epoch == 800.0


def test_two_slow_leading_epochs_are_both_warmup():
    s = steady_state([12.0, 9.0, 6.0, 6.0, 6.0], [1200.0, 900.0, 600.0, 600.0, 600.0])
    assert s.warmup_epochs == 2
    assert s.warmup_extra_s == pytest.approx(12.0 + 9.0 - 2 * 6.0)


def test_steady_state_rejects_missing_energy():
    with pytest.raises(BadInput, match="epoch 1 joules"):
        steady_state([6.0, 6.0], [600.0, 0.0])
    with pytest.raises(BadInput, match="same"):
        steady_state([6.0, 6.0], [600.0])


# --- the scaling model, with round numbers ---------------------------------------------------


def test_utilised_fraction_and_time_ratio_by_hand():
    a = make_spec("A", tdp_w=400.0, idle_w=50.0, bf16_tflops=100.0, memory_bandwidth_gbs=1000.0)
    b = make_spec("B", tdp_w=700.0, idle_w=100.0, bf16_tflops=400.0, memory_bandwidth_gbs=2000.0)
    # 225 W on A: (225 - 50) / (400 - 50) = 0.5
    assert utilised_fraction(a, 225.0) == pytest.approx(0.5)
    assert utilised_fraction(a, 20.0) == 0.0
    assert utilised_fraction(a, 500.0) == 1.0
    # busy 0.5, compute share 0.5: 0.5 + 0.5 * (0.5 * 100/400 + 0.5 * 1000/2000) = 0.6875
    assert time_ratio(a, b, 0.5, 0.5) == pytest.approx(0.6875)
    # all compute-bound and busy: 100/400; all memory-bound: 1000/2000; all waiting: 1
    assert time_ratio(a, b, 1.0, 1.0) == pytest.approx(0.25)
    assert time_ratio(a, b, 1.0, 0.0) == pytest.approx(0.5)
    assert time_ratio(a, b, 0.0, 0.7) == pytest.approx(1.0)
    # an fp32 workload scales with the fp32 rates (10 vs 10: no change in the compute part)
    assert time_ratio(a, b, 1.0, 1.0, "fp32") == pytest.approx(1.0)


def test_fp16_work_scales_with_fp16_rates():
    """A V100 has fp16 tensor cores (125 TFLOP/s) but no bf16 units (the table gives it its
    fp32 rate, 15.7, as bf16 rate): a 16-mixed run must scale with 125, a bf16 one with 15.7."""
    v100, a100 = hardware.lookup("V100 16GB"), hardware.lookup("A100")
    assert time_ratio(v100, a100, 1.0, 1.0, "fp16") == pytest.approx(
        v100.fp16_tflops / a100.fp16_tflops
    )
    assert time_ratio(v100, a100, 1.0, 1.0, "bf16") == pytest.approx(
        v100.bf16_tflops / a100.bf16_tflops
    )
    assert v100.fp16_tflops > 5 * v100.bf16_tflops  # the two really differ for this part


@pytest.mark.parametrize(
    ("lightning", "expected"),
    [
        ("16-mixed", "fp16"),
        ("16-true", "fp16"),
        (16, "fp16"),
        ("bf16-mixed", "bf16"),
        ("bf16-true", "bf16"),
        ("transformer-engine", "bf16"),
        ("32-true", "fp32"),
        ("64-true", "fp32"),
        (32, "fp32"),
    ],
)
def test_precision_of_lightning_settings(lightning, expected):
    assert precision_of(lightning) == expected


def test_profile_rejects_unknown_precision():
    with pytest.raises(BadInput, match=r"'fp8'.*bf16, fp16, fp32"):
        Profile(gpu=H100, seconds_per_epoch=1.0, joules_per_epoch=1.0, precision="fp8")


def test_time_band_by_hand():
    a = make_spec("A", bf16_tflops=100.0, memory_bandwidth_gbs=1000.0)
    b = make_spec("B", bf16_tflops=400.0, memory_bandwidth_gbs=2000.0)  # same architecture "X"
    band = time_band(a, b, busy=0.8, busy_range=(0.7, 0.9), spread=0.05)
    # point: 0.2 + 0.8 * (0.5 * 0.25 + 0.5 * 0.5) = 0.5
    assert band.ratio == pytest.approx(0.5)
    # extremes: b = 0.9, c = 1 gives 0.1 + 0.9 * 0.25 = 0.325; b = 0.7, c = 0 gives 0.3 + 0.35
    # widened by same-architecture uncertainty + the spread
    widen = estimate_module.SAME_ARCHITECTURE_UNCERTAINTY + 0.05
    assert band.uncertainty == pytest.approx(widen)
    assert band.low == pytest.approx(0.325 / (1 + widen))
    assert band.high == pytest.approx(0.65 * (1 + widen))


# --- estimate() ------------------------------------------------------------------------------


def test_same_gpu_gives_the_measured_figures():
    result = estimate(h100_profile(), Plan(epochs=10), [H100])
    (t,) = result.targets
    assert t.gpu == H100.name
    assert t.seconds == pytest.approx(1000.0)
    assert t.energy_kwh == pytest.approx(400_000 / 3.6e6)
    assert t.time_ratio == pytest.approx(1.0)
    assert t.gpu_power_w == pytest.approx(400.0)
    assert t.band["seconds"] == pytest.approx([1000.0, 1000.0])
    assert t.band["energy_kwh"] == pytest.approx([400_000 / 3.6e6] * 2)
    # CO2e: kWh x PUE x intensity, world average without a region
    intensity = carbon.intensity(None)
    pue = carbon.pue("onprem").value
    assert "no_region" in result.flags
    assert t.co2e_kg == pytest.approx(400_000 / 3.6e6 * pue * intensity.gco2e_per_kwh / 1000)
    assert t.cost_usd == pytest.approx(
        pricing.cost(400_000.0, 1000.0, scenario="onprem", gpu_name=H100.name).total_usd
    )
    assert t.within_budget is None
    assert t.verdicts == {}


def test_two_gpus_share_the_epoch_energy():
    # 80 kJ per 100 s epoch on 2 GPUs = 400 W each; on A100s each draws its own scaled power
    profile = h100_profile(joules_per_epoch=80_000.0, n_gpus=2)
    same, a100 = estimate(profile, Plan(epochs=3), [H100, A100]).targets
    assert same.gpu_power_w == pytest.approx(400.0)
    assert same.energy_kwh == pytest.approx(3 * 80_000.0 / 3.6e6)
    assert same.n_gpus == 2
    assert same.cost_usd == pytest.approx(
        pricing.cost(240_000.0, 300.0, gpu_name=H100.name, n_gpus=2).total_usd
    )
    # each A100 keeps the H100's share of its power range: u = (400 - idle) / (TDP - idle)
    u = (400.0 - H100.idle_w) / (H100.tdp_w - H100.idle_w)
    assert a100.gpu_power_w == pytest.approx(A100.idle_w + u * (A100.tdp_w - A100.idle_w))
    assert a100.energy_kwh == pytest.approx(2 * a100.gpu_power_w * a100.seconds / 3.6e6)


def test_warmup_is_paid_once_by_a_run_from_scratch():
    profile = h100_profile(warmup_extra_s=30.0, warmup_extra_j=9000.0)
    (t,) = estimate(profile, Plan(epochs=10), [H100]).targets
    assert t.seconds == pytest.approx(30.0 + 10 * 100.0)
    assert t.energy_kwh == pytest.approx((9000.0 + 10 * 40_000.0) / 3.6e6)
    (resumed,) = estimate(profile, Plan(epochs=10, from_scratch=False), [H100]).targets
    assert resumed.seconds == pytest.approx(1000.0)
    (double,) = estimate(profile, Plan(epochs=20), [H100]).targets
    assert double.seconds == pytest.approx(30.0 + 20 * 100.0)  # not twice the warm-up


def test_a_single_measured_epoch_is_flagged():
    assert "single_epoch" in estimate(h100_profile(epochs_measured=1), Plan(epochs=2), [H100]).flags
    assert "single_epoch" not in estimate(h100_profile(), Plan(epochs=2), [H100]).flags
    assert (
        "single_epoch"
        not in estimate(h100_profile(epochs_measured=3), Plan(epochs=2), [H100]).flags
    )


def test_a_gpu_busy_under_half_the_epoch_is_flagged_host_bound():
    # 200 W on an H100 (idle 73, TDP 700): u = 127 / 627 = 0.20, busy inferred from power
    waiting = h100_profile(joules_per_epoch=20_000.0)
    assert "host_bound" in estimate(waiting, Plan(epochs=2), [H200]).flags
    # 400 W: u = 0.52
    assert "host_bound" not in estimate(h100_profile(), Plan(epochs=2), [H200]).flags
    # a measured utilisation wins over power
    busy = h100_profile(joules_per_epoch=20_000.0, utilisation=0.9)
    assert "host_bound" not in estimate(busy, Plan(epochs=2), [H200]).flags
    idle = h100_profile(utilisation=0.3)
    assert "host_bound" in estimate(idle, Plan(epochs=2), [H200]).flags


def test_steps_plan_uses_steps_per_epoch():
    (t,) = estimate(h100_profile(steps_per_epoch=50), Plan(steps=125), [H100]).targets
    assert t.seconds == pytest.approx(2.5 * 100.0)
    (t,) = estimate(h100_profile(), Plan(steps=125, steps_per_epoch=25), [H100]).targets
    assert t.seconds == pytest.approx(5 * 100.0)
    with pytest.raises(BadInput, match="steps_per_epoch"):
        estimate(h100_profile(), Plan(steps=125), [H100])


def test_h100_to_a100_by_hand():
    # host 20 kJ of 60 kJ: GPU power 400 W, host 200 W (unchanged on the target)
    profile = h100_profile(joules_per_epoch=60_000.0, host_joules_per_epoch=20_000.0)
    (t,) = estimate(profile, Plan(epochs=1), [A100]).targets
    u = (400.0 - H100.idle_w) / (H100.tdp_w - H100.idle_w)
    compute = H100.bf16_tflops / A100.bf16_tflops
    memory = H100.memory_bandwidth_gbs / A100.memory_bandwidth_gbs
    ratio = (1 - u) + u * (0.5 * compute + 0.5 * memory)
    power_a100_w = A100.idle_w + u * (A100.tdp_w - A100.idle_w)
    assert t.time_ratio == pytest.approx(ratio)
    assert t.seconds == pytest.approx(100.0 * ratio)
    assert t.gpu_power_w == pytest.approx(power_a100_w)
    assert t.energy_kwh == pytest.approx((power_a100_w + 200.0) * 100.0 * ratio / 3.6e6)
    # the A100 is slower: ratio between all-waiting (1) and all compute-bound (3.17)
    assert 1.0 < ratio < compute


def test_band_contains_the_point_and_is_wider_across_generations():
    profile = h100_profile(spread=0.02)
    result = estimate(profile, Plan(epochs=10), [H100, H200, A100, hardware.lookup("T4")])
    widths = {}
    for t in result.targets:
        for key, value in (
            ("seconds", t.seconds),
            ("energy_kwh", t.energy_kwh),
            ("cost_usd", t.cost_usd),
            ("co2e_kg", t.co2e_kg),
        ):
            lo, hi = t.band[key]
            assert lo <= value <= hi, (t.gpu, key)
        lo, hi = t.band["seconds"]
        widths[t.gpu] = (hi - lo) / t.seconds
    # same part: the measured spread only, as a factor: [x / 1.02, x * 1.02]
    assert widths[H100.name] == pytest.approx(1.02 - 1 / 1.02)
    assert widths[H100.name] < widths[H200.name] < widths[A100.name]


def test_a_very_noisy_profile_keeps_every_low_end_positive():
    """Regression: a spread of 63 % (a tiny CPU fit's epochs) plus the cross-card uncertainty
    passed 100 %, the low end went negative and pricing refused it (exit 2 from `estimate`)."""
    profile = h100_profile(spread=0.9)
    result = estimate(profile, Plan(epochs=10), [H100, A100, hardware.lookup("T4")])
    for t in result.targets:
        for key, (lo, hi) in t.band.items():
            assert 0 < lo < hi, (t.gpu, key)


def test_measured_utilisation_narrows_the_band():
    inferred = estimate(h100_profile(), Plan(epochs=10), [A100]).targets[0]
    measured = estimate(h100_profile(utilisation=0.95), Plan(epochs=10), [A100]).targets[0]
    width = lambda t: t.band["seconds"][1] - t.band["seconds"][0]  # noqa: E731
    assert width(measured) < width(inferred)
    # busy 0.95 instead of the power-inferred 0.52: more of the epoch scales with the slower A100
    assert measured.seconds > inferred.seconds


def test_memory_fit_and_the_picks_among_fitting_targets():
    small = hardware.lookup("RTX 4060 Ti 16GB")
    profile = h100_profile(peak_mem_gib=40.0)
    result = estimate(profile, Plan(epochs=10), [small, A100, H100, H200])
    fits = {t.gpu: t.fits_memory for t in result.targets}
    assert fits == {small.name: False, A100.name: True, H100.name: True, H200.name: True}
    fitting = [t for t in result.targets if t.fits_memory]
    assert result.fastest == min(fitting, key=lambda t: t.seconds).gpu
    assert result.fastest in (H100.name, H200.name)
    assert result.cheapest == min(fitting, key=lambda t: t.cost_usd).gpu
    assert result.greenest == min(fitting, key=lambda t: t.co2e_kg).gpu
    # a small card is never picked even when it would be cheapest
    assert small.name not in (result.cheapest, result.fastest, result.greenest)


def test_headroom_and_no_fit_at_all():
    # 75 GiB x 1.1 = 82.5 GiB > 79.6 GiB of an H100; the H200 (140 GiB) fits
    result = estimate(h100_profile(peak_mem_gib=75.0), Plan(epochs=1), [H100, H200])
    assert [t.fits_memory for t in result.targets] == [False, True]
    assert result.cheapest == result.fastest == result.greenest == H200.name
    none_fit = estimate(h100_profile(peak_mem_gib=500.0), Plan(epochs=1), [H100, H200])
    assert (none_fit.cheapest, none_fit.fastest, none_fit.greenest) == (None, None, None)
    unknown = estimate(h100_profile(), Plan(epochs=1), [H100])
    assert unknown.targets[0].fits_memory is None
    assert unknown.cheapest == H100.name


def test_budget_verdicts():
    # 10 epochs of 40 kJ = 0.1111 kWh
    budgets = Budgets(max_kwh=0.2, max_kgco2e=1e-6)
    (t,) = estimate(h100_profile(), Plan(epochs=10), [H100], budgets=budgets).targets
    assert t.verdicts == {"kwh": True, "kgco2e": False}
    assert t.within_budget is False
    (t,) = estimate(h100_profile(), Plan(epochs=10), [H100], budgets=Budgets(max_kwh=0.2)).targets
    assert t.verdicts == {"kwh": True}
    assert t.within_budget is True
    (t,) = estimate(h100_profile(), Plan(epochs=10), [H100], budgets=Budgets(max_kwh=0.1)).targets
    assert t.within_budget is False


def test_json_shape_is_the_design_one():
    result = estimate(
        h100_profile(peak_mem_gib=10.0),
        Plan(epochs=3),
        [H100, A100],
        region="FRA",
        budgets=Budgets(max_usd=100.0),
    )
    data = json.loads(json.dumps(result.to_json()))
    assert {"targets", "cheapest", "fastest", "greenest"} <= set(data)
    for target in data["targets"]:
        assert {
            "gpu",
            "seconds",
            "energy_kwh",
            "cost_usd",
            "co2e_kg",
            "fits_memory",
            "within_budget",
            "verdicts",
            "band",
        } <= set(target)
        assert set(target["band"]) == {"seconds", "energy_kwh", "cost_usd", "co2e_kg"}
        assert all(len(v) == 2 for v in target["band"].values())
        assert set(target["verdicts"]) == {"usd"}
        assert isinstance(target["within_budget"], bool)
    assert data["region"] == "FRA"
    assert "no_region" not in data["flags"]


def test_cloud_pricing_uses_an_instance_with_each_targets_gpu():
    # one hour per epoch; aws:p5.48xlarge holds 8 H100s, AWS's A100 80 GB is the p4de, and AWS
    # has no H200 in the table, so the H200 is priced on-prem
    profile = h100_profile(seconds_per_epoch=3600.0, joules_per_epoch=1.44e6)
    result = estimate(profile, Plan(epochs=2), [H100, A100, H200], pricing="aws:p5.48xlarge")
    h100, a100, h200 = result.targets
    assert (h100.pricing, a100.pricing, h200.pricing) == (
        "aws:p5.48xlarge",
        "aws:p4de.24xlarge",
        "onprem",
    )
    p5 = pricing.instance("aws:p5.48xlarge")
    assert h100.cost_usd == pytest.approx(2 * p5.price_per_hour_usd / p5.n_gpus)
    p4de = pricing.instance("aws:p4de.24xlarge")
    assert a100.cost_usd == pytest.approx(a100.seconds / 3600 * p4de.price_per_hour_usd / 8)
    # each figure's PUE is its scenario's: AWS for the instances, on-prem for the H200
    assert h100.pue == carbon.pue("aws:p5.48xlarge").value
    assert h200.pue == carbon.pue("onprem").value
    assert h100.co2e_kg == pytest.approx(h100.energy_kwh * h100.pue * result.gco2e_per_kwh / 1000)
    assert h100.break_even_instance == "aws:p5.48xlarge"
    assert h100.break_even_gpu_hours_per_year == pytest.approx(
        pricing.break_even_gpu_hours_per_year(H100.name, "aws:p5.48xlarge")
    )


def with_cheap_instance(settings, name: str, gpu: str):
    """``settings`` (the conftest fixture's defaults) plus a custom one-GPU instance ``name`` on
    ``gpu`` at 0.01 USD an hour, far below any GPU's own electricity."""
    row = {"gpus": 1, "gpu": gpu, "price_per_hour_usd": 0.01, "source": "test", "date": "2025-01"}
    return settings.with_overrides(instances={name: row})


def test_onprem_break_even_is_against_the_cheapest_rental(settings):
    # a custom instance far below the H100's own electricity: renting always wins (inf -> null)
    settings = with_cheap_instance(settings, "lab:h100", "H100")
    (t,) = estimate(h100_profile(), Plan(epochs=1), [H100], settings=settings).targets
    assert t.break_even_instance == "lab:h100"
    assert t.break_even_gpu_hours_per_year == float("inf")
    assert t.to_json()["break_even_gpu_hours_per_year"] is None
    per_gpu_hour = {
        i.name: i.price_per_gpu_hour_usd
        for i in pricing.instances()
        if hardware.lookup(i.gpu).name == H100.name
    }
    (t,) = estimate(h100_profile(), Plan(epochs=1), [H100]).targets
    assert t.break_even_instance == min(per_gpu_hour, key=per_gpu_hour.get)


def test_a_custom_instance_on_an_unknown_gpu_is_passed_over(settings):
    # pricing.instances_for_gpu skips a row whose GPU the hardware table does not know: the
    # estimate prices the H100 as without it instead of failing on that row
    settings = with_cheap_instance(settings, "lab:mystery", "Mystery 9000")
    (t,) = estimate(h100_profile(), Plan(epochs=1), [H100], settings=settings).targets
    (plain,) = estimate(h100_profile(), Plan(epochs=1), [H100]).targets
    assert t.break_even_instance == plain.break_even_instance != "lab:mystery"
    (t,) = estimate(
        h100_profile(), Plan(epochs=1), [H100], pricing="lab:mystery", settings=settings
    ).targets
    assert t.pricing == "onprem"


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Plan(), "exactly one"),
        (lambda: Plan(epochs=3, steps=10), "exactly one"),
        (lambda: Plan(epochs=0), "epochs=0"),
        (lambda: Plan(steps=-5), "steps=-5"),
        (lambda: Plan(steps=2.5), "steps=2.5.*whole number"),
        (lambda: utilised_fraction(make_spec("flat", tdp_w=50.0, idle_w=50.0), 60.0), "idle_w"),
        (lambda: Budgets(max_kwh=-1.0), "max_kwh=-1.0"),
        (lambda: h100_profile(seconds_per_epoch=0.0), "seconds_per_epoch=0.0"),
        (lambda: h100_profile(joules_per_epoch=float("nan")), "joules_per_epoch=nan"),
        (lambda: h100_profile(utilisation=1.5), "utilisation=1.5"),
        (lambda: h100_profile(host_joules_per_epoch=50_000.0), "host_joules_per_epoch"),
        (lambda: estimate(h100_profile(), Plan(epochs=1), []), "no target"),
    ],
)
def test_impossible_inputs_are_bad_input(make, match):
    with pytest.raises(BadInput, match=match):
        make()


# --- calibration against public measurements ---------------------------------------------------

PUBLIC = pathlib.Path(__file__).parent / "fixtures" / "public"


def _one_gpu_throughputs(name: str) -> dict[str, dict[str, float]]:
    """Lambda's table: ``{row: {workload: samples/s}}``, one-GPU rows, cells that ran (> 0)."""
    with (PUBLIC / name).open(newline="") as f:
        rows = list(csv.DictReader(f))
    out = {}
    for row in rows:
        row_name = row.pop("name_gpu", None) or row.pop("")
        if float(row.pop("num_gpu", 1)) != 1 or re.search(r"_\dxH100_", row_name):
            continue
        for column in ("watt", "price"):  # the card's rated power and price, not measurements
            row.pop(column, None)
        out[row_name] = {k: float(v) for k, v in row.items() if float(v) > 0}
    return out


def _public_datacentre_pairs():
    v1 = _one_gpu_throughputs("lambda-pytorch-train-throughput-fp16.csv")
    yield "A100 PCIe 80 GB", "A100 SXM 80 GB", v1["A100 80GB PCIe"], v1["A100 80GB SXM4"]
    yield "H100 PCIe 80 GB", "H100 SXM 80 GB", v1["H100 80GB PCIe Gen5"], v1["H100 80GB SXM5"]
    v2 = _one_gpu_throughputs("lambda-pytorch-train-throughput-v2-fp16.csv")
    pcie = [t for n, t in v2.items() if "_PCIe_" in n]
    sxm = [t for n, t in v2.items() if "_SXM5_" in n]
    assert len(pcie) == 1 and len(sxm) == 16, "the v2 table's one-GPU rows changed"
    median_sxm = {w: statistics.median(t[w] for t in sxm) for w in pcie[0]}
    yield "H100 PCIe 80 GB", "H100 SXM 80 GB", pcie[0], median_sxm


def test_time_band_holds_on_public_same_family_pairs():
    """Lambda's published training throughputs (one GPU, fp16 AMP, GPU-saturating batches) for two
    data-centre parts of one family: each side predicts the other's time per sample for every
    workload. The band must hold every measurement and the point estimate stay within 10 % for
    most of them (bench/estimate_accuracy.py prints the errors)."""
    errors = []
    for a, b, thr_a, thr_b in _public_datacentre_pairs():
        for m, t, thr_m, thr_t in ((a, b, thr_a, thr_b), (b, a, thr_b, thr_a)):
            band = time_band(
                hardware.lookup(m),
                hardware.lookup(t),
                busy=0.99,
                busy_range=(0.89, 1.0),
                precision="fp16",  # Lambda's runs are fp16 AMP
            )
            for workload in thr_m.keys() & thr_t.keys():
                actual = thr_m[workload] / thr_t[workload]  # target seconds / measured seconds
                assert band.low <= actual <= band.high, (m, t, workload, actual, band)
                errors.append(abs(band.ratio / actual - 1))
    assert len(errors) == 56
    assert statistics.median(errors) <= 0.05
    assert sum(e <= 0.10 for e in errors) >= 0.9 * len(errors)
