"""Sharded: fully sharded data parallelism through FSDP2 (``fully_shard``).

Parameters, gradients and optimizer state are split across ranks (``torch.distributed``'s
``fully_shard`` on a 1-D device mesh, one call per block then one for the root, as
torchtitan applies it); each block's parameters are all-gathered just before use and
gradients reduce-scattered after. ``cpu_offload = true`` keeps the shards in host memory
(``CPUOffloadPolicy``). The full state dict is gathered only for saving
(``torch.distributed.checkpoint.state_dict.get_model_state_dict``). The optimizer must be
built after sharding, so the Trainer passes a factory.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from hpmodel.kernel.errors import ConfigError, HpmodelError
from hpmodel.strategies.base import build_optimizer
from hpmodel.strategies.process_group import ProcessGroupConfig, ProcessGroupStrategy
from hpmodel.strategies.registry import register
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

DTYPES = {"": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class ShardedConfig(ProcessGroupConfig):
    """Process-group options plus FSDP2's."""

    cpu_offload: bool = False  # keep parameter/gradient/optimizer shards in host memory
    reshard_after_forward: bool = True  # free gathered parameters after forward (ZeRO-3) or keep (ZeRO-2)
    param_dtype: str = ""  # "" | bf16 | fp16: FSDP2 mixed precision for gathered parameters
    reduce_dtype: str = ""  # "" | fp32 | bf16: dtype of the gradient reduce-scatter

    def validate(self) -> None:
        super().validate()
        for key in ("param_dtype", "reduce_dtype"):
            if getattr(self, key) not in DTYPES:
                raise ConfigError(f"strategy.{key} = '{getattr(self, key)}' is unknown: "
                                  f"use one of {', '.join(repr(k) for k in DTYPES)}")


def fsdp_api():
    """``(fully_shard, MixedPrecisionPolicy, CPUOffloadPolicy)`` from where this torch keeps them."""
    return fully_shard, MixedPrecisionPolicy, CPUOffloadPolicy


def apply_fsdp(model: nn.Module, mesh, *, cpu_offload: bool = False, reshard_after_forward: bool = True,
               param_dtype=None, reduce_dtype=None) -> nn.Module:
    """Shard every child block that holds parameters (blocks tied to others go with the
    root), then the root.

    Example::

        mesh = init_device_mesh("cuda", (world_size,))
        model = apply_fsdp(model, mesh, cpu_offload=True)
    """
    fully_shard, MixedPrecisionPolicy, CPUOffloadPolicy = fsdp_api()
    options = {"mesh": mesh, "reshard_after_forward": reshard_after_forward}
    if param_dtype is not None or reduce_dtype is not None:
        options["mp_policy"] = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    if cpu_offload:
        options["offload_policy"] = CPUOffloadPolicy()
    blocks = [block for block in model.children() if any(True for _ in block.parameters())]
    owners: dict[int, int] = {}
    for index, block in enumerate(blocks):
        for parameter in block.parameters():
            owners.setdefault(id(parameter), index)
    for index, block in enumerate(blocks):
        # A block tied to another (a GPT's embedding and LM head) stays with the root's group:
        # one FSDP group must own a shared parameter (as torchtitan leaves them to the root).
        if all(owners[id(p)] == index for p in block.parameters()) and not any(
                owners[id(p)] == index for other in blocks[index + 1:] for p in other.parameters()):
            fully_shard(block, **options)
    fully_shard(model, **options)
    return model


@register
class Sharded(ProcessGroupStrategy):
    """Fully sharded data parallelism (FSDP2): each rank holds 1/N of the training state.

    Example::

        strategy = hm.get_strategy("sharded", devices=2, cpu_offload=False)
        model, optimizer = strategy.setup(model, lambda params: torch.optim.AdamW(params))
    """

    names = ("sharded", "fsdp", "fsdp2")
    Config = ShardedConfig

    def setup(self, model: nn.Module, optimizer=None):
        if self.config.cpu_offload and not self.uses_cuda:
            raise HpmodelError("strategy.cpu_offload = true offloads GPU shards to the host, but "
                               "this run computes on the CPU already: set cpu_offload = false")
        self.ensure_process_group()
        if isinstance(optimizer, torch.optim.Optimizer):
            raise HpmodelError("strategy 'sharded' replaces the parameters with shards: pass an "
                               "optimizer factory f(parameters), not an Optimizer built before setup")
        mesh = init_device_mesh(self.device.type, (self.world_size,))
        if not self.config.cpu_offload:
            model = model.to(self.device)
        model = apply_fsdp(model, mesh, cpu_offload=self.config.cpu_offload,
                           reshard_after_forward=self.config.reshard_after_forward,
                           param_dtype=DTYPES[self.config.param_dtype],
                           reduce_dtype=DTYPES[self.config.reduce_dtype])
        return model, build_optimizer(optimizer, model)  # built on the shards

    @contextlib.contextmanager
    def no_sync(self, model: nn.Module):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> torch.Tensor:
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    def unwrap(self, model: nn.Module) -> nn.Module:
        return model  # FSDP2 shards in place: the module is the user's

    def model_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Gather the full weights onto rank 0's host memory (other ranks get ``{}``)."""

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(model, options=options)
        return {key: value.detach().clone() for key, value in state.items()}
