"""Reports: CSV round trip with hand-checked numbers, a self-contained and escaped HTML page,
bad input, and the summarising of large ledgers. Every ledger here is a real one, filled through
the Ledger API by tests/_ledger_factory.py."""

from __future__ import annotations

import io
import json
import pathlib
import re
from datetime import timedelta
from html.parser import HTMLParser

import pandas as pd
import pytest
from _ledger_factory import CPU, GPU, T0, RunSpec, add_run, realistic

from wattwise import config, pricing, scheduler
from wattwise.cli import main
from wattwise.errors import BadInput, UnknownRegion
from wattwise.ledger import Ledger
from wattwise.ledger import core as ledger_module
from wattwise.report import build_report
from wattwise.report._charts import _downsample
from wattwise.report._data import (
    csv_text,
    lower_is_better,
    pareto_mask,
    parse_scenarios,
    pick_metric,
)
from wattwise.report._html import num
from wattwise.types import FLAGS, PhaseEnergy

TARIFF = 0.2  # USD/kWh
PUE = 1.5
HW_PRICE = 30_000.0  # USD per GPU (per machine for CPU-only runs)
SERVICE_H = 30_000.0
TEST_G_PER_KWH = 100.0
HOSTILE = "<script>alert(1)</script>"


@pytest.fixture
def settings(tmp_path: pathlib.Path) -> config.Settings:
    """Round money and carbon inputs, so every expected number is worked out by hand."""
    return config.load(env={}, cwd=tmp_path).with_overrides(
        tariff_per_kwh=TARIFF,
        pue=PUE,
        hardware_price_usd=HW_PRICE,
        service_hours=SERVICE_H,
        intensities={"TST": {"gco2e_per_kwh": TEST_G_PER_KWH, "source": "test", "year": 2025}},
    )


@pytest.fixture
def ledger(tmp_path: pathlib.Path):
    with Ledger(tmp_path / "w.db") as opened:
        yield opened


def _onprem_usd(total_wh: float, duration_s: float, units: int = 1) -> float:
    energy_usd = total_wh / 1000 * PUE * TARIFF
    return energy_usd + HW_PRICE / SERVICE_H * duration_s / 3600 * units


