"""The TOML configuration of a run, mapped onto small dataclasses.

``tomllib`` parses; this module validates: an unknown key, a wrong type or an unknown
name stops with one :class:`~hpmodel.errors.ConfigError` naming the key and what is
allowed. Each component's own options live in its own dataclass (models, strategies);
the ``[strategy]`` table is checked against the named strategy's ``Config``.

Example::

    cfg = load_config("examples/digits.toml", overrides=["train.epochs=3"])
    cfg.train.epochs  # 3
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpmodel.errors import ConfigError


@dataclass
class DataConfig:
    """Where the examples come from and how they are batched."""

    name: str = "digits"  # digits | synthetic | npz | shards
    path: str = ""  # .npz file for name = "npz"
    shards: str = ""  # glob or fsspec URL of toolkit shards
    batch_size: int = 64  # per replica, unless strategy.hold_global_batch
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    num_examples: int = 4096  # synthetic only
    shape: list = field(default_factory=lambda: [64])  # synthetic example shape
    num_classes: int = 10  # synthetic only
    noise: float = 0.5  # synthetic only: class-overlap noise
    drop_remainder: bool = False


@dataclass
class ModelConfig:
    """Which model, and its size. Keys that a model does not use are ignored by it."""

    name: str = "cnn"  # mlp | cnn | cnn1d | transformer
    target: str = ""  # "package.module:function", called with (input_shape, num_classes, **options)
    width: int = 64  # hidden units (mlp), channels (cnn), model dim (transformer)
    depth: int = 2  # hidden layers / conv blocks / encoder layers
    heads: int = 4  # transformer attention heads
    dropout: float = 0.0
    options: dict = field(default_factory=dict)  # passed to model.target


@dataclass
class OptimizerConfig:
    name: str = "adamw"  # sgd | adamw
    lr: float = 3e-3
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0
    nesterov: bool = False


@dataclass
class ScheduleConfig:
    name: str = "constant"  # constant | cosine
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0


@dataclass
class TrainConfig:
    epochs: int = 10
    max_steps: int = 0  # 0: no limit
    precision: str = "fp32"  # fp32 | bf16 | fp16
    grad_accum: int = 1
    clip_grad_norm: float = 0.0  # 0: off
    early_stopping_patience: int = 0  # 0: off
    log_every_steps: int = 10
    recompute: str = "none"  # none | all | every-2 | every-k
    offload_activations: bool = False
    inject_kill: list = field(default_factory=list)  # [rank, step]: SIGKILL once (chaos testing)
    progress: bool = True


@dataclass
class BackupConfig:
    dir: str = ""  # empty: no backups
    every_steps: int = 0
    every_epoch: bool = True
    keep: bool = False
    asynchronous: bool = False  # write model + optimizer in a background thread (dcp.async_save)


@dataclass
class RunConfig:
    """A whole run: the TOML file's top level."""

    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    backup: BackupConfig = field(default_factory=BackupConfig)
    strategy: dict = field(default_factory=lambda: {"name": "one-device"})


CHOICES = {
    "data.name": ("digits", "synthetic", "npz", "shards"),
    "model.name": ("mlp", "cnn", "cnn1d", "transformer"),
    "optimizer.name": ("sgd", "adamw"),
    "schedule.name": ("constant", "cosine"),
    "train.precision": ("fp32", "bf16", "fp16"),
}


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a TOML file (or the defaults when ``path`` is None) and apply ``key=value`` overrides."""
    return config_from_dict(read_toml(path, overrides))


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


def config_from_dict(raw: dict) -> RunConfig:
    """Validate a parsed TOML document into a :class:`RunConfig`."""
    cfg = _build(RunConfig, raw, prefix="")
    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if key == "model.name" and cfg.model.target:
            continue
        if value not in allowed:
            raise ConfigError(f"{key} = '{value}' is unknown: allowed values are {', '.join(allowed)}")
    _check_ranges(cfg)
    from hpmodel.strategies import strategy_config  # validates the [strategy] table

    strategy_config(cfg.strategy)
    return cfg


def _check_ranges(cfg: RunConfig) -> None:
    positive = {
        "data.batch_size": cfg.data.batch_size,
        "train.grad_accum": cfg.train.grad_accum,
        "model.width": cfg.model.width,
        "model.depth": cfg.model.depth,
        "model.heads": cfg.model.heads,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key} = {value} must be at least 1")
    if cfg.optimizer.lr <= 0:
        raise ConfigError(f"optimizer.lr = {cfg.optimizer.lr} must be positive")
    if cfg.train.epochs < 1 and cfg.train.max_steps < 1:
        raise ConfigError("train.epochs must be at least 1 (or set train.max_steps)")
    if not 0 <= cfg.data.val_fraction < 1 or not 0 < cfg.data.test_fraction < 1:
        raise ConfigError("data.val_fraction must be in [0, 1) and data.test_fraction in (0, 1)")


def _build(cls: type, raw: Any, prefix: str) -> Any:
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
            values[name] = _build(kind, value, prefix=f"{prefix}{name}.")
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
    lines = [f"{k} = {_toml_value(v)}" for k, v in top.items()]
    for section, table in data.items():
        if isinstance(table, dict):
            lines += _toml_table(section, table)
    return "\n".join(lines) + "\n"


def _toml_table(name: str, table: dict) -> list[str]:
    lines = ["", f"[{name}]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in table.items() if not isinstance(v, dict)]
    for key, sub in table.items():
        if isinstance(sub, dict):
            lines += _toml_table(f"{name}.{key}", sub)
    return lines


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise TypeError(f"cannot write {type(value).__name__} to TOML")
