"""Sub-command modules of the ``wattwise`` CLI; each exposes ``register(app)``.

Every command prints through :func:`console` and every table through :func:`print_table`, so
that no output is ever cut: piped into another program (stdout not a terminal, no ``COLUMNS``)
nothing is wrapped at all; in a terminal too narrow for a table its text columns wrap at word
boundaries (identifiers, numbers and method names stay whole), and when even that cannot fit,
each row is printed as a block of ``column value`` lines instead (like psql's expanded display).

Labels reach the terminal literally: tables come from :func:`make_table`, whose plain-string
cells, title and caption are shown with control characters escaped and never read as rich markup
(``wattwise._safe_text.literal``); a cell meant to be styled is built as a rich ``Text`` by the
command. Other lines pass their labels through ``literal`` (rich) or ``printable`` (plain echo).
``--json`` output is exact JSON (``json.dumps`` escapes control characters itself).
"""

from __future__ import annotations

import functools
import json
import os
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console
    from rich.table import Table

# the width of a console that never wraps (output piped into another program)
UNLIMITED_WIDTH = 1_000_000
# a folding column (overflow="fold": long words break anywhere, losing nothing) is never
# squeezed narrower than this
FOLD_MIN_WIDTH = 10


def print_json(value: Any) -> None:
    """What every ``--json`` option prints: ``value`` as indented JSON on stdout."""
    typer.echo(json.dumps(value, indent=2, default=str))


def console() -> Console:
    """The rich console of a command (stdout): the terminal's width on a terminal (or ``COLUMNS``
    when set), else no width limit, so that piped output is never wrapped, cut or ellipsised."""
    from rich.console import Console

    found = Console()
    if found.is_terminal or os.environ.get("COLUMNS", "").strip().isdigit():
        return found
    return Console(width=UNLIMITED_WIDTH)


def make_table(*, title: str | None = None, caption: str | None = None, **options: Any) -> Table:
    """A rich ``Table`` (``options`` as rich takes them) that shows labels literally: every
    plain-string cell, the title and the caption, with control characters escaped and no
    markup read from them. :func:`print_table` prints only these."""
    from wattwise._safe_text import literal

    return _literal_table_class()(
        title=None if title is None else literal(title, "table.title"),
        caption=None if caption is None else literal(caption, "table.caption"),
        **options,
    )


@functools.cache
def _literal_table_class() -> type[Table]:
    from rich.table import Table

    from wattwise._safe_text import literal

    class LiteralTable(Table):
        """A Table whose ``add_row`` turns each ``str`` cell into ``literal(cell)``."""

        def add_row(self, *renderables: Any, **options: Any) -> None:
            cells = (literal(c) if isinstance(c, str) else c for c in renderables)
            super().add_row(*cells, **options)

    return LiteralTable


def print_table(out: Console, table: Table) -> None:
    """Print ``table`` (made by :func:`make_table`) on ``out`` without dropping, cutting or
    ellipsising any cell.

    rich squeezes a table wider than the console by shrinking every column, down to nothing
    (columns vanish, numbers end in '…'). Here instead: a table that fits is printed as it is;
    one that does not gets widths of our own, where each column keeps at least its longest
    word (all of a ``no_wrap`` column's text; a folding column at least its header's longest
    word, ``FOLD_MIN_WIDTH`` or its ``min_width``), the table loses its outer border, and the
    room left goes to the columns that wrap; when even those floors do not fit, the rows are
    printed one block each (see :func:`_print_expanded`).
    """
    from rich.measure import Measurement

    if not isinstance(table, _literal_table_class()):
        raise TypeError("print_table prints tables made by wattwise.commands.make_table()")
    wide = out.options.update_width(UNLIMITED_WIDTH)
    if Measurement.get(out, wide, table).maximum <= out.width:
        out.print(table)
        return
    floors: list[int] = []
    ceilings: list[int] = []
    for column in table.columns:
        sizes = [Measurement.get(out, wide, cell) for cell in (column.header, *column.cells)]
        ceiling = max(1, *(size.maximum for size in sizes))
        floor = ceiling if column.no_wrap else max(1, *(size.minimum for size in sizes))
        if column.overflow == "fold" and not column.no_wrap:
            header = Measurement.get(out, wide, column.header).minimum
            floor = min(floor, max(header, FOLD_MIN_WIDTH))
        floor = min(max(floor, column.min_width or 0), ceiling)
        floors.append(floor)
        ceilings.append(ceiling)
    table.show_edge = table.pad_edge = False  # two cells more for the columns on each side
    widths = list(floors)
    for column, width in zip(table.columns, widths, strict=True):
        column.width = width
    spare = out.width - Measurement.get(out, wide, table).maximum
    if spare < 0:
        _print_expanded(out, table)
        return

    # first make whole the columns that need least to be whole (a header of two short words),
    # then widen the rest one cell at a time, the one that lacks the most first
    def lacks() -> list[tuple[int, int]]:
        return [(ceilings[i] - widths[i], i) for i in range(len(widths))]

    for lack, index in sorted(lacks()):
        if 0 < lack <= spare:
            widths[index] += lack
            spare -= lack
    for _ in range(spare):
        lack, index = max(lacks())
        if lack <= 0:
            break
        widths[index] += 1
    for column, width in zip(table.columns, widths, strict=True):
        column.width = width
    out.print(table)


def _print_expanded(out: Console, table: Table) -> None:
    """Each row of ``table`` as a block of ``header  value`` lines, a blank line between rows:
    the layout for a terminal too narrow for the table's columns side by side."""
    from rich.table import Table

    if table.title:
        out.print(table.title, style="table.title", highlight=False)
    cells = [list(column.cells) for column in table.columns]
    for row in range(table.row_count):
        block = Table.grid(padding=(0, 2))
        block.add_column(style="bold", overflow="fold")
        block.add_column(overflow="fold")
        for column, column_cells in zip(table.columns, cells, strict=True):
            block.add_row(column.header, column_cells[row])
        if row:
            out.print()
        out.print(block)
    if table.caption:
        out.print(table.caption, style="table.caption", highlight=False)
