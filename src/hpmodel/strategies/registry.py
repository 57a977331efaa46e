"""The name → strategy registry: the only place that knows strategy names."""

from __future__ import annotations

from typing import Any

from hpmodel.kernel.errors import ConfigError
from hpmodel.parameter_server.config import NAMES as PARAMETER_SERVER_NAMES

_REGISTRY: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: make ``cls`` reachable under each of its ``names``."""
    for name in cls.names:
        _REGISTRY[name] = cls
    return cls


def strategy_class(name: str) -> type:
    if name in PARAMETER_SERVER_NAMES:
        raise ConfigError(f"strategy '{name}' is the parameter server, its own runner rather "
                          "than a Strategy: set strategy.name = 'parameter-server' in a config "
                          "and run 'hpmodel train' (or hpmodel.runs.train.train_from_config)")
    if name not in _REGISTRY:
        raise ConfigError(f"strategy '{name}' is unknown: registered strategies are "
                          f"{', '.join(available_strategies())}")
    return _REGISTRY[name]


def available_strategies() -> list[str]:
    """Primary names of the registered strategies."""
    return sorted({cls.names[0] for cls in _REGISTRY.values()})


def get_strategy(name: str = "one-device", **options: Any):
    """Build a strategy by name.

    Example::

        strategy = get_strategy("mirrored", devices=2)
    """
    return strategy_class(name)(**options)


def registered_names() -> list[str]:
    """Every registered name, aliases included."""
    return sorted(_REGISTRY)
