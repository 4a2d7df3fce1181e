"""Hostile labels (issue 14, items 1 and 2): a ledger merged from another machine, a
configuration file or a trace from someone else must not run formulas in a spreadsheet that
opens wattwise's CSV files, nor drive the terminal (clear the screen, split a table row, switch
colours through rich markup) when wattwise prints them. Everything goes through the real CLI
entry point and real ledgers, except the demo's table and EnergyCallback's summary (a one
minute training run each), which are fed their real result types."""

from __future__ import annotations

import csv
import json
import pathlib
import re
import shutil
import sqlite3
import subprocess
import sys

import pytest

from wattwise._safe_text import FORMULA_START, csv_cell, literal, printable
from wattwise.cli import main
from wattwise.ledger import Ledger
from wattwise.types import ArchSnapshot, DeviceInfo, PhaseEnergy

# -- spreadsheet formulas (OWASP CSV injection) -------------------------------------------------

HYPERLINK = '=HYPERLINK("http://x","y")'
CALC = "+cmd|' /C calc'!A0"
SUM = "@SUM(1)"
MINUS = "-2+3+cmd|' /C calc'!A0"
TAB = "\t=1+1"
CR = "\r=1+1"
FORMULAS = (HYPERLINK, CALC, SUM, MINUS, TAB, CR)
NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


@pytest.mark.parametrize(
    ("value", "written"),
    [
        *((formula, "'" + formula) for formula in FORMULAS),
        ("-", "'-"),
        ("=", "'="),
        ("-3.5", "-3.5"),  # a number in a text column stays a number
        ("+2e-3", "+2e-3"),
        ("-.5", "-.5"),
        ("-3.5x", "'-3.5x"),
        ("-1e5+1", "'-1e5+1"),
        ("a=1", "a=1"),
        ("", ""),
        (-3.5, -3.5),  # numbers are never touched
        (-7, -7),
        (None, None),
        (True, True),
    ],
)
def test_csv_cell(value: object, written: object) -> None:
    assert csv_cell(value) == written
    assert type(csv_cell(value)) is type(written)


HOSTILE_GPU = DeviceInfo(f"gpu:{SUM}", "gpu", SUM, "counter", uuid=SUM)
HOSTILE_CPU = DeviceInfo("cpu:machine", "cpu", CR, "estimate", flags=frozenset({"estimated"}))


def _hostile_run(book: Ledger, architecture: str, *, tags=(), stage="train", metric="val_loss"):
    """A finished two-epoch run with hostile labels; its GPU energy includes a negative reading
    (a counter that went back) so that negative numbers reach the CSV files too."""
    run_id = book.begin_run(
        architecture=architecture, tags=tags, devices=[HOSTILE_GPU, HOSTILE_CPU], region="FRA"
    )
    for epoch, gpu_j in enumerate((3600.0, -3.5)):
        phases = [
            PhaseEnergy(stage, 2 * epoch, d.device_id, d.kind, 4.0 * epoch, 4.0 * epoch + 4, j, m)
            for d, j, m in ((HOSTILE_GPU, gpu_j, "counter"), (HOSTILE_CPU, 360.0, "estimate"))
        ]
        book.add_phases(
            run_id,
            phases,
            epoch=epoch,
            snapshot=ArchSnapshot(100, 100, CALC, architecture),
            epochs_completed=epoch + 1,
        )
    book.finish_run(run_id, metrics={metric: -3.5}, reason=HYPERLINK)
    return run_id


