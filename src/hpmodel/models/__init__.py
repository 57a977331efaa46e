"""Reference models, each an ``nn.Sequential`` of blocks so that pipeline stages and
activation recomputation can split them at block boundaries.

``build_model(config, input_shape, num_classes)`` builds ``mlp``, ``cnn``, ``cnn1d``,
``transformer`` or ``gpt`` (a causal LM: ``input_shape = (seq_len,)``, ``num_classes`` =
vocabulary size) sized by the config, or calls ``model.target = "pkg.module:function"``
with ``(input_shape, num_classes, **model.options)``. Each reference model carries its
:class:`~hpmodel.models.shapes.InputSpec` as ``model.expected_input``; ``check_input(model,
batch)`` stops a batch of the wrong shape with one line (docs/models.md lists the shapes).

Example::

    model = build_model(ModelConfig(name="mlp", width=128), input_shape=(1, 8, 8), num_classes=10)
"""

from __future__ import annotations

import importlib

from torch import nn

from hpmodel.kernel.errors import ConfigError
from hpmodel.models.convnets import cnn, cnn1d
from hpmodel.models.gpt import GPT, GPTConfig, gpt
from hpmodel.models.mlp import mlp
from hpmodel.models.shapes import InputSpec, ReferenceOptions, check_input, expected_input
from hpmodel.models.transformer import transformer

BUILDERS = {"mlp": mlp, "cnn": cnn, "cnn1d": cnn1d, "transformer": transformer,
            "gpt": gpt}


def build_model(config, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Build the model a :class:`~hpmodel.config.ModelConfig` names."""
    if config.target:
        return _build_target(config, tuple(input_shape), num_classes)
    if config.name not in BUILDERS:
        raise ConfigError(f"model.name = '{config.name}' is unknown: allowed values are "
                          f"{', '.join(BUILDERS)} (or set model.target = 'package.module:function')")
    return BUILDERS[config.name](config, tuple(input_shape), num_classes)


def _build_target(config, input_shape, num_classes) -> nn.Module:
    module_name, sep, attr = config.target.partition(":")
    if not sep:
        raise ConfigError(f"model.target = '{config.target}' must look like 'package.module:function'")
    try:
        builder = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise ConfigError(f"model.target = '{config.target}' cannot be imported ({error}): "
                          "check the module is on PYTHONPATH and names the function") from None
    model = builder(input_shape, num_classes, **config.options)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.target = '{config.target}' returned {type(model).__name__}, "
                          "not a torch.nn.Module")
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (shared ones counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


__all__ = ["BUILDERS", "GPT", "GPTConfig", "InputSpec", "ReferenceOptions", "build_model",
           "check_input", "count_parameters", "expected_input"]
