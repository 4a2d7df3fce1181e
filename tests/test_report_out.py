"""`wattwise report --out DIR` (issue 14, item 6): the same folder option as `wattwise demo
--out`, beside `--html FILE` and `--csv DIR`, which win for their files; a DIR that cannot be
written is bad input (exit 2, named), with the ledger untouched and nothing written."""

from __future__ import annotations

import hashlib
import json
import pathlib

import pytest
from _ledger_factory import RunSpec, add_run

from wattwise.cli import main
from wattwise.ledger import Ledger

FILES = ("report.html", "runs.csv", "phases.csv")


@pytest.fixture
def ledger(tmp_path: pathlib.Path, no_wattwise_env) -> pathlib.Path:
    path = tmp_path / "w.db"
    with Ledger(path) as book:
        add_run(book, RunSpec("baseline", metrics={"val_loss": 0.2}))
        add_run(book, RunSpec("adaptive", metrics={"val_loss": 0.1}))
    return path


def _report(capsys, ledger: pathlib.Path, *args: str) -> tuple[int, dict | None, str]:
    code = main(["report", "--ledger", str(ledger), "--json", *args])
    out, err = capsys.readouterr()
    return code, json.loads(out) if code == 0 else None, err


def _digest(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_out_writes_every_file_into_the_folder(capsys, ledger, tmp_path) -> None:
    out = tmp_path / "new" / "folder"
    code, written, _ = _report(capsys, ledger, "--out", str(out))
    assert code == 0
    assert written == {
        "html": str(out / "report.html"),
        "runs_csv": str(out / "runs.csv"),
        "phases_csv": str(out / "phases.csv"),
        "n_runs": 2,
    }
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)  # no temporary file left
    assert "adaptive" in (out / "runs.csv").read_text(encoding="utf-8")
    assert not (tmp_path / "reports").exists()  # the default folder is not used


def test_html_and_csv_win_for_their_files(capsys, ledger, tmp_path) -> None:
    out, page, tables = tmp_path / "out", tmp_path / "page.html", tmp_path / "tables"
    code, written, _ = _report(capsys, ledger, "--out", str(out), "--html", str(page))
    assert code == 0
    assert written["html"] == str(page) and page.exists()
    assert sorted(p.name for p in out.iterdir()) == ["phases.csv", "runs.csv"]

    code, written, _ = _report(capsys, ledger, "--csv", str(tables), "--out", str(tmp_path / "o2"))
    assert code == 0
    assert (written["runs_csv"], written["html"]) == (
        str(tables / "runs.csv"),
        str(tmp_path / "o2" / "report.html"),
    )
    assert sorted(p.name for p in (tmp_path / "o2").iterdir()) == ["report.html"]

    unused = tmp_path / "unused"
    args = ("--out", str(unused), "--html", str(page), "--csv", str(tables))
    assert _report(capsys, ledger, *args)[0] == 0
    assert not unused.exists()  # both files placed elsewhere: the folder is not even created


def test_out_that_is_a_file_is_bad_input_naming_it(capsys, ledger, tmp_path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder", encoding="utf-8")
    before = _digest(ledger)
    code, _, err = _report(capsys, ledger, "--out", str(blocker))
    assert code == 2
    assert f"{str(blocker)!r} is not a folder" in err and "--out DIR" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert blocker.read_text(encoding="utf-8") == "not a folder"
    assert _digest(ledger) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "w.db"]


def test_unwritable_out_is_bad_input_naming_it(capsys, ledger, tmp_path, read_only) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    before = _digest(ledger)
    for out in (locked, locked / "sub"):
        with read_only(locked):
            code, _, err = _report(capsys, ledger, "--out", str(out))
        assert code == 2, err
        assert repr(str(out / "runs.csv")) in err and "accepted" in err and "--out DIR" in err
        assert "Traceback" not in err
    assert list(locked.iterdir()) == []
    assert _digest(ledger) == before


def test_help_names_out_and_which_option_wins(capsys) -> None:
    assert main(["report", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.replace("│", " ").split())  # help in a box
    assert "--out" in text and "--html and --csv, when given, win for their files" in text
