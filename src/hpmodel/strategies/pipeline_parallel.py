"""PipelineParallel: split a model into K stages on K devices and stream M micro-batches through them.

``torch.distributed.pipelining`` does the heavy lifting: ``PipelineStage`` owns one stage's
blocks and its sends/receives, ``ScheduleGPipe`` / ``Schedule1F1B`` order the forward and
backward passes of the micro-batches. One process per stage (Gloo on CPU, NCCL on GPU);
with more processes than stages, the pipelines are replicated (data parallel) on a 2-D
``DeviceMesh`` (replica × stage), and each stage's gradients are averaged over its replicas.

The loss scaling lives in one place, :class:`WeightedLoss`: each micro-batch's mean loss is
weighted by its share of the step's examples (``n_micro / n_step``) and the schedules'
own 1/M scaling is off (``scale_grads=False``), so gradients equal OneDevice's mean-loss
gradient whatever K, M or gradient accumulation.

Example::

    strategy = hm.get_strategy("pipeline", devices=2, schedule="1f1b", microbatches=8)
    hm.Trainer(strategy=strategy).fit(model_fn, optimizer_fn, data)
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from hpmodel.kernel.errors import ConfigError, HpmodelError
from hpmodel.models.tasks import SUMS
from hpmodel.strategies.base import (OwnsForwardBackward, ProfilesBatches, build_optimizer,
                                     check_batches)
from hpmodel.strategies.partition import (balance, bounds_from_split_points, check_splittable,
                                          describe_plan, profile_blocks, shared_parameters_across)
from hpmodel.strategies.process_group import ProcessGroupConfig, ProcessGroupStrategy
from hpmodel.strategies.registry import register
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

SCHEDULES = ("gpipe", "1f1b")


@dataclass
class PipelineParallelConfig(ProcessGroupConfig):
    """Pipeline options on top of the process-group ones (``devices`` = processes per node)."""

    schedule: str = "1f1b"  # gpipe | 1f1b
    microbatches: int = 4  # M: micro-batches per batch
    stages: int = 0  # K; 0: one stage per process (no data parallelism)
    split_points: list = field(default_factory=list)  # first block of stages 1..K-1; empty: automatic
    balance: str = "time"  # time (profiled fwd+bwd) | parameters
    profile_repeats: int = 5

    def validate(self) -> None:
        super().validate()
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"strategy.schedule = '{self.schedule}' is unknown: use gpipe or 1f1b")
        if self.microbatches < 1:
            raise ConfigError(f"strategy.microbatches = {self.microbatches} must be at least 1")
        if self.stages < 0:
            raise ConfigError(f"strategy.stages = {self.stages} must be 0 (one per process) or more")
        if self.balance not in ("time", "parameters"):
            raise ConfigError(f"strategy.balance = '{self.balance}' is unknown: use time or parameters")


class PipelineModule(nn.Module):
    """This process's stage: ``module`` holds blocks ``bounds[s]..bounds[s+1]-1`` under their original names."""

    def __init__(self, module: nn.Sequential, stage_index: int, bounds: list[int]):
        super().__init__()
        self.module = module
        self.stage_index = stage_index
        self.bounds = list(bounds)

    def forward(self, *args: Any) -> Any:
        raise HpmodelError("a pipeline stage cannot be called on its own: run batches through "
                           "strategy.run_micro_batches (the Trainer does)")


class WeightedLoss:
    """The one place that scales the loss: mean loss of a micro-batch × its share of the step.

    Example::

        loss = WeightedLoss(); loss.total = 64
        loss(logits_of_16, targets_of_16)  # cross_entropy(...) * 16 / 64
    """

    def __init__(self):
        self.loss_fn: Callable = nn.functional.cross_entropy
        self.total = 1  # examples in the step (this replica)

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(output, target) * (len(target) / self.total)