def _read_csv(path: pathlib.Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_report_csv_files_neutralise_every_formula_and_keep_numbers(tmp_path, capsys) -> None:
    ledger = tmp_path / "merged.db"
    with Ledger(ledger) as book:
        _hostile_run(book, HYPERLINK, tags=[CALC, "fine"], stage=MINUS, metric=SUM)
        _hostile_run(book, TAB, tags=[CR], stage=SUM, metric=MINUS)
        _hostile_run(book, "-3.5")  # a label that reads as a number
    with sqlite3.connect(ledger) as conn:  # a host name from another machine, for any column
        conn.execute("UPDATE runs SET host = ?", (SUM,))  # that may show it one day
    conn.close()
    out = tmp_path / "out"
    assert main(["report", "--ledger", str(ledger), "--out", str(out), "--region", "FRA"]) == 0
    capsys.readouterr()
    runs = _read_csv(out / "runs.csv")
    phases = _read_csv(out / "phases.csv")

    for row in runs + phases:  # headers included: metric names become column names
        for cell in row:
            if cell[:1] in FORMULA_START:
                assert NUMBER.fullmatch(cell), f"cell {cell!r} would run in a spreadsheet"

    header, *rows = runs
    column = {name: [row[header.index(name)] for row in rows] for name in header}
    assert column["architecture"] == ["'" + HYPERLINK, "'" + TAB, "-3.5"]
    assert column["tags"] == ["'" + CALC + ",fine", "'" + CR, ""]
    assert f"metric/{SUM}" in header and f"metric/{MINUS}" in header  # a prefix makes them safe
    assert column[f"metric/{SUM}"] == ["-3.5", "", ""]
    assert column[f"metric/{MINUS}"] == ["", "-3.5", ""]
    assert [float(v) for v in column["gpu_wh"]] == [pytest.approx((3600 - 3.5) / 3600)] * 3

    header, *rows = phases
    column = {name: [row[header.index(name)] for row in rows] for name in header}
    assert set(column["stage"]) == {"'" + MINUS, "'" + SUM, "train"}
    assert set(column["device_name"]) == {"'" + SUM, "'" + CR}
    gpu_j = [
        float(j) for j, k in zip(column["energy_j"], column["kind"], strict=True) if k == "gpu"
    ]
    assert gpu_j == [3600.0, -3.5] * 3  # negative numbers stay numbers
    assert "-3.5" in column["energy_j"]


# -- terminal escapes and rich markup ----------------------------------------------------------

# clears the screen, turns red, starts a new row, returns the carriage, and rich markup
EVIL = "\x1b[2J\x1b[31mevil\nrow\r[bold]x[/bold] :smile:"
EVIL_SHOWN = r"\x1b[2J\x1b[31mevil\nrow\r[bold]x[/bold] :smile:"
REASON = "stopped\x1b]0;pwned\x07 [red]budget[/red]"
REASON_SHOWN = r"stopped\x1b]0;pwned\x07 [red]budget[/red]"
HOST = "node\x1b[8m1\u202egnp.exe"
HOST_SHOWN = r"node\x1b[8m1\u202egnp.exe"


@pytest.fixture
def plain_terminal(no_wattwise_env, monkeypatch) -> None:
    """The tests' stdout is not a terminal: rich adds no escape sequence of its own, so any
    ESC in the output came from a label."""
    for var in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS"):
        monkeypatch.delenv(var, raising=False)


def _shown(text: str, *expected: str) -> None:
    assert "\x1b" not in text and "\r" not in text and "\u202e" not in text, text
    for shown in expected:
        assert shown in text, (shown, text)


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def evil_ledger(tmp_path) -> tuple[pathlib.Path, str]:
    path = tmp_path / "evil.db"
    with Ledger(path) as book:
        device = DeviceInfo("gpu:GPU-1f0b2c1e-8d6a-4f3b-9e21-7c4d8a9b0e12", "gpu", EVIL, "counter")
        run_id = book.begin_run(
            architecture=EVIL,
            tags=[EVIL],
            devices=[device],
            region=EVIL,
            scheduler={"user": EVIL, "job_id": "42", "slurm": {"job_name": EVIL}},
        )
        book.add_phases(
            run_id,
            [PhaseEnergy(EVIL, 0, device.device_id, "gpu", 0.0, 4.0, 3600.0, "counter")],
            epoch=0,
            snapshot=ArchSnapshot(10, 10, EVIL, EVIL),
            epochs_completed=1,
        )
        book.finish_run(run_id, metrics={EVIL: 1.0}, reason=REASON)
    with sqlite3.connect(path) as conn:  # as a ledger merged from another machine holds it
        conn.execute("UPDATE runs SET host = ?", (HOST,))
    conn.close()
    return path, run_id


def test_runs_table_shows_labels_escaped_on_one_row(capsys, plain_terminal, evil_ledger) -> None:
    ledger, run_id = evil_ledger
    code, out, _ = _cli(capsys, "runs", "--ledger", str(ledger))
    assert code == 0
    _shown(out, EVIL_SHOWN)
    (row,) = [line for line in out.splitlines() if run_id[:8] in line]
    assert EVIL_SHOWN in row  # the newline in the label did not split the row

    code, out, _ = _cli(capsys, "runs", "--ledger", str(ledger), "--json")
    assert json.loads(out)[0]["architecture"] == EVIL  # JSON stays exact


def test_runs_on_a_real_terminal_draws_no_label_escape(evil_ledger, tmp_path) -> None:
    """On a terminal rich adds escapes of its own (bold headers): the label's are shown, not
    sent."""
    import os

    pty = pytest.importorskip("pty")
    ledger, run_id = evil_ledger
    main_fd, child_fd = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "300"}
    argv = [sys.executable, "-m", "wattwise", "runs", "--ledger", str(ledger)]
    child = subprocess.Popen(argv, stdout=child_fd, stderr=child_fd, env=env, cwd=tmp_path)
    os.close(child_fd)
    out = b""
    while True:
        try:
            chunk = os.read(main_fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(main_fd)
    assert child.wait(timeout=120) == 0
    text = out.decode()
    assert "\x1b[1m" in text  # rich did style the header: this was a terminal
    for raw in ("\x1b[2J", "\x1b[31m", "evil\nrow", "evil\r\nrow"):
        assert raw not in text
    (row,) = [line for line in text.splitlines() if run_id[:8] in line]
    assert EVIL_SHOWN in row


def test_runs_show_escapes_every_label(capsys, plain_terminal, evil_ledger) -> None:
    ledger, run_id = evil_ledger
    code, out, _ = _cli(capsys, "runs", "show", run_id, "--ledger", str(ledger))
    assert code == 0
    _shown(out, EVIL_SHOWN, REASON_SHOWN, HOST_SHOWN)
    lines = out.splitlines()
    assert any(line.split() == ["architecture", *EVIL_SHOWN.split()] for line in lines)
    assert any(line.strip().startswith("host / pid") and HOST_SHOWN in line for line in lines)
    assert any(re.match(rf"\s*region / pricing\s+{re.escape(EVIL_SHOWN)} /", ln) for ln in lines)
    assert any(line.split() == ["metrics", *f"{EVIL_SHOWN}=1".split()] for line in lines)
    # scheduler metadata comes from the job's environment: another user's text too
    assert any(line.split() == ["user", *EVIL_SHOWN.split()] for line in lines)
    assert any(line.split() == ["SLURM", *f"job_name={EVIL_SHOWN}".split()] for line in lines)
    (phase_row,) = [line for line in lines if line.startswith("│ 0 ") and "counter" in line]
    assert EVIL_SHOWN in phase_row  # the stage
    (size_row,) = [line for line in lines if line.startswith("│ 0 ") and "│ 10 " in line]
    assert size_row.count(EVIL_SHOWN) == 2  # model class and label

    code, out, _ = _cli(capsys, "runs", "show", run_id, "--ledger", str(ledger), "--json")
    shown = json.loads(out)
    assert (shown["architecture"], shown["reason"], shown["host"]) == (EVIL, REASON, HOST)


def test_errors_show_hostile_input_escaped(
    capsys, plain_terminal, evil_ledger, tmp_path, monkeypatch
) -> None:
    ledger, _ = evil_ledger
    code, out, err = _cli(capsys, "runs", "show", EVIL, "--ledger", str(ledger))
    assert code == 2 and out == ""
    _shown(err, "wattwise: error:")
    assert "\n" not in err.rstrip("\n")  # one line

    folder = tmp_path / "project\x1b[2J\nx"  # the configuration file's path is in the message
    folder.mkdir()
    (folder / "wattwise.toml").write_text('regoin = "FRA"\n', encoding="utf-8")
    monkeypatch.chdir(folder)
    code, out, err = _cli(capsys, "config")
    assert code == 2
    _shown(err, r"project\x1b[2J\nx", "regoin")
    assert "\n" not in err.rstrip("\n")


def test_report_summary_shows_paths_escaped(capsys, plain_terminal, evil_ledger, tmp_path) -> None:
    ledger, _ = evil_ledger
    folder = tmp_path / "out\x1b[2J\nx"
    code, out, _ = _cli(capsys, "report", "--ledger", str(ledger), "--out", str(folder))
    assert code == 0
    _shown(out, printable(str(folder / "report.html")), r"out\x1b[2J\nx")
    assert len(out.splitlines()) == 4  # heading, html, runs.csv, phases.csv
    assert (folder / "report.html").exists()


def _config(tmp_path: pathlib.Path, text: str) -> None:
    (tmp_path / "wattwise.toml").write_text(text, encoding="utf-8")


TOML_EVIL = r"\u001b[2J\u001b[31mevil\nrow\r[bold]x[/bold] :smile:"  # EVIL in TOML's escapes


def test_carbon_and_config_show_configured_labels_escaped(capsys, plain_terminal, tmp_path) -> None:
    _config(
        tmp_path,
        f'region = "{TOML_EVIL}"\n'
        f'[intensities."{TOML_EVIL}"]\n'
        f'gco2e_per_kwh = 50\nsource = "{TOML_EVIL}"\nyear = 2025\n',
    )
    code, out, _ = _cli(capsys, "carbon")
    assert code == 0
    # region codes are compared in lower case
    _shown(out, f"region:    {EVIL_SHOWN.lower()} (file:", f"source:    {EVIL_SHOWN}")

    code, out, _ = _cli(capsys, "config")
    assert code == 0
    _shown(out, "[bold]x[/bold] :smile:")  # json.dumps escaped the controls; rich kept markup
    (row,) = [line for line in out.splitlines() if " region " in line]
    assert "[bold]x[/bold]" in row

    code, out, _ = _cli(capsys, "carbon", "--json")
    assert json.loads(out)["region"] == EVIL.lower()  # exact, control characters and all


GPU_ROW = (
    "tdp_w = 300\nidle_w = 50\nbf16_tflops = 100\nfp32_tflops = 20\nmemory_gib = 40\n"
    'memory_bandwidth_gbs = 1000\nprice_usd = 10000\nsource = "lab"\ndate = "2025-01"\n'
)


def test_hardware_prices_and_estimate_show_names_escaped(capsys, plain_terminal, tmp_path) -> None:
    _config(
        tmp_path,
        f'[gpus."{TOML_EVIL}"]\n{GPU_ROW}'
        f'[instances."lab:{TOML_EVIL}"]\ngpus = 1\ngpu = "{TOML_EVIL}"\n'
        'price_per_hour_usd = 2.0\nsource = "lab"\ndate = "2025-01"\n',
    )
    for command in ("hardware", "prices"):
        code, out, _ = _cli(capsys, command)
        assert code == 0
        _shown(out, EVIL_SHOWN)
    code, out, _ = _cli(
        capsys,
        "estimate",
        *("--measured-gpu", EVIL, "--gpu", EVIL, "--epochs", "10"),
        *("--seconds-per-epoch", "60", "--joules-per-epoch", "6000", "--budget-kwh", "1e-9"),
    )
    assert code == 0
    _shown(out, EVIL_SHOWN, f"cheapest: {EVIL_SHOWN}", f"  {EVIL_SHOWN}: over: kwh")
    (row,) = [line for line in out.splitlines() if EVIL_SHOWN in line and "│" in line]
    assert "yes" in row or "?" in row


def test_devices_shows_a_driver_reported_name_escaped(capsys, plain_terminal, monkeypatch) -> None:
    from tests.fake_pynvml import FakeNvml

    fake = FakeNvml(n_gpus=1)
    fake.gpus[0].name = EVIL
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    code, out, _ = _cli(capsys, "devices")
    assert code == 0
    _shown(out, EVIL_SHOWN)


def test_replay_shows_trace_name_and_marks_escaped(
    capsys, plain_terminal, tmp_path, nvml_fixtures
) -> None:
    trace = tmp_path / "trace\x1b[2J[bold]x.csv"
    shutil.copyfile(nvml_fixtures / "h200-square-wave.csv", trace)
    marks = tmp_path / "marks.json"
    marks.write_text(json.dumps({"marks": [[EVIL, 0.5], ["end", 2.0]]}), encoding="utf-8")
    code, out, _ = _cli(capsys, "replay", str(trace), "--marks", str(marks))
    assert code == 0
    _shown(out, r"trace\x1b[2J[bold]x.csv", EVIL_SHOWN)


def test_demo_table_and_paths_escaped(capsys, plain_terminal) -> None:
    from wattwise.commands.demo import _show
    from wattwise.zoo.demo import DemoResult, DemoRun

    run = DemoRun("r1", EVIL, 2, 1.5, 0.01, 0.001, 0.0001, 0.9, 0.9, 10, 10, (4,), (4,), ())
    _show(DemoResult(f"/tmp/{EVIL}.db", [run], f"/{EVIL}/report.html", "r.csv", "p.csv"))
    out = capsys.readouterr().out
    _shown(out, EVIL_SHOWN, f"ledger: /tmp/{EVIL_SHOWN}.db")
    (row,) = [line for line in out.splitlines() if "0.900" in line]
    assert EVIL_SHOWN in row


def test_energy_callback_summary_escapes_labels() -> None:
    from lightning_callbacks.energy import _format_summary

    summary = {
        "run_id": "r1",
        "architecture": EVIL,
        "epochs": 1,
        "duration_s": 2.0,
        "energy_wh": 1.0,
        "energy_by_kind_wh": {"gpu": 1.0, "cpu": 0.0, "ram": 0.0},
        "cost_usd": 0.1,
        "pricing": "onprem",
        "co2e_kg": 0.001,
        "region": EVIL,
        "devices": [f"gpu: {EVIL} (counter)"],
        "flags": [],
    }
    text = _format_summary(summary)
    _shown(text, f"({EVIL_SHOWN})", f"gpu: {EVIL_SHOWN} (counter)")
    assert len(text.splitlines()) == 5


def test_printable_and_literal() -> None:
    assert printable("a\x00b\x7fc\x9bd\u2028e\u200ff\tg") == r"a\x00b\x7fc\x9bd\u2028e\u200ff\tg"
    assert printable("résumé · 東京 \\x1b") == "résumé · 東京 \\x1b"  # text and backslashes kept
    assert printable(3.5) == "3.5"
    text = literal("[bold]x[/bold] :smile:")
    assert text.plain == "[bold]x[/bold] :smile:" and not text.spans
