"""The CLI shell: exit codes and messages shared by every sub-command."""

from __future__ import annotations

import subprocess
import sys

import pytest

from wattwise.cli import main


@pytest.mark.parametrize(
    "argv",
    [
        ["estimate", "--epochs", "abc"],  # a value the option's type refuses
        ["no-such-command"],
        ["runs", "--no-such-flag"],
    ],
)
def test_usage_errors_exit_2_without_traceback(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "Error" in err


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["estimate", "--measured-gpu", "H100", "--seconds-per-epoch", "abc"], "'abc'"),
        (["demo", "--epochs=1.5"], "'1.5'"),
        (["estimate", "--epochs", "x", "--epochs", "twelve"], "'twelve'"),  # the last one counts
    ],
)
def test_a_value_the_flag_type_refuses_is_named(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Regression: typer's message said what is accepted ("Input should be a valid integer")
    but not which value was refused."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"(got {named})" in err and "Traceback" not in err


def test_a_value_the_message_already_names_is_not_named_twice() -> None:
    """A typer built on click itself names the value ("'abc' is not a valid integer."):
    nothing is added then; a message without it gets it once."""
    import click

    from wattwise.cli import _name_the_value

    option = click.Option(["--epochs", "-e"])
    named = click.BadParameter("'abc' is not a valid integer.", param=option)
    _name_the_value(named, ["estimate", "--epochs", "abc"])
    assert named.message == "'abc' is not a valid integer."
    unnamed = click.BadParameter("Input should be a valid integer", param=option)
    _name_the_value(unnamed, ["estimate", "-e", "abc"])
    assert unnamed.message == "Input should be a valid integer (got 'abc')"


def test_console_script_bad_value_exit_code() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "wattwise", "estimate", "--epochs", "abc"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "--epochs" in proc.stderr


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in (
        "devices",
        "demo",
        "run",
        "runs",
        "report",
        "estimate",
        "carbon",
        "config",
        "replay",
        "hardware",
    ):
        assert name in out


def test_exit_code_of_a_command_passes_through(tmp_path: pytest.TempPathFactory) -> None:
    """Regression: main() returned 0 when a command raised typer.Exit(code)."""
    ledger = f"{tmp_path}/l.db"
    code = main(["run", "--ledger", ledger, "--", sys.executable, "-c", "raise SystemExit(3)"])
    assert code == 3
