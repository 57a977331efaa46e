"""Summary tables printed at the end of long work, fitted to the terminal (``rich`` draws them).

Column names are never cut: every column is at least as wide as its name, and values wrap
(``overflow="fold"``) instead of ending in "…". A table whose column names alone do not fit
the console becomes rows: one block of ``key  value`` lines per record.

Example::

    print_rows([{"variant": "fp32", "test_accuracy": 0.97}], title="compress")
    print_rows(rows, title="bench", console=Console(width=60))  # as a 60-column terminal
"""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

BORDER = 3  # per column: a rule and one space of padding either side (rich's default box)


def format_value(value: Any) -> str:
    """Numbers as people read them: ``0.9712``, ``12,345``, ``1,234,567``; booleans as TOML does."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:,.4f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def min_widths(rows: list[dict[str, Any]], columns: list[str], whole: tuple[str, ...] = ()) -> list[int]:
    """Each column's narrowest width: its name, or its longest value for ``whole`` columns."""
    return [max(len(c), 4, *(len(format_value(r.get(c, ""))) for r in rows if c in whole))
            for c in columns]


def fits(widths: list[int], width: int) -> bool:
    """Whether columns of these minimum widths fit ``width`` (rich's default box)."""
    return sum(w + BORDER for w in widths) + 1 <= width


def allot(minimum: list[int], natural: list[int], width: int) -> list[int]:
    """Column widths within ``width``: each from its minimum towards its natural width.

    The space left after the minimums goes, one character at a time, to the column
    furthest (relatively) from its natural width, so short columns are never wrapped
    while a long one can be. Example: ``allot([4, 7], [4, 40], 30)`` → ``[4, 19]``.
    """
    widths = list(minimum)
    spare = width - 1 - sum(w + BORDER for w in widths)
    while spare > 0:
        short = [i for i, w in enumerate(widths) if w < natural[i]]
        if not short:
            break
        grow = max(short, key=lambda i: (natural[i] - widths[i]) / natural[i])
        widths[grow] += 1
        spare -= 1
    return widths


def rows_table(rows: list[dict[str, Any]], columns: list[str], title: str) -> Table:
    """The records as rows: ``key  value`` per line, a rule between records."""
    table = Table(title=title, show_header=False, box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("key", style="bold", overflow="fold", min_width=min(max(map(len, columns)), 30))
    table.add_column("value", overflow="fold")
    for index, row in enumerate(rows):
        present = [c for c in columns if c in row]
        for position, column in enumerate(present):
            table.add_row(Text(column), Text(format_value(row[column])),
                          end_section=position == len(present) - 1 and index < len(rows) - 1)
    return table


def wide_table(rows: list[dict[str, Any]], columns: list[str], title: str, justify: str,
               widths: list[int]) -> Table:
    """One column per key, each exactly ``widths`` wide (its name at least); values wrap."""
    table = Table(title=title, header_style="bold")
    for column, width in zip(columns, widths):
        table.add_column(Text(column), justify=justify, overflow="fold", width=width)
    for row in rows:
        table.add_row(*(Text(format_value(row.get(c, ""))) for c in columns))
    return table


def records_table(rows: list[dict[str, Any]], title: str, width: int, justify: str = "right",
                  whole: tuple[str, ...] = ()) -> Table:
    """The table :func:`print_rows` prints at ``width`` columns (wide, or rows when too narrow).

    Values of the ``whole`` columns are never wrapped (they count towards fitting)."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    widths = min_widths(rows, columns, whole)
    if fits(widths, width):
        natural = [max(len(c), *(len(format_value(r.get(c, ""))) for r in rows)) for c in columns]
        return wide_table(rows, columns, title, justify, allot(widths, natural, width))
    return rows_table(rows, columns, title)


def print_summary(summary: dict[str, Any], title: str = "summary", console: Console | None = None) -> None:
    """Print the scalar entries of ``summary`` as a two-column table.

    Example::

        print_summary({"test_accuracy": 0.97, "seconds": 12.5}, title="hpmodel train")
    """
    console = console or Console()
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric", overflow="fold", min_width=len("metric"))
    table.add_column("value", justify="right", overflow="fold", min_width=len("value"))
    for key, value in summary.items():
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            table.add_row(Text(key), Text(format_value(value)))
    console.print(table)


def print_rows(rows: list[dict[str, Any]], title: str, console: Console | None = None,
               justify: str = "right", whole: tuple[str, ...] = ()) -> None:
    """Print a list of records as a table with one column per key (rows when it cannot fit).

    Example::

        print_rows([{"world_size": 2, "examples_per_second": 51234.5}], title="scaling")
    """
    if not rows:
        return
    console = console or Console()
    console.print(records_table(rows, title, console.width, justify, whole))
