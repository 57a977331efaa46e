"""Mixed precision through ``torch.amp``: autocast for bf16/fp16, a GradScaler for fp16."""

from __future__ import annotations

import contextlib

import torch

from hpmodel.kernel.errors import ConfigError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(precision: str, device: torch.device):
    """The forward-pass context for ``precision`` in {fp32, bf16, fp16}."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in DTYPES:
        raise ConfigError(f"train.precision = '{precision}' is unknown: use fp32, bf16 or fp16")
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def grad_scaler(precision: str, device: torch.device):
    """A loss scaler for fp16 (whose small gradients underflow); None otherwise."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type)
