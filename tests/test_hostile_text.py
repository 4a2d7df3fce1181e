"""Hostile labels (issue 14, items 1 and 2): a ledger merged from another machine, a
configuration file or a trace from someone else must not run formulas in a spreadsheet that
opens wattwise's CSV files, nor drive the terminal (clear the screen, split a table row, switch
colours through rich markup) when wattwise prints them. Everything goes through the real CLI
entry point and real ledgers, except the demo's table and EnergyCallback's summary (a one
minute training run each), which are fed their real result types."""

from __future__ import annotations

import csv
import pathlib
import re

import pytest

from wattwise._safe_text import FORMULA_START, csv_cell
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
