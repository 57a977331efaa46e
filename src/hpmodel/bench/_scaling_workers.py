"""The processes of ``hpmodel bench scaling``: the two workloads, a plain hand-written DDP
worker (only ``torch``) and the hpmodel-strategy worker, both timed the same way.

Each worker runs in a process started by PyTorch's elastic launcher; it times ``steps``
training steps after ``warmup`` untimed ones, with CUDA synchronisation around the timed
window, and returns the examples per second of the whole group (slowest rank's time).
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class Workload:
    """One model at one per-device batch; ``kind`` is ``convnet`` or ``mlp``."""

    name: str
    kind: str
    batch_per_device: int
    width: int  # conv channels / hidden units
    depth: int  # conv layers / Linear+GELU layers
    image_size: int = 32  # convnet only
    precision: str = "bf16"  # bf16 autocast or fp32
    steps: int = 30
    warmup: int = 10
    lr: float = 1e-4
    fused_optimizer: bool = False  # AdamW(fused=True): one kernel per step instead of foreach passes


def build_model(workload: Workload) -> nn.Module:
    """Compute-bound conv net, or the reference stack of ``depth`` × (Linear(w, w) + GELU)."""
    w = workload.width
    if workload.kind == "convnet":  # ~1 M parameters, ~5 GFLOP per example at 128 × 32 × 32
        layers: list[nn.Module] = [nn.Conv2d(3, w, 3, padding=1), nn.ReLU()]
        for _ in range(workload.depth):
            layers += [nn.Sequential(nn.Conv2d(w, w, 3, padding=1), nn.ReLU())]
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(w, 10)]
        return nn.Sequential(*layers)
    return nn.Sequential(*[nn.Sequential(nn.Linear(w, w), nn.GELU()) for _ in range(workload.depth)])


def make_batch(workload: Workload, device: torch.device, rank: int):
    """Synthetic inputs and labels, made on the device once (this measures the step, not input)."""
    generator = torch.Generator(device="cpu").manual_seed(rank)
    n = workload.batch_per_device
    if workload.kind == "convnet":
        x = torch.randn(n, 3, workload.image_size, workload.image_size, generator=generator)
        y = torch.randint(0, 10, (n,), generator=generator)
    else:
        x = torch.randn(n, workload.width, generator=generator)
        y = torch.randint(0, workload.width, (n,), generator=generator)
    return x.to(device), y.to(device)


def optimizer_factory(workload: Workload):
    """AdamW at the workload's learning rate; fused only when the workload asks for it."""
    if workload.fused_optimizer:
        return functools.partial(torch.optim.AdamW, lr=workload.lr, fused=True)
    return functools.partial(torch.optim.AdamW, lr=workload.lr)


def autocast(workload: Workload, device: torch.device):
    enabled = workload.precision == "bf16"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def time_steps(step, workload: Workload, device: torch.device) -> float:
    """Examples/second of the group over ``steps`` steps after ``warmup`` (CUDA-synchronised)."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(workload.warmup):
        step()
    sync()
    dist.barrier()
    start = time.perf_counter()
    for _ in range(workload.steps):
        step()
    sync()
    elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64,
                           device=device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # the group is as fast as its slowest rank
    examples = workload.steps * workload.batch_per_device * dist.get_world_size()
    return examples / elapsed.item()


def plain_ddp_worker(workload: Workload, device_type: str) -> float:
    """The plain PyTorch way, written as a user would: DDP + AdamW + autocast, nothing else
    (AdamW fused when the workload says so, as a user who knows that flag would write it)."""
    local_rank = int(os.environ["LOCAL_RANK"])
    if device_type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["LOCAL_WORLD_SIZE"])))
        dist.init_process_group("gloo")
    try:
        torch.manual_seed(0)
        with device:
            model = build_model(workload)
        ddp = nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if device_type == "cuda" else None)
        optimizer = optimizer_factory(workload)(ddp.parameters())
        x, y = make_batch(workload, device, dist.get_rank())

        def step():
            with autocast(workload, device):
                loss = F.cross_entropy(ddp(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return time_steps(step, workload, device)
    finally:
        dist.destroy_process_group()


def strategy_worker(strategy, workload: Workload) -> float:
    """The same step through hpmodel's strategy API (runs inside ``strategy.launch``)."""
    device = strategy.device
    torch.manual_seed(0)
    with device:
        model = build_model(workload)
    model, optimizer = strategy.setup(model, optimizer_factory(workload))
    x, y = make_batch(workload, device, strategy.rank)

    def step():
        with autocast(workload, device):
            loss = F.cross_entropy(model(x), y)
        strategy.backward(loss)
        strategy.optimizer_step(optimizer)
        optimizer.zero_grad(set_to_none=True)

    return time_steps(step, workload, device)
