"""Schema checks for small config dataclasses, and TOML in and out.

``tomllib`` parses; this module validates a parsed table against a dataclass: an unknown
key or a wrong type stops with one :class:`~hpmodel.kernel.errors.ConfigError` naming
the key and what is allowed. Every component owns its ``Config`` dataclass; these
functions are how any of them is read from a table.

Example::

    @dataclass
    class Options:
        size: int = 1

    build_dataclass(Options, {"size": 3}, prefix="model.")  # Options(size=3)
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from pathlib import Path
from typing import Any

from hpmodel.kernel.errors import ConfigError


def read_toml(path: str | Path | None, overrides: list[str] | None = None) -> dict[str, Any]:
    """The parsed TOML document at ``path`` (empty when None) with ``key=value`` overrides applied."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file '{path}' does not exist: give the path of a TOML file")
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"config file '{path}' is not valid TOML: {error}") from None
    for item in overrides or []:
        apply_override(raw, item)
    return raw


def apply_override(raw: dict, item: str) -> None:
    """Set ``raw[a][b] = value`` for ``item = "a.b=value"``; the value is parsed as TOML."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set '{item}' is not KEY=VALUE: write e.g. --set train.epochs=3")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text  # a bare word: treat as a string
    *parents, leaf = key.strip().split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set '{item}': '{part}' is not a table")
    node[leaf] = value


def build_dataclass(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"'{prefix.rstrip('.')}' must be a table, not {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key '{prefix}{unknown[0]}': allowed keys are {', '.join(sorted(fields))}"
        )
    values = {}
    for name, value in raw.items():
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            values[name] = build_dataclass(kind, value, prefix=f"{prefix}{name}.")
        else:
            values[name] = check_type(f"{prefix}{name}", value, kind)
    return cls(**values)


def check_type(key: str, value: Any, kind: Any) -> Any:
    """Return ``value`` converted to ``kind`` (int → float allowed), or raise a ConfigError."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    expected = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
                list: "a list", dict: "a table"}.get(kind)
    if expected is None:
        return value
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if not ok:
        raise ConfigError(f"{key} = {value!r} has the wrong type: it must be {expected}")
    return value


def to_toml(cfg: Any) -> str:
    """Write a config dataclass back as TOML (scalars, lists and nested tables)."""
    data = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg
    top = {k: v for k, v in data.items() if not isinstance(v, dict)}
    lines = [f"{k} = {toml_value(v)}" for k, v in top.items()]
    for section, table in data.items():
        if isinstance(table, dict):
            lines += _toml_table(section, table)
    return "\n".join(lines) + "\n"


def _toml_table(name: str, table: dict) -> list[str]:
    lines = ["", f"[{name}]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in table.items() if not isinstance(v, dict)]
    for key, sub in table.items():
        if isinstance(sub, dict):
            lines += _toml_table(f"{name}.{key}", sub)
    return lines


def toml_value(value: Any) -> str:
    """``value`` as a TOML literal: booleans, numbers, strings (escaped), arrays, inline
    tables; TypeError for anything TOML cannot hold (None, objects).

    Example::

        toml_value({"seq_len": 32, "name": "a\\b"})  # '{seq_len = 32, name = "a\\\\b"}'
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def make_config(cls: type, options: dict[str, Any], owner: str, section: str = "strategy") -> Any:
    """Validate ``options`` against the dataclass ``cls`` (keys, types, then ``validate()``).

    ``owner`` names what the options belong to in messages ("strategy 'mirrored'").

    Example::

        make_config(Mirrored.Config, {"devices": 2}, "mirrored").devices  # 2
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in options:
        if key not in fields:
            allowed = ", ".join(sorted(fields)) or "none"
            raise ConfigError(f"unknown key '{section}.{key}' for {section} '{owner}': "
                              f"allowed keys are {allowed}")
    hints = typing.get_type_hints(cls)
    checked = {k: check_type(f"{section}.{k}", v, hints[k]) for k, v in options.items()}
    config = cls(**checked)
    validate = getattr(config, "validate", None)
    if callable(validate):
        validate()
    return config
