"""`wattwise devices`: the sensors found on this machine and the method each uses."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from wattwise._safe_text import literal, printable
from wattwise.commands import console, make_table, print_json, print_table
from wattwise.types import FLAGS, DeviceInfo


def device_json(info: DeviceInfo) -> dict[str, Any]:
    return {
        "kind": info.kind,
        "name": info.name,
        "method": info.method,
        "device_id": info.device_id,
        "uuid": info.uuid,
        "index": info.index,
        "update_period_s": info.update_period_s,
        "flags": sorted(info.flags),
        "details": info.details,
    }


def _show(devices: list[DeviceInfo], notes: list[str]) -> None:
    table = make_table(title="Devices wattwise measures")
    table.add_column("kind", no_wrap=True)
    table.add_column("name", min_width=12)
    table.add_column("method", no_wrap=True)
    table.add_column("id", overflow="fold")
    table.add_column("flags", min_width=9)
    for d in devices:
        table.add_row(d.kind, d.name, d.method, d.device_id, ", ".join(sorted(d.flags)))
    out = console()
    if devices:
        print_table(out, table)
    else:
        out.print("No device can be measured here.")
    for note in notes:
        out.print(literal(f"- {note}"))
    flags = sorted({flag for d in devices for flag in d.flags})
    for flag in flags:
        out.print(literal(f"flag {flag}: {FLAGS.get(flag, '')}"))


def register(app: typer.Typer) -> None:
    """Add `wattwise devices` to the app."""

    @app.command("devices")
    def devices_command(
        cpu_mode: Annotated[
            str,
            typer.Option(
                "--cpu-mode", help="CPU/RAM estimates for the whole machine or this process tree."
            ),
        ] = "machine",
        as_json: Annotated[
            bool, typer.Option("--json", help="Print a JSON list of devices (notes on stderr).")
        ] = False,
    ) -> None:
        """Show the sensors found here and the method each uses (counter, power, rapl, estimate)."""
        from wattwise.sensors.discovery import discover

        found = discover(cpu_mode=cpu_mode)
        found.close()
        if as_json:
            print_json([device_json(d) for d in found.devices])
            for note in found.notes:
                typer.echo(printable(note), err=True)
        else:
            _show(found.devices, found.notes)
