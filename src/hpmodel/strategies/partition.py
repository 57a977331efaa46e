"""Cost-balanced partitioning of a sequence of blocks into contiguous pipeline stages.

In GPipe's spirit: profile each block's forward + backward time (median over repeats, so
a busy machine does not skew it) and memory (parameters + activations saved for
backward, counted with saved-tensor hooks) on a sample micro-batch, then choose the
contiguous stage boundaries that minimise the slowest stage (exact dynamic programme,
O(stages · blocks²)). User-given split points are the alternative. PyTorch runs the
blocks; this module only times them and does the arithmetic.

Example::

    costs = profile_blocks(list(model), sample_x)
    plan = balance([c.seconds for c in costs], stages=2)   # e.g. [0, 5, 8]: stage s = blocks[b[s]:b[s+1]]
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from hpmodel.kernel.errors import HpmodelError


@dataclass
class BlockCost:
    """One block's measured cost on a sample micro-batch."""

    seconds: float  # forward + backward, median over repeats
    parameter_bytes: int
    activation_bytes: int  # bytes autograd saves for backward


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _forward_backward(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run ``block`` forward and backward on ``x``; return its (detached) output."""
    inp = x.detach().requires_grad_(x.is_floating_point())
    out = block(inp)
    if out.requires_grad:
        out.backward(torch.ones_like(out))
    return out.detach()


def profile_blocks(blocks: Sequence[nn.Module], sample: torch.Tensor, *, repeats: int = 5,
                   warmup: int = 1) -> list[BlockCost]:
    """Measure each block's forward+backward seconds and memory on ``sample`` (a micro-batch).

    The blocks are timed in turn, round after round, and each keeps its median: a burst of
    load on a shared machine then hits every block alike instead of one. Gradients the
    profiling leaves behind are cleared. Example::

        costs = profile_blocks(list(model), torch.randn(16, 64))
    """
    device = sample.device
    inputs, saved_bytes, x = [], [], sample
    for block in blocks:  # each block's input is the previous block's output
        inputs.append(x)
        saved = [0]

        def count(tensor: torch.Tensor) -> torch.Tensor:
            saved[0] += tensor.numel() * tensor.element_size()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(count, lambda tensor: tensor):
            x = block(x.detach().requires_grad_(x.is_floating_point()))
        saved_bytes.append(saved[0])
        x = x.detach()
    times: list[list[float]] = [[] for _ in blocks]
    for round_index in range(warmup + repeats):
        for index, block in enumerate(blocks):
            _sync(device)
            start = time.perf_counter()
            _forward_backward(block, inputs[index])
            _sync(device)
            if round_index >= warmup:
                times[index].append(time.perf_counter() - start)
    for block in blocks:
        block.zero_grad(set_to_none=True)
    return [BlockCost(statistics.median(seconds), sum(p.numel() * p.element_size() for p in block.parameters()),
                      saved) for block, seconds, saved in zip(blocks, times, saved_bytes)]


def balance(costs: Sequence[float], stages: int) -> list[int]:
    """Contiguous boundaries ``[0, b1, ..., len(costs)]`` minimising the largest stage sum.

    Example::

        balance([1, 1, 1, 1, 2, 2, 4, 4], 2)  # [0, 6, 8]: stage sums 8 and 8
    """
    n = len(costs)
    check_splittable(n, stages)
    prefix = [0.0]
    for cost in costs:
        prefix.append(prefix[-1] + float(cost))
    inf = float("inf")
    # best[k][j]: the smallest possible slowest stage when blocks[:j] form k stages.
    best = [[inf] * (n + 1) for _ in range(stages + 1)]
    cut = [[0] * (n + 1) for _ in range(stages + 1)]
    best[0][0] = 0.0
    for k in range(1, stages + 1):
        for j in range(k, n - (stages - k) + 1):
            for i in range(k - 1, j):
                value = max(best[k - 1][i], prefix[j] - prefix[i])
                if value < best[k][j]:
                    best[k][j], cut[k][j] = value, i
    bounds = [n]
    for k in range(stages, 0, -1):
        bounds.append(cut[k][bounds[-1]])
    return bounds[::-1]


def check_splittable(num_blocks: int, stages: int) -> None:
    """Refuse a model with fewer blocks than stages, naming the fix."""
    if stages < 1:
        raise HpmodelError(f"a pipeline needs at least 1 stage, not {stages}")
    if num_blocks < stages:
        raise HpmodelError(f"the model has {num_blocks} block(s) but the pipeline has {stages} stages: "
                           f"give an nn.Sequential of at least {stages} blocks, or use fewer stages")


def bounds_from_split_points(split_points: Sequence[int], num_blocks: int, stages: int) -> list[int]:
    """User split points (the first block index of stages 1..K-1) → boundaries, validated.

    Example::

        bounds_from_split_points([3], num_blocks=5, stages=2)  # [0, 3, 5]
    """
    check_splittable(num_blocks, stages)
    points = [int(p) for p in split_points]
    bounds = [0, *points, num_blocks]
    if len(points) != stages - 1 or any(a >= b for a, b in zip(bounds, bounds[1:])):
        raise HpmodelError(f"strategy.split_points = {points} must be {stages - 1} increasing block "
                           f"indices inside (0, {num_blocks}) (the first block of stages 1..{stages - 1})")
    return bounds


def stage_costs(costs: Sequence[float], bounds: Sequence[int]) -> list[float]:
    """The summed cost of each stage for ``bounds``."""
    return [float(sum(costs[a:b])) for a, b in zip(bounds, bounds[1:])]


def describe_plan(bounds: Sequence[int], costs: Sequence[BlockCost] | None) -> str:
    """One line per stage: its blocks and predicted cost (time, memory)."""
    lines = []
    for stage, (a, b) in enumerate(zip(bounds, bounds[1:])):
        line = f"stage {stage}: blocks {a}..{b - 1}"
        if costs:
            part = costs[a:b]
            line += (f"  predicted {1e3 * sum(c.seconds for c in part):.3f} ms fwd+bwd, "
                     f"{sum(c.parameter_bytes for c in part) / 2**20:.2f} MiB parameters, "
                     f"{sum(c.activation_bytes for c in part) / 2**20:.2f} MiB activations")
        lines.append(line)
    return "\n".join(lines)


def shared_parameters_across(blocks: Sequence[nn.Module], bounds: Sequence[int]) -> list[str]:
    """Names (``block.param``) of parameters held by blocks of different stages (tied weights)."""
    owner: dict[int, tuple[int, str]] = {}
    tied = []
    for stage, (a, b) in enumerate(zip(bounds, bounds[1:])):
        for index in range(a, b):
            for name, param in blocks[index].named_parameters(remove_duplicate=False):
                seen = owner.setdefault(id(param), (stage, f"{index}.{name}"))
                if seen[0] != stage:
                    tied.append(f"{seen[1]} and {index}.{name}")
    return tied


__all__ = ["BlockCost", "balance", "bounds_from_split_points", "check_splittable", "describe_plan",
           "profile_blocks", "shared_parameters_across", "stage_costs"]
