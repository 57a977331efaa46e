"""CentralStorage: one master copy of the variables, computation replicated on every device.

As tf.distribute's CentralStorageStrategy: the variables live in one central place (the
host's memory, or rank 0's device); every process holds a replica for computing. After
the backward pass the gradients are *reduced* into the master copy (``dist.reduce`` to
rank 0), the optimizer updates the master copy there (so optimizer state exists only
once), and the new values are *broadcast* back to every replica (``dist.broadcast``).
``torch.distributed`` does the communication, on one flattened buffer per dtype; no DDP.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from hpmodel.kernel.errors import ConfigError, HpmodelError
from hpmodel.strategies.process_group import ProcessGroupConfig, ProcessGroupStrategy
from hpmodel.strategies.registry import register


@dataclass
class CentralStorageConfig(ProcessGroupConfig):
    """Process-group options plus where the master copy lives."""

    master_device: str = "cpu"  # cpu: the host's memory | device: rank 0's device

    def validate(self) -> None:
        super().validate()
        if self.master_device not in ("cpu", "device"):
            raise ConfigError(f"strategy.master_device = '{self.master_device}' is unknown: "
                              "use cpu (host memory) or device (rank 0's device)")


@register
class CentralStorage(ProcessGroupStrategy):
    """Variables kept once (host memory or one device), updated there and broadcast.

    Example::

        strategy = hm.get_strategy("central-storage", devices=2, master_device="cpu")
        model, optimizer = strategy.setup(model, lambda params: torch.optim.AdamW(params))
    """

    names = ("central-storage", "central_storage", "centralstorage")
    Config = CentralStorageConfig

    def setup(self, model: nn.Module, optimizer=None):
        self.ensure_process_group()
        model = model.to(self.device)
        replica = [p for p in model.parameters() if p.requires_grad]
        buffers = [b for b in model.buffers() if b.is_floating_point()]
        self._broadcast(replica + buffers)  # replicas start from rank 0's values
        if optimizer is None:  # evaluation only: no master copy
            return model, None
        self._replica, self._buffers, self._reduced = replica, buffers, False
        if not callable(optimizer) or isinstance(optimizer, torch.optim.Optimizer):
            raise HpmodelError("strategy 'central-storage' builds the optimizer on the master copy: "
                               "pass an optimizer factory f(parameters), not an Optimizer")
        self._master = []
        if self.is_main:
            master_device = torch.device("cpu") if self.config.master_device == "cpu" else self.device
            self._master = [p.detach().to(master_device, copy=True) for p in self._replica]
            return model, optimizer(self._master)
        # Other ranks never step; their optimizer only carries the LR schedule's values.
        return model, optimizer(iter(self._replica))

    # -- the step -----------------------------------------------------------------------
    def reduce_gradients(self) -> None:
        """Sum the replicas' gradients into the master copy on rank 0 (mean over replicas).

        Called by ``clip_grad_norm`` or ``optimizer_step``, whichever comes first::

            strategy.backward(loss); strategy.reduce_gradients()  # master .grad now set on rank 0
        """
        if self._reduced:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self._replica]
        for index_group in _by_dtype(grads):
            group = [grads[i] for i in index_group]
            flat = _flatten_dense_tensors(group)  # one collective per dtype, not per tensor
            dist.reduce(flat, dst=0, op=dist.ReduceOp.SUM)
            if self.is_main:
                flat /= self.world_size
                for i, grad in zip(index_group, _unflatten_dense_tensors(flat, group)):
                    self._master[i].grad = grad.to(self._master[i].device)
        for p in self._replica:
            p.grad = None  # the replicas' gradients are spent
        self._reduced = True

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> torch.Tensor:
        self.reduce_gradients()
        norm = torch.zeros((), dtype=torch.float64)
        if self.is_main:
            norm = torch.nn.utils.clip_grad_norm_(self._master, max_norm).double().cpu()
        return self.reduce(norm, "sum")  # only rank 0 contributes: this is a broadcast

    def optimizer_step(self, optimizer, scaler=None) -> None:
        if scaler is not None:
            raise HpmodelError("strategy 'central-storage' does not support fp16 loss scaling: "
                               "use precision bf16 or fp32")
        self.reduce_gradients()
        if self.is_main:
            optimizer.step()
            with torch.no_grad():
                for replica, master in zip(self._replica, self._master):
                    replica.copy_(master, non_blocking=True)
        self._broadcast(self._replica + self._buffers)
        self._reduced = False

    def _broadcast(self, tensors: list[torch.Tensor]) -> None:
        """Rank 0's values of ``tensors`` to every process, one flat buffer per dtype."""
        if not dist.is_initialized() or self.world_size == 1 or not tensors:
            return
        with torch.no_grad():
            for index_group in _by_dtype(tensors):
                group = [tensors[i] for i in index_group]
                flat = _flatten_dense_tensors([t.detach() for t in group])
                dist.broadcast(flat, src=0)
                for tensor, value in zip(group, _unflatten_dense_tensors(flat, group)):
                    tensor.copy_(value)


def _by_dtype(tensors: list[torch.Tensor]) -> list[list[int]]:
    """Indices of ``tensors`` grouped by dtype (each group flattens into one buffer)."""
    groups: dict[torch.dtype, list[int]] = {}
    for index, tensor in enumerate(tensors):
        groups.setdefault(tensor.dtype, []).append(index)
    return list(groups.values())