def test_csv_round_trip_with_hand_checked_values(ledger, settings, tmp_path) -> None:
    runs = realistic(ledger)
    result = build_report(
        ledger,
        out_dir=tmp_path / "out",
        region="TST",
        pricing="onprem,aws:p5.48xlarge",
        settings=settings,
    )
    assert result.n_runs == 5
    assert result.html_path == tmp_path / "out" / "report.html"
    table = pd.read_csv(result.runs_csv).set_index("run_id")
    expected_columns = [
        "architecture", "status", "started_at", "parent_run_id", "tags", "user", "job_id",
        *scheduler.flatten({}), "params_start",
        "params_end", "epochs", "duration_s", "gpu_wh", "cpu_wh", "ram_wh", "total_wh",
        "method_mix", "estimated_kinds", "flags", "region", "gco2e_per_kwh",
        "cost_usd[onprem]", "cost_usd[aws:p5.48xlarge]", "co2e_kg[onprem]",
        "co2e_kg[aws:p5.48xlarge]", "metric/val_acc", "metric/val_loss", "j_per_train_sample",
        "wh_to_best_val", "wh_to_target_val", "cumulative_wh",
    ]  # fmt: skip
    assert list(table.columns) == expected_columns
    assert list(table.index) == [rid for rid, _ in runs.values()]

    base = table.loc[runs["baseline"][0]]
    # 3 epochs: GPU 600 W x 10 s + 300 W x 2 s; CPU 50 W and RAM 5 W over 12 s
    assert base["gpu_wh"] == pytest.approx(3 * (6000 + 600) / 3600)  # 5.5 Wh
    assert base["cpu_wh"] == pytest.approx(3 * 600 / 3600)  # 0.5 Wh
    assert base["ram_wh"] == pytest.approx(3 * 60 / 3600)  # 0.05 Wh
    assert base["total_wh"] == pytest.approx(6.05)
    assert base["duration_s"] == pytest.approx(36.0)
    assert (base["epochs"], base["params_start"], base["params_end"]) == (3, 1000, 1000)
    assert base["status"] == "finished"
    assert base["estimated_kinds"] == "cpu,ram"
    assert base["region"] == "TST"
    assert base["gco2e_per_kwh"] == pytest.approx(TEST_G_PER_KWH)
    # on-prem: 6.05 Wh x 1.5 x 0.2 USD/kWh + 30000 USD / 30000 h x 0.01 h = 0.011815 USD
    assert base["cost_usd[onprem]"] == pytest.approx(0.001815 + 0.01)
    # p5.48xlarge: 0.01 h x the table's USD/h x 1/8 GPUs
    p5 = pricing.instance("aws:p5.48xlarge")
    assert p5.n_gpus == 8
    assert base["cost_usd[aws:p5.48xlarge]"] == pytest.approx(0.01 * p5.price_per_hour_usd / 8)
    # 6.05 Wh x PUE 1.5 (on-prem) x 100 g/kWh = 0.9075 g
    assert base["co2e_kg[onprem]"] == pytest.approx(0.00605 * 1.5 * 100 / 1000)
    assert base["metric/val_acc"] == pytest.approx(0.94)
    assert pd.isna(base["j_per_train_sample"])
    assert base["cumulative_wh"] == pytest.approx(6.05)

    adaptive = table.loc[runs["adaptive"][0]]
    assert (adaptive["params_start"], adaptive["params_end"]) == (1000, 3400)
    # every stage of the training epochs, over 1200 declared samples x 4 epochs:
    # ((550 + 50 + 5) W x 10 s training + (300 + 50 + 5) W x 2 s validation) x 4 epochs
    assert adaptive["j_per_train_sample"] == pytest.approx((605 * 10 + 355 * 2) * 4 / 4800)

    cpu = table.loc[runs["cpu"][0]]
    assert pd.isna(cpu["gpu_wh"])  # no GPU measured: missing, not a silent 0 Wh
    assert cpu["total_wh"] == pytest.approx((80 + 5) * 24 / 3600)
    assert cpu["cost_usd[onprem]"] == pytest.approx(_onprem_usd(cpu["total_wh"], 24.0))

    finetune = table.loc[runs["finetune"][0]]
    assert finetune["parent_run_id"] == runs["baseline"][0]
    assert finetune["tags"] == "finetune"
    own_wh = (6000 + 600 + 55 * 12) / 3600
    assert finetune["total_wh"] == pytest.approx(own_wh)
    assert finetune["cumulative_wh"] == pytest.approx(own_wh + 6.05)

    phases = pd.read_csv(result.phases_csv)
    assert list(phases.columns) == [
        "run_id", "architecture", "epoch", "stage", "device_id", "kind", "device_name", "method",
        "flags", "start_s", "end_s", "duration_s", "energy_j", "mean_power_w",
        "peak_power_w",
    ]  # fmt: skip
    # epochs x 2 stages x devices: 3x2x3 + 3x2x3 + 4x2x3 + 2x2x2 + 1x2x3
    assert len(phases) == 74
    assert not phases.duplicated(["run_id", "epoch", "stage", "device_id"]).any()
    per_run_j = phases.groupby("run_id")["energy_j"].sum()
    for rid, row in table.iterrows():
        assert per_run_j[rid] / 3600 == pytest.approx(row["total_wh"])
    gpu_train = phases[
        (phases["run_id"] == runs["constrained"][0])
        & (phases["epoch"] == 1)
        & (phases["stage"] == "train")
        & (phases["kind"] == "gpu")
    ].iloc[0]
    assert gpu_train["energy_j"] == pytest.approx(6500.0)
    assert gpu_train["mean_power_w"] == pytest.approx(650.0)
    assert gpu_train["device_name"] == "NVIDIA H200"
    assert gpu_train["method"] == "counter"


def test_each_run_keeps_its_own_region_unless_one_is_given(ledger, settings, tmp_path) -> None:
    fra = add_run(ledger, RunSpec("a", region="FRA", metrics={"val_acc": 0.9}))
    tst = add_run(ledger, RunSpec("b", region="TST", metrics={"val_acc": 0.9}), start=T0)
    none = add_run(ledger, RunSpec("c", metrics={"val_acc": 0.9}))
    result = build_report(ledger, out_dir=tmp_path, pricing=["onprem"], settings=settings)
    table = pd.read_csv(result.runs_csv).set_index("run_id")
    assert table.loc[tst, "gco2e_per_kwh"] == pytest.approx(TEST_G_PER_KWH)
    assert table.loc[none, "region"] == "world"  # no region: world average, never an error
    assert table.loc[fra, "region"] == "FRA"
    assert table.loc[fra, "gco2e_per_kwh"] < table.loc[none, "gco2e_per_kwh"]
    html = result.html_path.read_text()
    assert "no_region" in html and FLAGS["no_region"] in html


