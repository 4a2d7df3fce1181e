"""The spec table: forgiving name matching, required rows, sources on every row, user rows."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from wattwise import config, hardware
from wattwise.errors import UnknownHardware


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # NVML names
        ("NVIDIA H100 80GB HBM3", "H100 SXM 80 GB"),
        ("NVIDIA H200", "H200 SXM 141 GB"),
        ("NVIDIA A100-SXM4-80GB", "A100 SXM 80 GB"),
        ("NVIDIA A100-SXM4-40GB", "A100 SXM 40 GB"),
        ("NVIDIA A100 80GB PCIe", "A100 PCIe 80 GB"),
        ("NVIDIA H100 PCIe", "H100 PCIe 80 GB"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA L4", "L4"),
        ("NVIDIA A10G", "A10G"),
        ("Tesla T4", "T4"),
        ("Tesla V100-SXM2-16GB", "V100 SXM2 16 GB"),
        ("NVIDIA GeForce RTX 4090", "RTX 4090"),
        ("NVIDIA GeForce RTX 3090", "RTX 3090"),
        ("NVIDIA GeForce RTX 4060 Ti", "RTX 4060 Ti 16 GB"),
        ("NVIDIA A10", "A10"),
        ("NVIDIA A100-PCIE-40GB", "A100 PCIe 40 GB"),
        ("NVIDIA RTX A6000", "RTX A6000"),
        ("NVIDIA RTX 6000 Ada Generation", "RTX 6000 Ada"),
        # a bare family name means the flagship part
        ("H100", "H100 SXM 80 GB"),
        ("A100", "A100 SXM 80 GB"),
        ("V100", "V100 SXM2 32 GB"),
        ("H200", "H200 SXM 141 GB"),
        ("A100 PCIe", "A100 PCIe 80 GB"),
        # short names, case, spacing, hyphens
        ("h100 pcie", "H100 PCIe 80 GB"),
        ("H100-PCIe", "H100 PCIe 80 GB"),
        ("h100sxm", "H100 SXM 80 GB"),
        ("  a100   40gb ", "A100 SXM 40 GB"),
        ("a100_80gb", "A100 SXM 80 GB"),
        ("rtx4090", "RTX 4090"),
        ("4060ti 16gb", "RTX 4060 Ti 16 GB"),
        ("l40s", "L40S"),
        ("H100 SXM 80 GB", "H100 SXM 80 GB"),
        ("cpu", "CPU only"),
        # A10 and A10G are two parts; the A6000 (Ampere) and the RTX 6000 Ada are two parts
        ("A10", "A10"),
        ("a10 pcie", "A10"),
        ("A10G", "A10G"),
        ("a10g 24gb", "A10G"),
        ("A100 PCIe 40GB", "A100 PCIe 40 GB"),
        ("a100-40gb-pcie", "A100 PCIe 40 GB"),
        ("RTX A6000", "RTX A6000"),
        ("A6000", "RTX A6000"),
        ("RTX 6000 Ada", "RTX 6000 Ada"),
        ("rtx6000 ada generation", "RTX 6000 Ada"),
    ],
)
def test_forgiving_lookup(name, expected):
    assert hardware.lookup(name).name == expected


def test_unknown_lists_closest():
    with pytest.raises(UnknownHardware) as err:
        hardware.lookup("H300 SXM")
    message = str(err.value)
    assert "'H300 SXM'" in message
    assert "closest: H200 SXM 141 GB" in message or "closest: H100 SXM 80 GB" in message
    assert "known:" in message


def test_required_rows_are_present():
    names = {spec.name for spec in hardware.all_gpus()}
    required = {
        "H200 SXM 141 GB",
        "H100 SXM 80 GB",
        "H100 PCIe 80 GB",
        "A100 SXM 40 GB",
        "A100 SXM 80 GB",
        "L40S",
        "L4",
        "A10G",
        "A10",
        "A100 PCIe 40 GB",
        "RTX A6000",
        "RTX 6000 Ada",
        "T4",
        "V100 SXM2 32 GB",
        "RTX 4090",
        "RTX 3090",
        "RTX 4060 Ti 16 GB",
        "CPU only",
    }
    assert required <= names
    assert [s.kind for s in hardware.all_gpus()].count("cpu") == 1


def test_every_row_has_source_date_and_sane_numbers():
    for spec in hardware.all_gpus():
        assert spec.source.strip(), spec.name
        assert re.fullmatch(r"\d{4}-\d{2}", spec.date), spec.name
        assert dt.date(int(spec.date[:4]), int(spec.date[5:]), 1) <= dt.date.today()
        assert 0 < spec.idle_w < spec.tdp_w, spec.name
        for field in hardware.NUMERIC_FIELDS:
            assert getattr(spec, field) > 0, (spec.name, field)
        assert spec.fp16_tflops >= spec.fp32_tflops, spec.name


def test_no_name_or_alias_points_at_two_rows():
    seen: dict[str, str] = {}
    for spec in hardware.all_gpus():
        for name in (spec.name, *spec.aliases):
            key = hardware.normalise(name)
            assert seen.setdefault(key, spec.name) == spec.name, name


def test_known_facts():
    h100, h200 = hardware.lookup("H100"), hardware.lookup("H200")
    # same dense bf16 rate and power limit, different memory and bandwidth
    assert h100.bf16_tflops == h200.bf16_tflops and h100.tdp_w == h200.tdp_w == 700
    assert h200.memory_gib > h100.memory_gib and h200.memory_bandwidth_gbs > 4000
    assert hardware.lookup("T4").bf16_tflops == hardware.lookup("T4").fp32_tflops


@pytest.mark.parametrize("name", ["RTX 6000", "NVIDIA RTX 6000", "Quadro RTX 6000"])
def test_ambiguous_or_unknown_names_are_not_guessed(name):
    # "RTX 6000" is the Turing Quadro, the Ampere RTX A6000 or the RTX 6000 Ada: no row is picked
    with pytest.raises(UnknownHardware):
        hardware.lookup(name)


def test_workstation_and_datacentre_ga102_ad102_run_fp32_accumulate_at_full_rate():
    # dense fp16/bf16 tensor (fp32 accumulate) : fp32 is 4:1 on the A10, RTX A6000 and RTX 6000
    # Ada, 2:1 on their GeForce siblings; 8:1 would be a "with sparsity" figure slipping in
    for name in ("A10", "RTX A6000", "RTX 6000 Ada", "L40S"):
        spec = hardware.lookup(name)
        assert spec.bf16_tflops == spec.fp16_tflops, name
        assert spec.bf16_tflops / spec.fp32_tflops == pytest.approx(4.0, rel=0.02), name
    for name in ("RTX 3090", "RTX 4090"):
        spec = hardware.lookup(name)
        assert spec.bf16_tflops / spec.fp32_tflops == pytest.approx(2.0, rel=0.02), name
    a10, a10g = hardware.lookup("A10"), hardware.lookup("A10G")
    assert a10.tdp_w == 150 and a10g.tdp_w == 300 and a10.bf16_tflops > a10g.bf16_tflops
    pcie40, sxm40 = hardware.lookup("A100 PCIe 40 GB"), hardware.lookup("A100 SXM 40 GB")
    assert pcie40.bf16_tflops == sxm40.bf16_tflops and pcie40.tdp_w < sxm40.tdp_w
    assert pcie40.memory_bandwidth_gbs == sxm40.memory_bandwidth_gbs


def test_user_rows_from_config(tmp_path):
    (tmp_path / "wattwise.toml").write_text(
        '[gpus."Lab Card"]\ntdp_w = 200\nidle_w = 20\nbf16_tflops = 100\nfp32_tflops = 25\n'
        'memory_gib = 48\nmemory_bandwidth_gbs = 900\nprice_usd = 4000\nsource = "spec sheet"\n'
        'date = "2025-03"\naliases = ["NVIDIA Lab Card 48GB"]\n'
        "[gpus.L4]\ntdp_w = 60\nidle_w = 10\nbf16_tflops = 100\nfp32_tflops = 25\n"
        'memory_gib = 22.5\nmemory_bandwidth_gbs = 300\nprice_usd = 2000\nsource = "ours"\n'
        'date = "2025-03"\n',
        encoding="utf-8",
    )
    settings = config.load(cwd=tmp_path, env={})
    card = hardware.lookup("nvidia lab card 48gb", settings)
    assert (card.name, card.tdp_w, card.fp16_tflops, card.source) == (
        "Lab Card",
        200.0,
        100.0,  # fp16 defaults to the bf16 rate
        "spec sheet",
    )
    assert hardware.lookup("NVIDIA L4", settings).tdp_w == 60.0  # user row wins
    names = [spec.name for spec in hardware.all_gpus(settings)]
    assert names.count("L4") == 1
    with pytest.raises(UnknownHardware):
        hardware.lookup("Lab Card")  # not without the settings


def test_to_json_row():
    row = hardware.lookup("L4").to_json()
    assert row["name"] == "L4" and isinstance(row["aliases"], list) and row["source"]


def test_non_string_name_is_bad_input():
    with pytest.raises(UnknownHardware, match="None"):
        hardware.lookup(None)
