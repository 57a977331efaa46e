"""The TOML configuration of a run, mapped onto small dataclasses.

``tomllib`` parses; this module validates: an unknown key, a wrong type or an unknown
name stops with one :class:`~hpmodel.kernel.errors.ConfigError` naming the key and what is
allowed. Each component's own options live in its own dataclass (models, strategies);
the ``[strategy]`` table is checked against the named strategy's ``Config``.

Example::

    cfg = load_config("examples/digits.toml", overrides=["train.epochs=3"])
    cfg.train.epochs  # 3
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpmodel.kernel.errors import ConfigError
from hpmodel.kernel.schema import build_dataclass, make_config, read_toml
from hpmodel.models.tasks import TASKS
from hpmodel.parameter_server.config import NAMES as PARAMETER_SERVER_NAMES
from hpmodel.parameter_server.config import ParameterServerConfig
from hpmodel.strategies.registry import available_strategies, registered_names, strategy_class


@dataclass
class DataConfig:
    """Where the examples come from and how they are batched."""

    name: str = "digits"  # digits | synthetic | npz | shards: where the examples come from
    path: str = ""  # .npz file for name = "npz"
    shards: str = ""  # glob or fsspec URL of toolkit shards
    test_shards: str = ""  # shards of the test split; "" = hold out test_fraction of data.shards
    batch_size: int = 64  # per replica, unless train.hold_global_batch
    val_fraction: float = 0.1  # share of the training split held out for validation
    test_fraction: float = 0.2  # share of the examples kept for the test split
    num_examples: int = 4096  # synthetic only: examples to generate
    shape: list = field(default_factory=lambda: [64])  # synthetic example shape
    num_classes: int = 10  # synthetic and shards: number of classes (labels are not scanned)
    noise: float = 0.5  # synthetic only: class-overlap noise
    drop_remainder: bool = False  # drop the last training batch of an epoch when it is short


@dataclass
class ModelConfig:
    """Which model, and its size. Keys that a model does not use are ignored by it."""

    name: str = "cnn"  # mlp | cnn | cnn1d | transformer: the reference model (docs/models.md)
    target: str = ""  # "package.module:function", called with (input_shape, num_classes, **options)
    width: int = 64  # hidden units (mlp), channels (cnn), model dim (transformer)
    depth: int = 2  # hidden layers / conv blocks / encoder layers; 0: a linear model
    heads: int = 4  # transformer attention heads
    dropout: float = 0.0  # dropout probability after each block
    options: dict = field(default_factory=dict)  # passed to model.target; reference models read channels_last


@dataclass
class OptimizerConfig:
    name: str = "adamw"  # sgd | adamw: the torch.optim optimizer
    lr: float = 3e-3  # peak learning rate
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0  # weight decay (decoupled for adamw, L2 for sgd)
    nesterov: bool = False  # sgd only: Nesterov momentum


@dataclass
class ScheduleConfig:
    name: str = "constant"  # constant | cosine: learning-rate shape after warm-up
    warmup_steps: int = 0  # optimizer steps of linear warm-up from 0
    min_lr_ratio: float = 0.0  # cosine: final learning rate as a share of optimizer.lr


@dataclass
class TrainConfig:
    epochs: int = 10  # passes over the training split
    max_steps: int = 0  # stop after this many optimizer steps; 0: no limit
    precision: str = "fp32"  # fp32 | bf16 | fp16: autocast dtype (fp16 adds a grad scaler)
    grad_accum: int = 1  # batches per optimizer step (gradient accumulation)
    clip_grad_norm: float = 0.0  # clip the gradient norm to this; 0: off
    early_stopping_patience: int = 0  # epochs without a better val_loss before stopping; 0: off
    log_every_steps: int = 10  # optimizer steps between step metrics (loss, examples/s) in logs and progress
    recompute: str = "none"  # none | all | every-2 | every-k: blocks recomputed in backward
    offload_activations: bool = False  # keep saved activations in host memory (save_on_cpu)
    inject_kill: list = field(default_factory=list)  # [rank, step]: SIGKILL once (chaos testing)
    progress: bool = True  # a progress bar on a terminal, a plain line every 10 s otherwise
    hold_global_batch: bool = False  # true: data.batch_size is the global batch, split over replicas
    task: str = "classification"  # classification | causal-lm | regression: the loss and the metrics
    compile: bool = False  # torch.compile the whole step: forward, loss, sums (a backend name: Trainer only)
    # reduce-overhead and max-autotune replay the step as CUDA graphs: a replay overwrites
    # the last one's outputs (the Trainer keeps none past the next call), and the next
    # micro-batch's replay overwrites the .grad it accumulates into (torch 2.11 raises;
    # pytorch/pytorch#169545), so they need grad_accum = 1 (see train/compiling.py).
    compile_mode: str = "default"  # torch.compile's mode (with train.compile); CUDA-graph modes need grad_accum = 1


@dataclass
class BackupConfig:
    dir: str = ""  # where backups go; empty: no backups
    every_steps: int = 0  # back up every this many optimizer steps; 0: off
    every_epoch: bool = True  # back up at the end of each epoch
    keep: bool = False  # keep the backup after the run finishes
    asynchronous: bool = False  # write model + optimizer in a background thread (dcp.async_save)
    fresh_if_corrupt: bool = False  # start from scratch when every backup is corrupt (else stop)


@dataclass
class RunConfig:
    """A whole run: the TOML file's top level."""

    seed: int = 0  # seeds data splits, shuffling and initialisation
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    backup: BackupConfig = field(default_factory=BackupConfig)
    strategy: StrategyChoice = field(default_factory=lambda: strategy_choice({}))

    def to_dict(self) -> dict[str, Any]:
        """Plain tables, as in the TOML file (``[strategy]`` flat: name plus its options)."""
        tables = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
               for k, v in tables.items()}
        out["strategy"] = self.strategy.table()
        return out


