"""A small document model written out twice: Markdown (images as files beside it) and
HTML (images inlined as base64, so the file opens from disk anywhere)."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from hpmodel.reporting.console import format_value
from hpmodel.kernel.files import atomic_write_bytes

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1000px;margin:2em auto;
padding:0 1em;color:#1b1f24;line-height:1.45}
h1{border-bottom:2px solid #3b6ea5;padding-bottom:.2em}h2{margin-top:1.6em;color:#24466b}
table{border-collapse:collapse;margin:.6em 0 1.2em;display:block;overflow-x:auto;max-width:100%}th,td{border:1px solid #c9d1d9;padding:.3em .7em;
text-align:right}th{background:#eef3f8}td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #d0d7de;border-radius:4px;margin:.4em 0}
pre{background:#f6f8fa;padding:.7em;border-radius:4px;overflow-x:auto}
.headline{font-size:1.05em;background:#f1f8e9;border-left:4px solid #7cb342;padding:.4em .8em}
figcaption{color:#57606a;font-size:.9em}
"""


class Report:
    """An ordered list of blocks: headings, text, headlines, tables, images and code."""

    def __init__(self, title: str):
        self.title = title
        self.blocks: list[tuple[str, Any]] = []

    def heading(self, text: str) -> None:
        self.blocks.append(("heading", text))

    def text(self, text: str) -> None:
        self.blocks.append(("text", text))

    def headline(self, text: str) -> None:
        """A one-line result worth seeing first."""
        self.blocks.append(("headline", text))

    def table(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            self.blocks.append(("table", rows))

    def image(self, path: str | Path | None, caption: str = "") -> None:
        if path is not None and Path(path).is_file():
            self.blocks.append(("image", (Path(path), caption)))

    def code(self, text: str) -> None:
        self.blocks.append(("code", text))

    # -- writers ------------------------------------------------------------------------
    def write(self, out_dir: str | Path, name: str = "report") -> tuple[Path, Path]:
        """Write ``name.md`` and ``name.html`` into ``out_dir``; returns both paths."""
        out_dir = Path(out_dir)
        md, page = out_dir / f"{name}.md", out_dir / f"{name}.html"
        atomic_write_bytes(md, self.to_markdown(out_dir).encode())
        atomic_write_bytes(page, self.to_html().encode())
        return md, page

    def to_markdown(self, base: Path) -> str:
        lines = [f"# {self.title}", ""]
        for kind, value in self.blocks:
            if kind == "heading":
                lines += [f"## {value}", ""]
            elif kind == "text":
                lines += [value, ""]
            elif kind == "headline":
                lines += [f"> **{value}**", ""]
            elif kind == "table":
                lines += markdown_table(value) + [""]
            elif kind == "image":
                path, caption = value
                lines += [f"![{caption}]({_relative(path, base)})", ""]
            elif kind == "code":
                lines += ["```", value, "```", ""]
        return "\n".join(lines)

    def to_html(self) -> str:
        parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}"
                 f"</title><style>{STYLE}</style></head><body><h1>{html.escape(self.title)}</h1>"]
        for kind, value in self.blocks:
            if kind == "heading":
                parts.append(f"<h2>{html.escape(value)}</h2>")
            elif kind == "text":
                parts.append(f"<p>{html.escape(value)}</p>")
            elif kind == "headline":
                parts.append(f"<p class='headline'>{html.escape(value)}</p>")
            elif kind == "table":
                parts.append(html_table(value))
            elif kind == "image":
                path, caption = value
                data = base64.b64encode(path.read_bytes()).decode()
                parts.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,"
                             f"{data}'><figcaption>{html.escape(caption)}</figcaption></figure>")
            elif kind == "code":
                parts.append(f"<pre>{html.escape(value)}</pre>")
        parts.append("</body></html>")
        return "\n".join(parts)


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(key for row in rows for key in row))


def markdown_table(rows: list[dict[str, Any]]) -> list[str]:
    columns = _columns(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(format_value(row.get(c, "")) for c in columns) + " |")
    return lines


def html_table(rows: list[dict[str, Any]]) -> str:
    columns = _columns(rows)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(format_value(row.get(c, '')))}</td>"
                                    for c in columns) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path)
