"""Sub-command modules of the ``wattwise`` CLI; each exposes ``register(app)``."""

from __future__ import annotations

import json
from typing import Any

import typer


def print_json(value: Any) -> None:
    """What every ``--json`` option prints: ``value`` as indented JSON on stdout."""
    typer.echo(json.dumps(value, indent=2, default=str))
