"""Mirrored: synchronous data parallelism on one host.

One process per device, started by PyTorch's elastic launcher; gradients are averaged by
``torch.nn.parallel.DistributedDataParallel`` (NCCL on GPUs, Gloo on CPUs), which overlaps
the all-reduce of each gradient bucket with the rest of the backward pass.
"""

from __future__ import annotations

import contextlib

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from hpmodel.errors import ConfigError
from hpmodel.strategies.base import build_optimizer
from hpmodel.strategies.process_group import ProcessGroupStrategy
from hpmodel.strategies.registry import register


def apply_ddp(model: nn.Module, device, bucket_cap_mb: float = 25.0) -> DistributedDataParallel:
    """Wrap ``model`` (already on ``device``) in DDP."""
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, bucket_cap_mb=bucket_cap_mb)


@register
class Mirrored(ProcessGroupStrategy):
    """Synchronous all-reduce data parallelism across the devices of one host.

    Example::

        strategy = hm.get_strategy("mirrored", devices=2)   # 2 GPUs, or 2 CPU processes
        trainer = hm.Trainer(strategy=strategy)
    """

    names = ("mirrored",)

    def __init__(self, config=None, **options):
        super().__init__(config, **options)
        if self.config.nnodes != 1:
            raise ConfigError("strategy 'mirrored' runs on one host: use strategy 'multi-worker' "
                              "for strategy.nnodes > 1")

    def setup(self, model: nn.Module, optimizer=None):
        model = apply_ddp(model.to(self.device), self.device)
        return model, build_optimizer(optimizer, model)

    @contextlib.contextmanager
    def no_sync(self, model: nn.Module):
        if isinstance(model, DistributedDataParallel):
            with model.no_sync():
                yield
        else:
            yield
