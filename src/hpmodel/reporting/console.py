"""Summary tables printed at the end of long work (``rich`` draws them)."""

from __future__ import annotations

from typing import Any
from rich.console import Console
from rich.table import Table


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def print_summary(summary: dict[str, Any], title: str = "summary") -> None:
    """Print the scalar entries of ``summary`` as a two-column table."""

    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            table.add_row(key, format_value(value))
    Console().print(table)


def print_rows(rows: list[dict[str, Any]], title: str) -> None:
    """Print a list of records as a table with one column per key."""

    if not rows:
        return
    table = Table(title=title, header_style="bold")
    columns = list(dict.fromkeys(k for row in rows for k in row))
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*(format_value(row.get(c, "")) for c in columns))
    Console().print(table)
