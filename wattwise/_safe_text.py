"""Text from a ledger, a configuration file or the command line made safe for where it is shown.

Labels (architecture, tags, a stop reason, a region, a host or device name, a metric name...)
are other people's text: a ledger merged from another machine, a trace from a colleague. Two
places would otherwise obey them:

- a spreadsheet opening a CSV file runs a cell that starts with ``=``, ``+``, ``-`` or ``@``
  (``=HYPERLINK(...)``, ``+cmd|' /C calc'!A0``), and a leading tab or carriage return can hide
  one: :func:`csv_cell` prefixes such a cell with a single quote (OWASP's rule for CSV
  injection). Numbers stay numbers: a non-string value is never touched, nor a string that is
  a plain decimal number (``-3.5``, ``+2e-3``), which a spreadsheet reads as that number.
  :func:`csv_column` applies it to a column, and every CSV file wattwise writes goes through it
  (``wattwise.report._data.csv_text``).
- a terminal obeys the control characters in a label (``ESC [ 2 J`` clears the screen, a
  newline splits a table row) and rich obeys the markup in it (``[red]``):
  :func:`printable` shows every control character escaped (``\\x1b``, ``\\n``, ``\\r``,
  ``\\t``, ``\\u202e``), and :func:`literal` makes of that a rich ``Text``, which rich never
  reads markup or emoji codes from. The CLI's tables turn every plain-string cell into one
  (``wattwise.commands.make_table``); other lines pass their labels through these two.

Backslashes are left as they are: a label that holds the four characters ``\\x1b`` prints like
one holding an escape character, which is ambiguous but harmless.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from rich.text import Text

__all__ = ["FORMULA_START", "csv_cell", "csv_column", "literal", "printable"]

FORMULA_START = frozenset("=+-@\t\r")
"""First characters that make a spreadsheet read a cell as a formula (OWASP)."""

_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")

# C0 controls, DEL, C1 controls (category Cc), the line and paragraph separators, and the
# bidirectional formatting characters that reorder what is shown (U+061C, U+200E/F,
# U+202A-E, U+2066-9)
_CONTROL = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def csv_cell(value: Any) -> Any:
    """``value`` as a CSV cell a spreadsheet will not run: a string starting with one of
    :data:`FORMULA_START` gets a leading ``'`` unless it is a plain decimal number; anything
    else (numbers, None, other strings) is returned as it is."""
    if isinstance(value, str) and value[:1] in FORMULA_START and not _PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


def csv_column(values: Iterable[Any]) -> tuple[list[Any], bool]:
    """:func:`csv_cell` of every value (a new list), and whether any string holds a carriage
    return: Python's csv writer does not quote a field for a lone ``\\r`` unless it is in the
    line terminator, and a reader (csv, a spreadsheet) ends the row there, so that the rest of
    the cell, a formula perhaps, becomes a row of its own; the writer must quote it then.

    Each distinct value is looked at once (a column of labels repeats a few values)."""
    out = list(values)
    try:
        distinct = set(out)
    except TypeError:  # an unhashable value: look at each
        distinct = None
    if distinct is not None:
        changed = {v: csv_cell(v) for v in distinct if isinstance(v, str)}
        changed = {v: cell for v, cell in changed.items() if cell is not v}
        if changed:
            out = [changed.get(v, v) for v in out]
        return out, any(isinstance(v, str) and "\r" in v for v in distinct)
    out = [csv_cell(v) for v in out]
    return out, any(isinstance(v, str) and "\r" in v for v in out)


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(value: object) -> str:
    """``str(value)`` with every control character shown escaped (``\\x1b``, ``\\n``): text
    that cannot move the cursor, clear the screen, change colours or start a new line."""
    text = value if isinstance(value, str) else str(value)
    return _CONTROL.sub(_escaped, text)


def literal(value: object, style: str = "") -> Text:
    """:func:`printable` as a rich ``Text``: shown as written, never read as markup (``[red]``)
    or emoji codes (``:smile:``), and not highlighted."""
    from rich.text import Text

    return Text(printable(value), style=style)
