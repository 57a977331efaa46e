"""Optimizers and learning-rate schedules from config (``torch.optim`` does the work)."""

from __future__ import annotations

import functools
import math

import torch

from hpmodel.kernel.errors import ConfigError


def optimizer_factory(config):
    """A picklable ``f(parameters) -> Optimizer`` for an :class:`~hpmodel.config.OptimizerConfig`."""
    if config.name not in ("sgd", "adamw"):
        raise ConfigError(f"optimizer.name = '{config.name}' is unknown: allowed values are sgd, adamw")
    return functools.partial(make_optimizer, config.name, config.lr, config.momentum,
                             config.weight_decay, config.nesterov)


def make_optimizer(name: str, lr: float, momentum: float, weight_decay: float, nesterov: bool,
                   parameters) -> torch.optim.Optimizer:
    parameters = list(parameters)
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay,
                               nesterov=nesterov and momentum > 0)
    # One fused kernel per step on CUDA (torch's fastest AdamW); foreach elsewhere.
    on_cuda = bool(parameters) and all(_is_cuda(p) for p in parameters)
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay, fused=on_cuda or None)


def _is_cuda(parameter) -> bool:
    tensor = parameter["params"][0] if isinstance(parameter, dict) else parameter
    return tensor.is_cuda


def schedule_factory(config):
    """A picklable ``f(optimizer, total_steps) -> LambdaLR`` for a :class:`ScheduleConfig`."""
    if config.name not in ("constant", "cosine"):
        raise ConfigError(f"schedule.name = '{config.name}' is unknown: allowed values are constant, cosine")
    return functools.partial(make_schedule, config.name, config.warmup_steps, config.min_lr_ratio)


def make_schedule(name: str, warmup_steps: int, min_lr_ratio: float, optimizer, total_steps: int):
    factor = functools.partial(lr_factor, name, warmup_steps, min_lr_ratio, max(1, total_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def lr_factor(name: str, warmup_steps: int, min_lr_ratio: float, total_steps: int, step: int) -> float:
    """Linear warm-up over ``warmup_steps``, then constant or cosine decay to ``min_lr_ratio``."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if name == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
