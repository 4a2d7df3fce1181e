"""Tables at 80 and 60 columns and piped: no column is dropped, no identifier or number is cut.

Regression: rich squeezed a table wider than the console by shrinking every column, so at 80
columns (rich's width when stdout is piped) `runs` lost its "method mix" column (Wh with no
method), `estimate` lost the GPU column, `prices` printed "aws:p5.4…", and a long architecture
label ellipsised the Wh number.
"""

from __future__ import annotations

import json
import re

import pytest

from wattwise import config, pricing
from wattwise.cli import main
from wattwise.ledger import Ledger
from wattwise.types import DeviceInfo, PhaseEnergy

GPU = DeviceInfo("gpu:GPU-5f0b2c1e-8d6a-4f3b-9e21-7c4d8a9b0e12", "gpu", "NVIDIA H200", "counter")
CPU = DeviceInfo("cpu:machine", "cpu", "Intel Xeon", "estimate")
LONG_LABEL = "resnet50-decov-auxheads-net2wider-plateau-split-v2-seed1234"
WIDTHS = ("80", "60")
# small figures print long ("0.00171-0.00353"): this table is wider than 80 columns
TYPED_IN = ["--measured-gpu", "H200", "--seconds-per-epoch", "1.1", "--joules-per-epoch", "740"]


@pytest.fixture(autouse=True)
def clean(no_wattwise_env, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)


@pytest.fixture
def ledger(tmp_path):
    """Three runs: GPU counter + CPU estimate energy, one with a long architecture label."""
    path = tmp_path / "ledger.db"
    with Ledger(path) as book:
        for label, gpu_j in (("baseline", 3600.0), ("constrained", 123456.0), (LONG_LABEL, 9.0)):
            run_id = book.begin_run(architecture=label, devices=[GPU, CPU])
            phases = [
                PhaseEnergy("train", 0, GPU.device_id, "gpu", 0.0, 4.0, gpu_j, "counter"),
                PhaseEnergy("train", 0, CPU.device_id, "cpu", 0.0, 4.0, 360.0, "estimate"),
            ]
            book.add_phases(run_id, phases, epoch=0, epochs_completed=1)
            book.finish_run(run_id)
    return path


def run(capsys, *argv):
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def whole(token: str, out: str) -> bool:
    """``token`` printed whole: not glued to a longer word or number on either side."""
    return re.search(rf"(?<![\w.:-]){re.escape(token)}(?![\w.:-])", out) is not None


def assert_nothing_cut(out: str) -> None:
    assert "…" not in out and "..." not in out


@pytest.mark.parametrize("columns", WIDTHS)
def test_runs_keep_ids_numbers_and_methods(capsys, monkeypatch, ledger, columns):
    monkeypatch.setenv("COLUMNS", columns)
    records = json.loads(run(capsys, "runs", "--ledger", str(ledger), "--json"))
    out = run(capsys, "runs", "--ledger", str(ledger))
    assert_nothing_cut(out)
    assert max(len(line) for line in out.splitlines()) <= int(columns)
    assert whole("method", out) and whole("mix", out)
    for record in records:
        assert whole(record["run_id"][:8], out)
        assert whole(f"{record['energy_wh']:.4g}", out)
        assert set(record["methods"].values()) == {"counter", "estimate"}
        for method in record["methods"].values():
            assert whole(method, out)


def test_runs_piped_print_every_row_on_one_line(capsys, ledger):
    """stdout not a terminal and no COLUMNS: no width limit at all."""
    records = json.loads(run(capsys, "runs", "--ledger", str(ledger), "--json"))
    lines = run(capsys, "runs", "--ledger", str(ledger)).splitlines()
    for record in records:
        (line,) = [line for line in lines if record["run_id"][:8] in line]
        assert record["architecture"] in line
        assert whole(f"{record['energy_wh']:.4g}", line)
        assert record["method_mix"] in line


@pytest.mark.parametrize("columns", WIDTHS)
def test_estimate_keeps_gpu_names_and_numbers(capsys, monkeypatch, columns):
    monkeypatch.setenv("COLUMNS", columns)
    plan = [*TYPED_IN, "--peak-mem-gib", "30", "--epochs", "10", "--gpu", "H100,A100,L4"]
    data = json.loads(run(capsys, "estimate", *plan, "--json"))
    out = run(capsys, "estimate", *plan)
    assert_nothing_cut(out)
    assert max(len(line) for line in out.splitlines()) <= int(columns)
    for target in data["targets"]:
        for word in target["gpu"].split():  # "H100 SXM 80 GB" may wrap between its words
            assert whole(word, out)
        assert whole(f"{target['energy_kwh']:.3g}", out)
        assert whole(f"{target['co2e_kg']:.3g}", out)
        lo, hi = target["band"]["energy_kwh"]
        assert whole(f"{lo:.3g}-{hi:.3g}", out)


@pytest.mark.parametrize("columns", WIDTHS)
def test_prices_keep_whole_scenario_names(capsys, monkeypatch, columns):
    monkeypatch.setenv("COLUMNS", columns)
    out = run(capsys, "prices")
    assert_nothing_cut(out)
    assert max(len(line) for line in out.splitlines()) <= int(columns)
    for row in pricing.instances(config.load()):
        assert whole(row.name, out)
        assert whole(f"{row.price_per_hour_usd:g}", out)


def test_prices_piped_keep_each_scenario_on_one_line(capsys):
    lines = run(capsys, "prices").splitlines()
    for row in pricing.instances(config.load()):
        (line,) = [line for line in lines if re.search(rf"│ {re.escape(row.name)}( \*)? +│", line)]
        assert whole(f"{row.price_per_hour_usd:g}", line) and row.region in line
