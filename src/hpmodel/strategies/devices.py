"""Device names → torch devices, with clear errors for devices that do not exist."""

from __future__ import annotations

import torch

from hpmodel.kernel.errors import HpmodelError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → the first GPU if there is one, else the CPU; ``cuda:N`` is checked to exist."""
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise HpmodelError(f"device '{name}' is not a device name: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = device.index or 0
        if index >= count:
            raise HpmodelError(f"device '{name}' does not exist: this machine has {count} CUDA "
                               f"device(s); use strategy.device = 'cpu' or a smaller index")
        return torch.device("cuda", index)
    if device.type != "cpu":
        raise HpmodelError(f"device '{name}' is not supported: use auto, cpu, cuda or cuda:N")
    return device


def accelerator_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0
