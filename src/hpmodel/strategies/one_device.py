"""OneDevice: everything on one device, in this process. The reference every other
strategy must match numerically."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hpmodel.kernel.errors import ConfigError
from hpmodel.strategies.base import Strategy, build_optimizer
from hpmodel.strategies.devices import resolve_device
from hpmodel.strategies.registry import register


@register
class OneDevice(Strategy):
    """Train on one device (``cpu``, ``cuda``, ``cuda:N`` or ``auto``).

    Example::

        strategy = OneDevice(device="cpu")
        model, optimizer = strategy.setup(model, optimizer)
    """

    names = ("one-device", "onedevice", "default")

    @dataclass
    class Config:
        device: str = "auto"
        devices: int = 1

        def validate(self) -> None:
            if self.devices != 1:
                raise ConfigError(f"strategy 'one-device' uses exactly 1 device, not "
                                  f"{self.devices}: choose strategy 'mirrored' for several")

    def __init__(self, config=None, **options):
        super().__init__(config, **options)
        self._device = resolve_device(self.config.device)

    @property
    def device(self) -> torch.device:
        return self._device

    def setup(self, model: nn.Module, optimizer=None):
        model = model.to(self.device)
        return model, build_optimizer(optimizer, model)