@dataclass
class StrategyChoice:
    """The ``[strategy]`` table: a registered name and that strategy's own typed ``Config``.

    Example::

        choice = strategy_choice({"name": "mirrored", "devices": 2})
        choice.options.devices  # 2
    """

    name: str
    options: Any  # the named strategy's Config dataclass (or the parameter server's)

    @property
    def is_parameter_server(self) -> bool:
        return self.name in PARAMETER_SERVER_NAMES

    def table(self) -> dict[str, Any]:
        return {"name": self.name, **dataclasses.asdict(self.options)}


def strategy_names() -> list[str]:
    """Every name ``strategy.name`` accepts: the registered strategies and the parameter server."""
    return available_strategies() + [PARAMETER_SERVER_NAMES[0]]


def strategy_choice(table: dict[str, Any]) -> StrategyChoice:
    """Validate a ``[strategy]`` table against the named strategy's ``Config``."""
    if not isinstance(table, dict):
        raise ConfigError(f"'strategy' must be a table, not {type(table).__name__}")
    options = dict(table)
    name = options.pop("name", "one-device")
    if not isinstance(name, str):
        raise ConfigError("strategy.name must be a string")
    if name in PARAMETER_SERVER_NAMES:
        return StrategyChoice(name, make_config(ParameterServerConfig, options, name))
    if name not in strategy_names_with_aliases():
        raise ConfigError(f"strategy '{name}' is unknown: registered strategies are "
                          f"{', '.join(strategy_names())}")
    cls = strategy_class(name)
    return StrategyChoice(name, make_config(cls.Config, options, cls.names[0]))


def strategy_names_with_aliases() -> set[str]:
    return set(registered_names()) | set(PARAMETER_SERVER_NAMES)


CHOICES = {
    "data.name": ("digits", "synthetic", "npz", "shards"),
    "model.name": ("mlp", "cnn", "cnn1d", "transformer", "gpt"),
    "optimizer.name": ("sgd", "adamw"),
    "schedule.name": ("constant", "cosine"),
    "train.precision": ("fp32", "bf16", "fp16"),
    "train.task": tuple(TASKS),
    "train.compile_mode": ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
}


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a TOML file (or the defaults when ``path`` is None) and apply ``key=value`` overrides."""
    return config_from_dict(read_toml(path, overrides))


def load_run_config(path: str | Path, trust_model_target: bool = False) -> RunConfig:
    """The ``config.toml`` of a run directory, for evaluate / compress / distill.

    A ``model.target`` there names code that building the model would import and run, and
    a run directory may come from anyone, so it is refused unless ``trust_model_target``
    (``--trust-model-target``), like Hugging Face's ``trust_remote_code``; hpmodel's own
    modules (``hpmodel.…:builder``) need no opt-in.

    Example::

        cfg = load_run_config("runs/digits/config.toml")
        cfg = load_run_config("runs/mine/config.toml", trust_model_target=True)  # my own model code
    """
    cfg = load_config(path)
    # hpmodel's own model builders (e.g. hpmodel.compress.mobilenet) are not foreign code.
    own = cfg.model.target.partition(":")[0].startswith("hpmodel.")
    if cfg.model.target and not (trust_model_target or own):
        raise ConfigError(f"'{path}' sets model.target = '{cfg.model.target}', code that building its "
                          "model would import and run: pass --trust-model-target "
                          "(trust_model_target=True) only if you trust this run directory")
    return cfg


def config_from_dict(raw: dict) -> RunConfig:
    """Validate a parsed TOML document into a :class:`RunConfig`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a table, not {type(raw).__name__}")
    raw = dict(raw)
    table = raw.pop("strategy", {})
    cfg = build_dataclass(RunConfig, raw, prefix="")
    cfg.strategy = strategy_choice(table)
    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if key == "model.name" and cfg.model.target:
            continue
        if value not in allowed:
            raise ConfigError(f"{key} = '{value}' is unknown: allowed values are {', '.join(allowed)}")
    _check_ranges(cfg)
    return cfg


