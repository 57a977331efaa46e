"""A config dataclass as a table of keys: name, type, default, allowed values, meaning.

``dataclasses`` and ``typing`` give the names, types and defaults; the meaning of a key
is its field's ``metadata["help"]`` or, by the convention every ``Config`` in hpmodel
follows, the comment at the end of its declaration line, read with ``tokenize`` from the
class's own source. A comment may start with the allowed values, ``a | b | c: meaning``;
values given explicitly (``config.CHOICES``, a registry) win over the comment's.

Example::

    @dataclass
    class Options:
        mode: str = "fast"  # fast | exact: how hard to try

    [key.row() for key in describe_dataclass(Options, prefix="opt.")]
    # [['opt.mode', 'str', '"fast"', 'fast, exact', 'how hard to try']]
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import re
import textwrap
import tokenize
import typing
from dataclasses import dataclass
from typing import Any

from hpmodel.kernel.schema import toml_value

HEADERS = ("key", "type", "default", "allowed", "meaning")
_CHOICE = r"[\w.\"'-]+(?: \([^)]*\))?"  # a value, maybe with a note: "time (profiled fwd+bwd)"
_CHOICES = re.compile(rf"^({_CHOICE}(?: \| {_CHOICE})+)(?::\s*(.*))?$")


@dataclass
class KeyDoc:
    """One documented key of a config dataclass."""

    key: str
    type: str
    default: str
    allowed: tuple[str, ...]
    meaning: str

    def row(self) -> list[str]:
        return [self.key, self.type, self.default, ", ".join(self.allowed), self.meaning]


def describe_dataclass(cls: type, prefix: str = "", choices: dict[str, Any] | None = None,
                       help_text: dict[str, str] | None = None) -> list[KeyDoc]:
    """Every scalar field of ``cls`` (nested dataclasses are skipped) as a :class:`KeyDoc`.

    ``choices`` and ``help_text`` map a full key (``prefix + name``) to its allowed values
    and meaning where the class itself says none. Example::

        describe_dataclass(TrainConfig, "train.", {"train.precision": ("fp32", "bf16")})
    """
    choices, help_text = choices or {}, help_text or {}
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    docs = []
    for item in dataclasses.fields(cls):
        kind = hints[item.name]
        if dataclasses.is_dataclass(kind):
            continue
        key = prefix + item.name
        comment = item.metadata.get("help") or comments.get(item.name, "")
        allowed, meaning = split_comment(comment)
        if key in choices:
            allowed = tuple(str(c) for c in choices[key])
        docs.append(KeyDoc(key, getattr(kind, "__name__", str(kind)), default_text(item),
                           allowed, meaning or help_text.get(key, "")))
    return docs


def split_comment(comment: str) -> tuple[tuple[str, ...], str]:
    """``"a | b: meaning"`` → ``(("a", "b"), "meaning")``; a plain comment has no values."""
    comment = comment.strip()
    match = _CHOICES.match(comment)
    if not match:
        return (), comment
    values = tuple(part.split(" (")[0] for part in match.group(1).split(" | "))
    return values, (match.group(2) or "").strip()


def field_comments(cls: type) -> dict[str, str]:
    """The end-of-line comment of each field declaration of ``cls`` and its bases."""
    comments: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        comments.update(_own_comments(klass))
    return comments


def _own_comments(klass: type) -> dict[str, str]:
    try:
        source = textwrap.dedent(inspect.getsource(klass))
    except (OSError, TypeError):
        return {}
    by_line = {token.start[0]: token.string.lstrip("#").strip()
               for token in tokenize.generate_tokens(io.StringIO(source).readline)
               if token.type == tokenize.COMMENT}
    body = ast.parse(source).body[0].body  # the class's own statements, not its methods'
    return {node.target.id: by_line[node.end_lineno] for node in body
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
            and node.end_lineno in by_line}


def default_text(item: dataclasses.Field) -> str:
    """The field's default written as in TOML (``"digits"``, ``true``, ``[64]``)."""
    if item.default is not dataclasses.MISSING:
        value = item.default
    elif item.default_factory is not dataclasses.MISSING:
        value = item.default_factory()
    else:
        return "(required)"
    try:
        return toml_value(value)
    except TypeError:  # None or an object: shown as Python writes it
        return repr(value)


def markdown_table(docs: list[KeyDoc]) -> str:
    """The keys as a Markdown table (``|`` in cells escaped)."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    rows = [HEADERS, ("---",) * len(HEADERS)]
    rows += [[f"`{d.key}`", d.type, f"`{d.default}`" if d.default else "",
              ", ".join(f"`{a}`" for a in d.allowed), d.meaning] for d in docs]
    return "\n".join("| " + " | ".join(cell(c) for c in row) + " |" for row in rows) + "\n"


__all__ = ["KeyDoc", "describe_dataclass", "field_comments", "markdown_table", "split_comment"]
