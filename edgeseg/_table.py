"""Tables on the terminal and in logs: one number format per column, never wrapped when piped.

On a terminal rich fits a table to the window. Written to a file or a pipe (CI logs, ``| tee``),
the same table would be squeezed into 80 columns, breaking titles and paths mid-word: there the
console is wide enough for any row, and titles are printed as plain lines above the table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

PIPED_WIDTH = 1000


def console(stderr: bool = False, quiet: bool = False):
    """A rich Console: the terminal's width, or wide enough never to wrap when piped."""
    from rich.console import Console

    c = Console(stderr=stderr, quiet=quiet)
    return c if c.is_terminal else Console(stderr=stderr, quiet=quiet, width=PIPED_WIDTH)


def column_format(values: Sequence[Any]) -> str:
    """One format for a column's floats: fixed 4 decimals when every value reads well so,
    else 3 significant digits in scientific notation for all of them."""
    floats = [abs(v) for v in values if isinstance(v, float) and math.isfinite(v) and v != 0]
    if all(1e-3 <= v < 1e6 for v in floats):
        return ".4f"
    return ".3e"


def cell(value: Any, fmt: str) -> str:
    if isinstance(value, float):
        return f"{value:{fmt}}" if math.isfinite(value) else str(value)
    return "" if value is None else str(value)


def print_table(
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    formats: dict[str, str] | None = None,
    out=None,
) -> None:
    """``rows`` under ``columns`` after a ``title`` line; floats in ``formats[column]`` (a format
    spec such as ``.4f``), or one format chosen per column (:func:`column_format`)."""
    from rich.table import Table

    out = out or console()
    formats = dict(formats or {})
    for k, name in enumerate(columns):
        formats.setdefault(name, column_format([r[k] for r in rows]))
    t = Table(title=None)
    for name in columns:
        t.add_column(name, justify="left" if name == columns[0] else "right", no_wrap=True)
    for r in rows:
        t.add_row(*(cell(v, formats[name]) for name, v in zip(columns, r)))
    out.print(title, soft_wrap=True, markup=False, highlight=False)
    out.print(t)