def _check_ranges(cfg: RunConfig) -> None:
    """Every numeric key inside its range: one ConfigError naming the key, the rule and the fix."""
    for key, ok, rule in _range_rules(cfg):
        value = _value(cfg, key)
        if not ok(value):
            raise ConfigError(f"{key} = {value!r} {rule}: fix it in the config or with --set {key}=VALUE")
    if cfg.train.epochs < 1 and cfg.train.max_steps < 1:
        raise ConfigError("train.epochs = 0 and train.max_steps = 0 train nothing: set train.epochs "
                          "to at least 1 (or set train.max_steps)")
    _check_data_shape(cfg.data)
    _check_compile_mode(cfg.train)
    _check_inject_kill(cfg.train.inject_kill)
    uses_heads = cfg.model.name in ("transformer", "gpt") and not cfg.model.target
    if uses_heads and cfg.model.width % cfg.model.heads:
        raise ConfigError(f"model.width = {cfg.model.width} is not divisible by model.heads = "
                          f"{cfg.model.heads}: choose heads that divide the width (e.g. model.heads = "
                          f"{_divisor_near(cfg.model.width, cfg.model.heads)})")


def _finite(low: float, high: float = math.inf, low_open: bool = False, high_open: bool = False):
    """A predicate: ``value`` is a finite number in the interval (ends open or closed)."""
    def ok(value) -> bool:
        if not math.isfinite(value):
            return False
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        return above and below
    return ok


def _range_rules(cfg: RunConfig) -> list[tuple[str, Any, str]]:
    at_least = {0: _finite(0), 1: _finite(1)}
    rules = [
        ("seed", at_least[0], "must be 0 or more"),
        ("data.batch_size", at_least[1], "must be at least 1"),
        ("data.val_fraction", _finite(0, 1, high_open=True), "must be in [0, 1)"),
        ("data.test_fraction", _finite(0, 1, low_open=True, high_open=True), "must be in (0, 1)"),
        ("data.noise", at_least[0], "must be a finite number, 0 or more"),
        ("model.width", at_least[1], "must be at least 1"),
        ("model.depth", at_least[0], "must be 0 (a linear model) or more"),
        ("model.heads", at_least[1], "must be at least 1"),
        ("model.dropout", _finite(0, 1, high_open=True), "must be a probability in [0, 1)"),
        ("optimizer.lr", _finite(0, low_open=True), "must be a positive finite number (e.g. 3e-3)"),
        ("optimizer.weight_decay", at_least[0], "must be a finite number, 0 (off) or more"),
        ("optimizer.momentum", _finite(0, 1, high_open=True), "must be in [0, 1) (e.g. 0.9)"),
        ("schedule.warmup_steps", at_least[0], "must be 0 (no warm-up) or more"),
        ("schedule.min_lr_ratio", _finite(0, 1), "must be a share of optimizer.lr in [0, 1]"),
        ("train.epochs", at_least[0], "must be 0 or more"),
        ("train.max_steps", at_least[0], "must be 0 (no limit) or more"),
        ("train.grad_accum", at_least[1], "must be at least 1"),
        ("train.clip_grad_norm", at_least[0], "must be 0 (off) or a positive finite norm (e.g. 1.0)"),
        ("train.early_stopping_patience", at_least[0], "must be 0 (off) or more epochs"),
        ("train.log_every_steps", at_least[1], "must be at least 1 step"),
        ("backup.every_steps", at_least[0], "must be 0 (off) or more steps"),
    ]
    if cfg.data.name == "synthetic":
        rules.append(("data.num_examples", at_least[1], "must be at least 1 example"))
    if cfg.data.name in ("synthetic", "shards"):
        rules.append(("data.num_classes", _finite(2), "must be at least 2 classes"))
    return rules


def _value(cfg: RunConfig, key: str) -> Any:
    value: Any = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _check_data_shape(data: DataConfig) -> None:
    if data.name != "synthetic":
        return  # the shape of other sources comes from their files
    ok = bool(data.shape) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 1
                                  for d in data.shape)
    if not ok:
        raise ConfigError(f"data.shape = {data.shape!r} must be a non-empty list of positive "
                          "integers: e.g. data.shape = [64] or [1, 8, 8]")


def _check_compile_mode(train: TrainConfig) -> None:
    """Refused by the Trainer too (train/compiling.py); here before any work starts."""
    if train.compile and train.compile_mode in ("reduce-overhead", "max-autotune") and train.grad_accum > 1:
        raise ConfigError(f"train.compile_mode = '{train.compile_mode}' replays CUDA graphs, which "
                          f"cannot accumulate gradients (train.grad_accum = {train.grad_accum}): use "
                          "compile_mode 'max-autotune-no-cudagraphs' or 'default', or grad_accum = 1")


def _check_inject_kill(value: list) -> None:
    if not value:
        return
    ints = [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    if len(value) != 2 or len(ints) != 2 or ints[0] < 0 or ints[1] < 1:
        raise ConfigError(f"train.inject_kill = {value!r} must be [rank, step] (two integers, rank 0 "
                          "or more, step 1 or more) or [] (off): e.g. train.inject_kill = [1, 5]")


def _divisor_near(width: int, heads: int) -> int:
    """The divisor of ``width`` closest to ``heads`` (a suggestion for the message)."""
    return min((d for d in range(1, width + 1) if width % d == 0), key=lambda d: (abs(d - heads), d))
