"""Mirrored: synchronous data parallelism on one host.

One process per device, started by PyTorch's elastic launcher; gradients are averaged by
``torch.nn.parallel.DistributedDataParallel`` (NCCL on GPUs, Gloo on CPUs), which overlaps
the all-reduce of each gradient bucket with the rest of the backward pass. With
``overlap_optimizer = true`` the optimizer step also runs bucket by bucket as each
bucket's all-reduce completes (:mod:`hpmodel.strategies.overlap`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

from hpmodel.kernel.errors import ConfigError, HpmodelError
from hpmodel.strategies.base import build_optimizer
from hpmodel.strategies.overlap import OptimizerOverlap, overlap_hook
from hpmodel.strategies.process_group import ProcessGroupConfig, ProcessGroupStrategy
from hpmodel.strategies.registry import register


# DDP's own communication hooks: gradients cast to 16 bits for the all-reduce, halving the
# bytes on the wire; the averaged result is cast back (numerics differ from fp32 at 16-bit
# rounding, so opt in).
COMPRESSION_HOOKS = {"none": None, "bf16": default_hooks.bf16_compress_hook,
                     "fp16": default_hooks.fp16_compress_hook}


@dataclass
class MirroredConfig(ProcessGroupConfig):
    """Process-group options plus DDP's tuning knobs."""

    bucket_cap_mb: float = 25.0  # gradient bucket size: bigger buckets, fewer all-reduce calls
    overlap_optimizer: bool = False  # step each bucket's parameters when its all-reduce completes
    static_graph: bool = False  # the graph is the same every step (lets DDP skip some bookkeeping)
    gradient_as_bucket_view: bool = False  # grads alias the buckets (saves a copy and memory)
    gradient_compression: str = "none"  # none | bf16 | fp16: all-reduce gradients at half width

    def validate(self) -> None:
        super().validate()
        if self.gradient_compression not in COMPRESSION_HOOKS:
            raise ConfigError(f"strategy.gradient_compression = '{self.gradient_compression}' is "
                              f"unknown: use {', '.join(COMPRESSION_HOOKS)}")
        if self.gradient_compression != "none" and self.overlap_optimizer:
            raise ConfigError("strategy.gradient_compression and strategy.overlap_optimizer both "
                              "need DDP's one communication hook: choose one")
        if self.bucket_cap_mb <= 0:
            raise ConfigError(f"strategy.bucket_cap_mb = {self.bucket_cap_mb} must be positive")


def apply_ddp(model: nn.Module, device, bucket_cap_mb: float = 25.0, *, static_graph: bool = False,
              gradient_as_bucket_view: bool = False) -> DistributedDataParallel:
    """Wrap ``model`` (already on ``device``) in DDP.

    Example::

        ddp = apply_ddp(model.to(device), device, bucket_cap_mb=100)
    """
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, bucket_cap_mb=bucket_cap_mb,
                                   static_graph=static_graph,
                                   gradient_as_bucket_view=gradient_as_bucket_view)


@register
class Mirrored(ProcessGroupStrategy):
    """Synchronous all-reduce data parallelism across the devices of one host.

    Example::

        strategy = hm.get_strategy("mirrored", devices=2)   # 2 GPUs, or 2 CPU processes
        strategy = hm.get_strategy("mirrored", overlap_optimizer=True)  # hide the optimizer step
        strategy = hm.get_strategy("mirrored", gradient_compression="bf16")  # half the bytes
        trainer = hm.Trainer(strategy=strategy)
    """

    names = ("mirrored",)
    Config = MirroredConfig
    single_host = True

    def __init__(self, config=None, **options):
        super().__init__(config, **options)
        if self.single_host and self.config.nnodes != 1:
            raise ConfigError("strategy 'mirrored' runs on one host: use strategy 'multi-worker' "
                              "for strategy.nnodes > 1")

    def setup(self, model: nn.Module, optimizer=None):
        self.ensure_process_group()
        # One process has no all-reduce to hide the step behind: there the overlap only costs
        # (measured on one H200: 193k vs 201k examples/s on the reference model).
        overlap = self.config.overlap_optimizer and optimizer is not None and self.world_size > 1
        model = apply_ddp(model.to(self.device), self.device, self.config.bucket_cap_mb,
                          static_graph=self.config.static_graph,
                          gradient_as_bucket_view=self.config.gradient_as_bucket_view or overlap)
        optimizer = build_optimizer(optimizer, model)
        if overlap:
            model.register_comm_hook(OptimizerOverlap(optimizer), overlap_hook)
        elif COMPRESSION_HOOKS[self.config.gradient_compression] is not None:
            if self.config.gradient_compression == "bf16" and self.backend != "nccl":
                raise HpmodelError("strategy.gradient_compression = 'bf16' needs NCCL on GPUs: use "
                                   "'fp16' with Gloo on CPUs")
            model.register_comm_hook(None, COMPRESSION_HOOKS[self.config.gradient_compression])
        self._overlapped = overlap
        return model, optimizer

    def optimizer_step(self, optimizer, scaler=None) -> None:
        if not getattr(self, "_overlapped", False):
            return super().optimizer_step(optimizer, scaler)
        if scaler is not None:
            raise HpmodelError("strategy.overlap_optimizer cannot use fp16 loss scaling: use "
                               "precision bf16 or fp32, or set strategy.overlap_optimizer = false")
        # Nothing left to do: DDP waited for every bucket's hook, which stepped its parameters.

    def clip_grad_norm(self, model: nn.Module, max_norm: float):
        if getattr(self, "_overlapped", False):
            raise HpmodelError("strategy.overlap_optimizer steps during the backward pass, before "
                               "gradients could be clipped: set train.clip_grad_norm = 0 or "
                               "strategy.overlap_optimizer = false")
        return super().clip_grad_norm(model, max_norm)

    @contextlib.contextmanager
    def no_sync(self, model: nn.Module):
        if isinstance(model, DistributedDataParallel):
            with model.no_sync():
                yield
        else:
            yield