@register
class PipelineParallel(ProcessGroupStrategy, OwnsForwardBackward, ProfilesBatches):
    """GPipe / 1F1B pipeline parallelism, optionally replicated for data parallelism.

    Example::

        strategy = hm.get_strategy("pipeline", devices=4, stages=2, microbatches=8)  # 2 stages × 2 replicas
    """

    names = ("pipeline", "gpipe")
    Config = PipelineParallelConfig

    def __init__(self, config=None, **options):
        super().__init__(config, **options)
        self.sample_batch: torch.Tensor | None = None
        self.mesh = None
        self._schedules: dict[tuple, Any] = {}
        self._loss = WeightedLoss()

    # -- topology -------------------------------------------------------------------------
    @property
    def num_stages(self) -> int:
        return self.config.stages or self.world_size

    @property
    def num_replicas(self) -> int:
        return max(1, self.world_size // self.num_stages)

    @property
    def stage_index(self) -> int:
        return self.rank % self.num_stages

    @property
    def replica_index(self) -> int:
        return self.rank // self.num_stages

    def _groups(self):
        """(stage group of this pipeline, replica group of this stage); built once, on a DeviceMesh."""
        if self.mesh is None:
            if self.world_size % self.num_stages:
                raise HpmodelError(f"{self.world_size} processes cannot hold pipelines of "
                                   f"strategy.stages = {self.num_stages}: make the process count a "
                                   "multiple of the stage count")

            self.mesh = init_device_mesh(self.device.type, (self.num_replicas, self.num_stages),
                                         mesh_dim_names=("replica", "stage"))
        return self.mesh.get_group("stage"), self.mesh.get_group("replica")

    def distribute(self, data: Any) -> Any:
        check_batches(data)
        if self.num_replicas == 1:
            return data  # every stage reads the same batches; only the first uses x, the last y
        return data.shard(self.num_replicas, self.replica_index, mode="batch")

    def describe(self) -> str:
        return (f"pipeline ({self.num_stages} stages × {self.num_replicas} replica(s), "
                f"{self.config.schedule}, {self.config.microbatches} micro-batches)")

    # -- setup ----------------------------------------------------------------------------
    def set_sample_batch(self, batch: Any) -> None:
        """One global batch (x, y, ...) to profile the blocks on; the Trainer hands it over."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        per_micro = max(1, len(x) // self.num_replicas // self.config.microbatches)
        self.sample_batch = x[:per_micro]

    def setup(self, model: nn.Module, optimizer=None):
        named = named_blocks(model)
        check_splittable(len(named), self.num_stages)
        bounds = self.plan([block for _, block in named])
        tied = shared_parameters_across([block for _, block in named], bounds)
        if tied:
            raise HpmodelError(f"parameters are shared between blocks of different stages ({tied[0]}); "
                               "pipelining cannot tie weights across stages: untie them, or choose "
                               "strategy.split_points that keep the sharing blocks in one stage")
        start, stop = bounds[self.stage_index], bounds[self.stage_index + 1]
        module = nn.Sequential(OrderedDict(named[start:stop])).to(self.device)
        wrapped = PipelineModule(module, self.stage_index, bounds)
        self._stage_group, _ = self._groups()
        # A stage of parameter-free blocks (Flatten, Reshape) still gets an optimizer, since the
        # Trainer steps every process's optimizer: one holding an empty placeholder.
        holder = module if any(True for _ in module.parameters()) else _EmptyParameters(self.device)
        return wrapped, build_optimizer(optimizer, holder)

    def plan(self, blocks: list[nn.Module]) -> list[int]:
        """Stage boundaries: user split points, else balanced on profiled time (rank 0 decides)."""
        check_splittable(len(blocks), self.num_stages)
        if self.config.split_points:
            return bounds_from_split_points(self.config.split_points, len(blocks), self.num_stages)
        plan = None
        if self.rank == 0:
            by_time = self.sample_batch is not None and self.config.balance == "time"
            costs = self._profile(blocks) if by_time else None
            weights = ([c.seconds for c in costs] if costs else
                       [sum(p.numel() for p in b.parameters()) + 1 for b in blocks])
            plan = balance(weights, self.num_stages)
            print(f"pipeline partition ({'time' if by_time else 'parameter'}-balanced):\n"
                  + describe_plan(plan, costs), flush=True)
        return self.broadcast_object(plan, src=0)

    def _profile(self, blocks: list[nn.Module]):
        """Profile each block on this device, one block at a time (the whole model need not fit)."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # dropout in profiling must not shift RNG streams
            costs, x = [], self.sample_batch.to(self.device)
            for block in blocks:
                home = next(block.parameters(), torch.empty(0)).device
                block.to(self.device)
                costs += profile_blocks([block], x, repeats=self.config.profile_repeats)
                with torch.no_grad():
                    x = block(x)
                block.to(home)
        return costs

    def set_schedule(self, schedule: str, microbatches: int) -> None:
        """Switch schedule and M for the next steps (benchmarks sweep them on one setup).

        Example::

            strategy.set_schedule("gpipe", 8)
        """
        self.config.schedule, self.config.microbatches = schedule, microbatches
        self.config.validate()
        self._schedules.clear()

    # -- the step -------------------------------------------------------------------------
    def run_micro_batches(self, model: PipelineModule, group: list, loss_fn: Callable, *,
                          train: bool = True, scaler=None,
                          context: Callable[[], Any] | None = None) -> torch.Tensor:
        """Forward (and backward when ``train``) over ``group`` batches; returns the
        classification task's sums (loss·n, correct, n, n).

        Only the last stage has the loss and logits, so the other stages return zeros and
        a sum over all processes (``reduce``) gives the step's totals. Gradients are weighted by each
        micro-batch's share of ``group``'s examples and averaged over replicas.
        """
        if scaler is not None:
            raise HpmodelError("pipeline strategy does not support fp16 loss scaling: use "
                               "train.precision = 'bf16' or 'fp32'")
        sums = torch.zeros(SUMS, dtype=torch.float64, device=self.device)
        self._loss.loss_fn = loss_fn
        self._loss.total = sum(len(batch[-1]) for batch in group)
        first, last = self.stage_index == 0, self.stage_index == self.num_stages - 1
        for batch in group:  # only the first stage reads x and only the last reads y
            x = batch[0].to(self.device, non_blocking=True) if first else batch[0]
            y = batch[1].to(self.device, non_blocking=True) if last else batch[1]
            for start, stop, count in micro_batch_pieces(len(y), self.config.microbatches):
                schedule = self._schedule(model, (stop - start) // count, count, train)
                with context() if context is not None else contextlib.nullcontext():
                    self._run_schedule(schedule, model, x[start:stop], y[start:stop], train, sums, loss_fn)
        if train and self.num_replicas > 1:
            self._average_over_replicas(model)
        return sums

    def _run_schedule(self, schedule, model, x, y, train, sums, loss_fn) -> None:
        first, last = self.stage_index == 0, self.stage_index == self.num_stages - 1
        args = (x,) if first else ()
        losses: list[torch.Tensor] = []
        if train:
            output = schedule.step(*args, target=y if last else None, losses=losses)
        else:
            output = schedule.step(*args)
        if not last:
            return
        with torch.no_grad():
            if train:  # the schedule kept each micro-batch's weighted loss: undo the weight
                sums[0] += torch.stack([loss.detach().double() for loss in losses]).sum() * self._loss.total
            else:
                sums[0] += loss_fn(output.float(), y).double() * len(y)
            sums[1] += (output.argmax(-1) == y).sum()
            sums[2] += len(y)  # the weight: examples
            sums[3] += len(y)  # the examples

    def _schedule(self, model: PipelineModule, micro_size: int, count: int, train: bool):
        """A stage + schedule per micro-batch shape: receive buffers are sized on first use."""
        key = (micro_size, count, train)
        if key not in self._schedules:
            stage = PipelineStage(model.module, self.stage_index, self.num_stages, self.device,
                                  group=self._stage_group)
            # 1F1B needs M ≥ K; GPipe computes the same gradients for the short remainder pieces.
            kind = Schedule1F1B if self.config.schedule == "1f1b" and count >= self.num_stages else ScheduleGPipe
            self._schedules[key] = kind(stage, count, loss_fn=self._loss if train else None,
                                        scale_grads=False)
        return self._schedules[key]

    def _average_over_replicas(self, model: nn.Module) -> None:
        _, replica_group = self._groups()
        for param in model.parameters():
            if param.grad is not None:
                dist.all_reduce(param.grad, group=replica_group)
                param.grad /= self.num_replicas

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> torch.Tensor:
        """Clip by the norm over all stages (each stage holds a part of the gradient)."""
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        local = (torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=self.device))
        squared = (local.double() ** 2).reshape(1)
        dist.all_reduce(squared, group=self._groups()[0])
        total = squared.sqrt().to(local.dtype).reshape(())
        torch.nn.utils.clip_grads_with_norm_([p for p in model.parameters()], max_norm, total)
        return total

    # -- weights --------------------------------------------------------------------------
    def unwrap(self, model: nn.Module) -> nn.Module:
        return model.module if isinstance(model, PipelineModule) else model

    def model_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The full model's weights, gathered from replica 0's stages onto rank 0 (original keys)."""
        local = {}
        if self.replica_index == 0:
            local = {k: v.detach().cpu().clone() for k, v in self.unwrap(model).state_dict().items()}
        if not dist.is_initialized() or self.world_size == 1:
            return local
        parts: list | None = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object(local, parts, dst=0)
        if self.rank != 0:
            return {}
        full: dict[str, torch.Tensor] = {}
        for part in parts:
            full.update(part)
        return full


class _EmptyParameters(nn.Module):
    def __init__(self, device: torch.device):
        super().__init__()
        self.placeholder = nn.Parameter(torch.zeros(0, device=device))


def named_blocks(model: Any) -> list[tuple[str, nn.Module]]:
    """(name, block) pairs of an ``nn.Sequential``, ``nn.ModuleList`` or list of modules."""
    if isinstance(model, (nn.Sequential, nn.ModuleList)):
        return list(model.named_children())
    if isinstance(model, (list, tuple)) and all(isinstance(b, nn.Module) for b in model):
        return [(str(i), b) for i, b in enumerate(model)]
    raise HpmodelError(f"the pipeline strategy cannot split a {type(model).__name__}: give an "
                       "nn.Sequential (or a list) of blocks, each taking the previous block's output")


def micro_batch_pieces(batch_size: int, microbatches: int) -> list[tuple[int, int, int]]:
    """Split a batch into (start, stop, count) pieces of equal micro-batches.

    Stages size their receive buffers once per schedule, so micro-batches in one schedule
    must be equal: a batch not divisible by M runs as M equal micro-batches plus the
    remainder as micro-batches of one example. Example::

        micro_batch_pieces(10, 4)  # [(0, 8, 4), (8, 10, 2)]
    """
    size = batch_size // microbatches
    pieces = []
    if size:
        pieces.append((0, size * microbatches, microbatches))
    rest = batch_size - size * microbatches
    if rest:
        pieces.append((size * microbatches, batch_size, rest))
    return pieces


__all__ = ["PipelineParallel", "PipelineParallelConfig", "PipelineModule", "WeightedLoss", "micro_batch_pieces",
           "named_blocks"]