def test_html_is_self_contained_and_escapes_hostile_strings(ledger, settings, tmp_path) -> None:
    realistic(ledger)
    add_run(ledger, RunSpec(HOSTILE, tags=['"><img src=x onerror=alert(2)>'], metrics={"acc": 1}))
    add_run(ledger, RunSpec("mlp $x^2$ & résumé", metrics={"val_acc": 0.5}))
    result = build_report(ledger, out_dir=tmp_path, settings=settings)
    html = result.html_path.read_text(encoding="utf-8")
    legend = re.search(r'<section id="pareto">.*?</section>', html, re.S).group(0)
    assert "mlp $x^2$ &amp; résumé" in legend  # drawn literally: no mathtext, XML-escaped

    assert HOSTILE not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # shown as text, table and charts
    assert "<img" not in html
    audit = _Audit()
    audit.feed(html)
    assert audit.scripts == 1  # the inline sort script, nothing else
    assert audit.external == [], audit.external
    assert audit.svgs >= 5
    assert not re.search(r"url\(\s*['\"]?https?:", html)
    assert "@import" not in html
    assert "@media print" in html


class _Audit(HTMLParser):
    """Collects every resource reference that would make the browser fetch something."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts = 0
        self.svgs = 0
        self.external: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.scripts += tag == "script"
        self.svgs += tag == "svg"
        for name, value in attrs:
            value = (value or "").strip()
            if tag == "a" and name == "href":
                continue  # plain links to data sources are fine
            fetches = name in ("src", "href", "xlink:href", "srcset", "data", "poster", "action")
            if fetches and not value.startswith("#"):
                self.external.append((tag, name, value))
            if tag == "link":
                self.external.append((tag, name, value))


def test_sections_show_growth_lineage_and_provenance(ledger, settings, tmp_path) -> None:
    runs = realistic(ledger)
    html = build_report(ledger, out_dir=tmp_path, settings=settings).html_path.read_text()
    sections = dict(re.findall(r'<section id="(\w+)">(.*?)</section>', html, re.S))
    assert set(sections) == {
        "summary", "pareto", "epochs", "timelines", "cost", "growth", "lineage", "provenance"
    }  # fmt: skip
    for name in ("pareto", "epochs", "timelines", "cost", "growth", "lineage"):
        assert "<svg" in sections[name], name
    adaptive_id = runs["adaptive"][0]
    assert adaptive_id[:8] in sections["growth"]
    assert "2, 3" in sections["growth"]  # grew at the ends of epochs 2 and 3 (0-based)
    assert runs["finetune"][0][:8] in sections["lineage"]
    assert runs["baseline"][0][:8] in sections["lineage"]  # its parent
    assert num(6.05 + (6000 + 600 + 660) / 3600, 4) in sections["lineage"]  # cumulative Wh
    provenance = sections["provenance"]
    for flag in ("averaged_power", "estimated"):
        assert FLAGS[flag] in provenance
    assert "NVIDIA H200" in provenance and "AMD EPYC 7R13" in provenance
    assert 'class="badge">estimated' in provenance
    assert "10 Hz: 4 runs" in provenance and "5 Hz: 1 run" in provenance
    assert "codecarbon" in provenance  # intensity data source and version
    assert "Uptime Institute" in sections["cost"] or "PUE" in sections["cost"]
    # the scenario's row: the configured PUE and where it came from ("PUE" alone is a heading)
    assert f'<td>onprem</td><td class="num">{num(PUE)}</td><td>configuration' in sections["cost"]
    assert "val_acc" in sections["pareto"]
    summary = sections["summary"]
    assert summary.count("<tr>") == 1 + 5  # header + every run
    assert 'title="estimated"' in summary  # estimated CPU/RAM cells are labelled
    # the adaptive run recorded its training samples: the column is there, one cell per row
    header = re.search(r"<thead>.*?</thead>", summary, re.S).group(0)
    assert "J per train sample" in header
    n_columns = len(re.findall(r"<th[\s>]", header))
    body_rows = re.findall(r"<tr[^>]*>.*?</tr>", summary.split("</thead>")[1], re.S)
    assert [row.count("<td") for row in body_rows] == [n_columns] * 5


def test_run_selection_by_id_and_prefix(ledger, settings, tmp_path) -> None:
    runs = realistic(ledger)
    wanted = [runs["adaptive"][0], runs["cpu"][0][:8]]
    result = build_report(ledger, wanted, out_dir=tmp_path, settings=settings)
    assert result.n_runs == 2
    table = pd.read_csv(result.runs_csv)
    assert set(table["run_id"]) == {runs["adaptive"][0], runs["cpu"][0]}
    assert set(pd.read_csv(result.phases_csv)["run_id"]) == set(table["run_id"])


def test_meter_runs_and_repeated_stages(ledger, settings, tmp_path) -> None:
    """A run without epochs (Meter) and a stage that ran twice in one epoch are one row each."""
    rid = ledger.begin_run(architecture="script", devices=[CPU], started_at=T0)
    phase = PhaseEnergy("run", 0, CPU.device_id, "cpu", 0.0, 4.0, 200.0, "estimate", 50.0, 60.0)
    ledger.add_phases(rid, [phase], epoch=None)
    ledger.finish_run(rid, ended_at=T0 + timedelta(seconds=4))
    twice = ledger.begin_run(architecture="twice", devices=[GPU], started_at=T0)
    val = [
        PhaseEnergy("validate", i, GPU.device_id, "gpu", 10.0 * i, 10.0 * i + 2, 400.0, "counter")
        for i in (1, 2)
    ]
    ledger.add_phases(twice, val, epoch=0)
    ledger.finish_run(twice, ended_at=T0 + timedelta(seconds=30))
    result = build_report(ledger, out_dir=tmp_path, settings=settings)
    phases = pd.read_csv(result.phases_csv)
    meter = phases[phases["run_id"] == rid]
    assert len(meter) == 1 and pd.isna(meter["epoch"].iloc[0])
    assert meter["energy_j"].iloc[0] == pytest.approx(200.0)
    merged = phases[phases["run_id"] == twice]
    assert len(merged) == 1
    row = merged.iloc[0]
    assert (row["energy_j"], row["duration_s"]) == (pytest.approx(800.0), pytest.approx(4.0))
    assert row["mean_power_w"] == pytest.approx(200.0)
    assert (row["start_s"], row["end_s"]) == (pytest.approx(10.0), pytest.approx(22.0))
    html = result.html_path.read_text()
    assert "No run recorded a final metric" in html
    assert "J per train sample" not in html  # no run recorded its training samples


def test_large_ledger_is_summarised(ledger, settings, tmp_path) -> None:
    for i in range(30):
        spec = RunSpec(f"arch{i % 12}", epochs=2, train_s=3, val_s=1, timeline=i % 2 == 0,
                       metrics={"val_loss": 1.0 / (i + 1)})  # fmt: skip
        add_run(ledger, spec, start=T0 + timedelta(minutes=i))
    result = build_report(ledger, out_dir=tmp_path, settings=settings)
    html = result.html_path.read_text()
    assert pd.read_csv(result.runs_csv).shape[0] == 30
    assert "Shown for 12 of 30 runs" in html
    assert "the 10 architectures with the most runs of 12" in html
    assert "lower val_loss is better" in html


def test_bad_input_writes_nothing(ledger, settings, tmp_path) -> None:
    out = tmp_path / "out"
    with pytest.raises(BadInput, match="has no runs"):
        build_report(ledger, out_dir=out, settings=settings)
    add_run(ledger, RunSpec("a"))
    with pytest.raises(BadInput, match="feedface"):
        build_report(ledger, ["feedface"], out_dir=out, settings=settings)
    with pytest.raises(UnknownRegion, match="XYZ"):
        build_report(ledger, out_dir=out, region="XYZ", settings=settings)
    with pytest.raises(BadInput, match="nosuch:instance"):
        build_report(ledger, out_dir=out, pricing="onprem,nosuch:instance", settings=settings)
    assert not out.exists()
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(BadInput, match="a-file"):
        build_report(ledger, html_path=blocker / "r.html", csv_dir=out, settings=settings)
    assert list(out.iterdir()) == []  # no CSV written beside a page that cannot be


def test_output_path_that_is_a_folder_is_bad_input(ledger, settings, tmp_path) -> None:
    """Regression: --html naming an existing folder (or --csv the same path as --html) failed in
    os.replace with IsADirectoryError: exit 1, a traceback and a stray .tmp file."""
    add_run(ledger, RunSpec("a"))
    folder = tmp_path / "existing"
    folder.mkdir()
    out = tmp_path / "out"
    with pytest.raises(BadInput, match=r"existing.*is a folder"):
        build_report(ledger, html_path=folder, csv_dir=out, settings=settings)
    assert list(folder.iterdir()) == []
    assert not out.exists()
    same = tmp_path / "r.html"
    with pytest.raises(BadInput, match=r"r\.html.*is a folder"):
        build_report(ledger, html_path=same, csv_dir=same, settings=settings)
    assert not same.exists()
    assert not list(tmp_path.glob(".*.tmp"))


def test_read_only_file_system_is_bad_input(ledger, settings, tmp_path, monkeypatch) -> None:
    """Regression: on a read-only file system (EROFS: every write and every unlink fails, even of
    a file that is not there) the clean-up of the temporary files raised OSError over the
    BadInput that named the path: exit 1 and a traceback instead of exit 2."""
    import errno

    add_run(ledger, RunSpec("a"))
    out = tmp_path / "ro"
    out.mkdir()

    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(pathlib.Path, "write_text", read_only)
    monkeypatch.setattr(pathlib.Path, "write_bytes", read_only)
    monkeypatch.setattr(pathlib.Path, "unlink", read_only)
    with pytest.raises(BadInput, match=r"cannot write .*ro/.*Read-only file system.*accepted"):
        build_report(ledger, out_dir=out, settings=settings)


def test_phases_csv_written_by_forked_children_is_the_same_file(
    ledger, settings, tmp_path, monkeypatch
) -> None:
    """Large ledgers get phases.csv written by forked children, one slice each, joined in order:
    byte for byte what the single process writes, no part file left; a child that fails makes
    the parent write the file itself, and so does another thread being alive."""
    import os
    import threading

    import wattwise.report as report
    from wattwise.report import _data

    for name in "abcdef":
        add_run(ledger, RunSpec(name))
    single = build_report(ledger, out_dir=tmp_path / "single", settings=settings)
    monkeypatch.setattr(report, "FORK_MIN_ROWS", 1)
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    forks = []
    real_fork = os.fork

    def counting_fork():
        pid = real_fork()
        if pid:
            forks.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", counting_fork)
    forked = build_report(ledger, out_dir=tmp_path / "forked", settings=settings)
    # three writers where forking is safe; with another thread alive (a daemon left by an
    # earlier test) the parent writes the file itself
    assert len(forks) == (3 if threading.active_count() == 1 else 0)
    assert forked.phases_csv.read_bytes() == single.phases_csv.read_bytes()
    assert sorted(p.name for p in (tmp_path / "forked").iterdir()) == [
        "phases.csv",
        "report.html",
        "runs.csv",
    ]
    real = _data.csv_text
    parent = os.getpid()

    def failing_in_children(frame, *, header=True):
        if os.getpid() != parent:
            raise RuntimeError("a child that fails")
        return real(frame, header=header)

    monkeypatch.setattr(_data, "csv_text", failing_in_children)
    again = build_report(ledger, out_dir=tmp_path / "again", settings=settings)
    assert again.phases_csv.read_bytes() == single.phases_csv.read_bytes()
    assert len(list((tmp_path / "again").iterdir())) == 3
    # another thread alive: no fork at all, whatever this test process's threads are
    monkeypatch.setattr(_data, "csv_text", real)
    monkeypatch.setattr(threading, "active_count", lambda: 2)
    forks.clear()
    guarded = build_report(ledger, out_dir=tmp_path / "guarded", settings=settings)
    assert forks == []
    assert guarded.phases_csv.read_bytes() == single.phases_csv.read_bytes()


def test_cli_json_and_exit_codes(ledger, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # default outputs under ./reports, no stray config file
    for var in ("WATTWISE_REGION", "WATTWISE_PRICING", "WATTWISE_LEDGER"):
        monkeypatch.delenv(var, raising=False)
    db = str(ledger.path)
    ledger.remove(ledger.begin_run(architecture="gone"))  # an existing, empty ledger
    assert main(["report", "--ledger", db, "--json"]) == 2
    assert "has no runs" in capsys.readouterr().err
    assert main(["report", "--ledger", str(tmp_path / "missing.db")]) == 2
    assert "no ledger at" in capsys.readouterr().err
    assert not (tmp_path / "missing.db").exists()
    runs = realistic(ledger)
    assert main(["report", "--ledger", db, "--json", "deadbeef"]) == 2
    assert "deadbeef" in capsys.readouterr().err
    args = ["report", runs["baseline"][0][:8], runs["adaptive"][0], "--ledger", db, "--json"]
    args += ["--pricing", "onprem", "--pricing", "aws:p5.48xlarge,onprem", "--region", "FRA"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {
        "html": str(pathlib.Path("reports") / "report.html"),
        "runs_csv": str(pathlib.Path("reports") / "runs.csv"),
        "phases_csv": str(pathlib.Path("reports") / "phases.csv"),
        "n_runs": 2,
    }
    table = pd.read_csv(tmp_path / out["runs_csv"])
    assert {"cost_usd[onprem]", "cost_usd[aws:p5.48xlarge]"} <= set(table.columns)
    assert set(table["region"]) == {"FRA"}
    html = tmp_path / "elsewhere" / "r.html"
    assert main(["report", "--ledger", db, "--html", str(html), "--csv", "csvs"]) == 0
    printed = capsys.readouterr().out
    assert str(html) in printed and html.exists()
    assert (tmp_path / "csvs" / "phases.csv").exists()


def test_pareto_mask_by_hand() -> None:
    energy = [1.0, 2.0, 3.0, 4.0, 2.5]
    accuracy = [0.80, 0.90, 0.85, 0.95, 0.90]
    # run 2 (3 Wh, 0.85) is beaten by run 1; run 4 (2.5 Wh, 0.90) ties run 1 with more energy
    assert pareto_mask(energy, accuracy, lower=False) == [True, True, False, True, False]
    loss = [0.5, 0.4, 0.6, float("nan"), 0.1]
    assert pareto_mask(energy, loss, lower=True) == [True, True, False, False, True]


def test_helpers() -> None:
    assert parse_scenarios(["onprem, aws:p5.48xlarge", "onprem", ["gcp:a3-highgpu-8g"]]) == [
        "onprem", "aws:p5.48xlarge", "gcp:a3-highgpu-8g"
    ]  # fmt: skip
    assert parse_scenarios(None) == []
    assert pick_metric(["metric/val_loss", "metric/test_acc"]) == "metric/test_acc"
    assert pick_metric(["metric/f1", "metric/train_loss"]) == "metric/train_loss"
    assert pick_metric([]) is None
    assert [lower_is_better(m) for m in ("metric/val_loss", "test/mse", "trainloss")] == [True] * 3
    assert [lower_is_better(m) for m in ("metric/val_acc", "f1", "answer_rate")] == [False] * 3
    assert [num(v) for v in (None, float("nan"), 3.0, 0.012345, 123.456, 2.5e-5)] == [
        "–", "–", "3", "0.0123", "123", "2.50e-05"
    ]  # fmt: skip
    values = pd.Series(range(1000), dtype=float).to_numpy()
    down = _downsample(values, 100)
    assert len(down) == 100
    assert down.mean() == pytest.approx(values.mean())
    assert down[0] == pytest.approx(4.5)  # mean of 0..9


def test_csv_text_reads_back_like_pandas_to_csv() -> None:
    frame = pd.DataFrame(
        {
            "name": ["a,b", 'say "hi"', "two\nlines", HOSTILE],
            "epoch": pd.array([0, None, 2, 3], dtype="Int64"),
            "energy_j": [1.5, float("nan"), 1e-7, 123456.789],
            "empty": [None] * 4,
            "flag": [True, False, True, False],
        }
    )
    ours = pd.read_csv(io.StringIO(csv_text(frame)))
    theirs = pd.read_csv(io.StringIO(frame.to_csv(index=False)))
    pd.testing.assert_frame_equal(ours, theirs)
    assert ours["name"].tolist() == frame["name"].tolist()


def test_intensity_series_prices_each_run_over_its_own_interval(ledger, tmp_path) -> None:
    series = tmp_path / "grid.csv"
    series.write_text(
        "timestamp,gco2e_per_kwh\n2026-11-02T09:00:00Z,100\n2026-11-02T10:00:00Z,300\n"
    )
    settings = config.load(env={}, cwd=tmp_path).with_overrides(
        pue=PUE, intensity_series=str(series)
    )
    morning = add_run(ledger, RunSpec("a"), start=T0)  # 09:00:00 .. 09:00:36 at 100 g/kWh
    later = add_run(ledger, RunSpec("a"), start=T0 + timedelta(hours=1))  # at 300 g/kWh
    result = build_report(ledger, out_dir=tmp_path / "out", settings=settings)
    table = pd.read_csv(result.runs_csv).set_index("run_id")
    assert table.loc[morning, "gco2e_per_kwh"] == pytest.approx(100.0)
    assert table.loc[later, "gco2e_per_kwh"] == pytest.approx(300.0)
    assert table.loc[later, "co2e_kg[onprem]"] == pytest.approx(6.05 / 1000 * PUE * 300 / 1000)
    html = result.html_path.read_text()
    assert "100–300" in html and "over each run&#39;s interval (2 runs)" in html


def test_run_without_phases_still_reports(ledger, settings, tmp_path) -> None:
    rid = ledger.begin_run(architecture="crashed", started_at=T0)
    ledger.finish_run(
        rid, status="failed", reason="CUDA out of memory", metrics={"val_acc": 0.1}, ended_at=T0
    )
    add_run(ledger, RunSpec("big", train_w=6000.0, metrics={"val_acc": 0.9}))
    result = build_report(ledger, out_dir=tmp_path, settings=settings)  # warnings are errors
    row = pd.read_csv(result.runs_csv).set_index("run_id").loc[rid]
    assert (row["status"], row["total_wh"], row["epochs"]) == ("failed", 0.0, 0)
    assert rid not in set(pd.read_csv(result.phases_csv)["run_id"])
    html = result.html_path.read_text()
    assert 'title="CUDA out of memory">failed<' in html
    alone = build_report(ledger, [rid], out_dir=tmp_path / "alone", settings=settings)
    assert alone.n_runs == 1 and pd.read_csv(alone.phases_csv).empty


def _resume(ledger: Ledger, run_id: str, monkeypatch, *, at, run_s: float) -> None:
    """Continue a finished run at ``at`` (a fresh process, say) for ``run_s`` more seconds."""
    with monkeypatch.context() as patch:
        patch.setattr(ledger_module, "_now_iso", lambda: at.isoformat())
        ledger.reopen_run(run_id)
        ledger.finish_run(run_id, ended_at=at + timedelta(seconds=run_s))


def test_a_resumed_run_is_priced_for_its_running_time_only(
    ledger, settings, tmp_path, monkeypatch
) -> None:
    """Regression: the hours between a fit and its resume were rented time in the report."""
    rid = add_run(ledger, RunSpec("resumed"))  # 09:00:00 .. 09:00:36
    _resume(ledger, rid, monkeypatch, at=T0 + timedelta(hours=8), run_s=36.0)
    result = build_report(
        ledger, out_dir=tmp_path / "out", pricing="onprem,aws:p5.48xlarge", settings=settings
    )
    row = pd.read_csv(result.runs_csv).set_index("run_id").loc[rid]
    assert row["duration_s"] == pytest.approx(72.0)
    assert row["cost_usd[onprem]"] == pytest.approx(_onprem_usd(6.05, 72.0))
    p5 = pricing.instance("aws:p5.48xlarge")
    assert row["cost_usd[aws:p5.48xlarge]"] == pytest.approx(72 / 3600 * p5.price_per_hour_usd / 8)


def test_intensity_series_covers_both_ends_of_a_resumed_run(ledger, tmp_path, monkeypatch) -> None:
    """The run used energy before and after its pause: the series is averaged from its start to
    its end (not start + running time, which would end before the resume)."""
    series = tmp_path / "grid.csv"
    series.write_text(
        "timestamp,gco2e_per_kwh\n2026-11-02T09:00:00Z,100\n2026-11-02T10:00:00Z,300\n"
    )
    settings = config.load(env={}, cwd=tmp_path).with_overrides(
        pue=PUE, intensity_series=str(series)
    )
    rid = add_run(ledger, RunSpec("a"))  # 09:00:00 .. 09:00:36 at 100 g/kWh
    _resume(ledger, rid, monkeypatch, at=T0 + timedelta(hours=1), run_s=36.0)  # at 300 g/kWh
    result = build_report(ledger, out_dir=tmp_path / "out", settings=settings)
    row = pd.read_csv(result.runs_csv).set_index("run_id").loc[rid]
    assert row["duration_s"] == pytest.approx(72.0)
    # 09:00:00 .. 10:00:36: 3600 s at 100, 36 s at 300
    assert row["gco2e_per_kwh"] == pytest.approx((3600 * 100 + 36 * 300) / 3636)
