"""The ``wattwise`` command line: thin wrappers over the library.

Each group of sub-commands lives in ``wattwise/commands/<name>.py`` and exposes
``register(app)``. ``main()`` maps errors to exit codes: 0 ok, 2 bad input (``BadInput``: the
message names the bad value and what is accepted, no traceback), 1 anything else.
"""

from __future__ import annotations

import importlib
import sys

import typer

from wattwise import __version__
from wattwise._safe_text import printable
from wattwise.errors import BadInput, WattwiseError

COMMAND_MODULES = (
    "devices",  # wattwise devices
    "replay",  # wattwise replay
    "runs",  # wattwise runs / run
    "money",  # wattwise carbon / config / hardware
    "estimate",  # wattwise estimate
    "report",  # wattwise report
    "demo",  # wattwise demo
)


def _click_errors() -> tuple[type[Exception], ...]:
    """ClickException of click and of the click copy that newer typer releases ship."""
    import click

    errors: list[type[Exception]] = [click.ClickException]
    try:
        from typer._click.exceptions import ClickException as TyperClickException
    except ImportError:  # typer built on click itself
        pass
    else:
        errors.append(TyperClickException)
    return tuple(errors)


_CLICK_ERRORS = _click_errors()

app = typer.Typer(
    name="wattwise",
    help="Energy, money and carbon of deep-learning training: measure, compare, predict.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"wattwise {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """wattwise: energy, money and carbon accounting for deep-learning training."""


for _name in COMMAND_MODULES:
    _module = importlib.import_module(f"wattwise.commands.{_name}")
    _module.register(app)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``wattwise`` console script; returns the exit code."""
    try:
        # standalone_mode=False: click returns a command's typer.Exit code instead of exiting
        rc = app(args=argv, standalone_mode=False)
    except BadInput as err:  # messages may quote a hostile label: shown escaped
        typer.echo(printable(f"wattwise: error: {err}"), err=True)
        return 2
    except WattwiseError as err:
        typer.echo(printable(f"wattwise: error: {err}"), err=True)
        return 1
    except typer.Exit as err:
        return err.exit_code
    except typer.Abort:
        typer.echo("Aborted.", err=True)
        return 1
    except _CLICK_ERRORS as err:  # usage errors (bad flag values) carry exit code 2
        _name_the_value(err, sys.argv[1:] if argv is None else argv)
        err.show()
        return err.exit_code
    return rc if isinstance(rc, int) else 0


def _name_the_value(err: Exception, argv: list[str]) -> None:
    """Add the value given to a flag that failed to parse, where typer's message leaves it out
    ("Invalid value for '--epochs': Input should be a valid integer"): the house rule is that
    a refusal names the bad value."""
    opts = getattr(getattr(err, "param", None), "opts", None) or ()
    message = getattr(err, "message", None)
    if not isinstance(message, str):
        return
    given = None
    for i, token in enumerate(argv):
        for opt in (o for o in opts if o.startswith("-")):
            if token == opt and i + 1 < len(argv):
                given = argv[i + 1]
            elif token.startswith(f"{opt}="):
                given = token[len(opt) + 1 :]
    if given is not None and repr(given) not in message:
        err.message = f"{message} (got {given!r})"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
