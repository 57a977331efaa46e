"""``hpmodel bench pipeline``: pipeline throughput against the bubble bound, and the deepest
model one GPU trains without, with recomputation and with CPU offload.

Part 1 (K = 2 processes: 2 GPUs over NCCL, or 2 Gloo CPU processes with ``--quick``):
training steps of an MLP split in two stages, for GPipe and 1F1B at M = 1, 2, 4, 8, 16
micro-batches. M = 1 is naive model parallelism (one stage works at a time). Each row
reports the speedup over M = 1 and that speedup divided by the bubble bound
K·M/(M+K−1). ``torch.distributed.pipelining`` runs the schedules.

Part 2 (one GPU, skipped without CUDA): the largest depth of residual FFN blocks (fixed
width and batch) whose training step fits in a capped share of GPU memory
(``torch.cuda.set_per_process_memory_fraction``), found by doubling then bisection on
``torch.cuda.OutOfMemoryError``, for plain training, ``train.recompute = "all"`` and
``train.offload_activations``. Each search is capped in time.

Options (``--set``): width, depth (blocks per pipeline), batch (per replica; default
32,768), steps, stages (K, default 2), replicas (pipeline × data parallel, default 1;
K × replicas processes), partition (``time``, the default: the strategy's profiled,
time-balanced partition; ``equal``: depth/K blocks per stage), memory_gib, search_seconds
(0 skips part 2), ffn_width, ffn_batch. Inputs are made on the device once, so the rows
measure the schedule, not the host-to-device copy.

The bubble bound assumes a micro-batch costs 1/M of the batch. On a GPU that holds only
while micro-batches are large enough to keep the matrix units busy: at width 4,096 in TF32
a stage took 4.0 ms for a micro-batch of 1,024 rows against 26.1 ms for 8,192 rows (1.23×
its share: smaller weight-gradient GEMMs, one gradient accumulation per micro-batch), which
caps the share of the bound whatever the schedule does. Hence the default batch of 32,768
(micro-batches of 4,096 at M = 8); ``--set batch=8192`` shows the small-micro-batch case.

Example::

    hpmodel bench pipeline --out runs/bench            # 2 GPUs, about 4 minutes
    hpmodel bench pipeline --out runs/bench --quick    # CPU, seconds
    hpmodel bench pipeline --out runs/bench --set stages=2 --set replicas=2   # 4 GPUs
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hpmodel.bench.common import write_results
from hpmodel.kernel.errors import HpmodelError
import torch.distributed as dist
from hpmodel.train.memory import apply_recompute, offload_activations
from hpmodel.strategies.pipeline_parallel import PipelineParallel

MICROBATCHES = (1, 2, 4, 8, 16)
SCHEDULES = ("gpipe", "1f1b")


def mlp_blocks(width: int, depth: int) -> nn.Sequential:
    """``depth`` blocks of Linear + GELU, then a classifier (the pipelined model)."""
    torch.manual_seed(0)
    blocks = [nn.Sequential(nn.Linear(width, width), nn.GELU()) for _ in range(depth)]
    return nn.Sequential(*blocks, nn.Linear(width, 10))


class ResidualFFN(nn.Module):
    """x + W2·GELU(W1·x): saves about 9·B·W floats for backward, ~1 with recomputation."""

    def __init__(self, width: int):
        super().__init__()
        self.ffn = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ffn(x)


def throughput_worker(options: dict[str, Any], strategy) -> list[dict[str, Any]]:
    """In each stage process: time training steps for every schedule and M."""

    if strategy.uses_cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    generator = torch.Generator().manual_seed(0)
    # Made on the device once, as the scaling bench does: this measures the schedule, not input.
    x = torch.randn(options["batch"], options["width"], generator=generator).to(strategy.device)
    y = torch.randint(0, 10, (options["batch"],), generator=generator).to(strategy.device)
    if options["partition"] == "time":  # profile blocks on an M = 8 micro-batch, balance stage times
        strategy.config.microbatches = 8
        strategy.set_sample_batch((x, y))
    model, optimizer = strategy.setup(mlp_blocks(options["width"], options["depth"]),
                                      lambda params: torch.optim.SGD(params, lr=1e-4))
    rows = []
    for schedule in SCHEDULES:
        for microbatches in MICROBATCHES:
            strategy.set_schedule(schedule, microbatches)

            def step():
                strategy.run_micro_batches(model, [(x, y)], nn.functional.cross_entropy)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

            step()  # shape inference and warm-up
            step()
            dist.barrier()
            if strategy.uses_cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(options["steps"]):
                step()
            if strategy.uses_cuda:
                torch.cuda.synchronize()
            dist.barrier()
            seconds = (time.perf_counter() - start) / options["steps"]
            examples = options["batch"] * options["replicas"]  # each replica runs its own batch
            rows.append({"part": "throughput", "schedule": schedule, "microbatches": microbatches,
                         "step_ms": 1e3 * seconds, "examples_per_second": examples / seconds})
    return rows


def add_bounds(rows: list[dict[str, Any]], stages: int) -> None:
    """Speedup over naive model parallelism (GPipe, M = 1) and its share of the bubble bound."""
    naive = next(r for r in rows if r["schedule"] == "gpipe" and r["microbatches"] == 1)
    for row in rows:
        m = row["microbatches"]
        row["speedup_vs_naive"] = row["examples_per_second"] / naive["examples_per_second"]
        row["bubble_bound"] = stages * m / (m + stages - 1)
        row["share_of_bound"] = row["speedup_vs_naive"] / row["bubble_bound"]


def step_fits(depth: int, width: int, batch: int, mode: str) -> bool:
    """Whether one training step of ``depth`` residual FFN blocks fits on the GPU."""

    model = optimizer = None
    try:
        model = nn.Sequential(*[ResidualFFN(width) for _ in range(depth)], nn.Linear(width, 10)).cuda()
        if mode == "recompute":
            apply_recompute(model, every=1)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
        x = torch.randn(batch, width, device="cuda")
        y = torch.randint(0, 10, (batch,), device="cuda")
        with offload_activations("cuda", enabled=mode == "offload"):
            nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        torch.cuda.synchronize()
        return True
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        del model, optimizer
        torch.cuda.empty_cache()


def largest_depth(width: int, batch: int, mode: str, seconds: float, cap: int = 4096) -> dict:
    """Doubling then bisection on the depth, stopped after ``seconds``."""
    started, low, high, tries = time.perf_counter(), 0, None, 0
    depth = 4
    while high is None and depth <= cap and time.perf_counter() - started < seconds:
        tries += 1
        if step_fits(depth, width, batch, mode):
            low, depth = depth, depth * 2
        else:
            high = depth
    high = high or min(depth, cap + 1)
    while high - low > 1 and time.perf_counter() - started < seconds:
        tries += 1
        middle = (low + high) // 2
        low, high = (middle, high) if step_fits(middle, width, batch, mode) else (low, middle)
    per_block = 8 * width * width + 5 * width
    return {"part": "memory", "mode": mode, "largest_depth": low,
            "parameters_millions": round(low * per_block / 1e6, 1), "tries": tries,
            "search_complete": high - low <= 1, "search_seconds": round(time.perf_counter() - started, 1)}


def memory_rows(options: dict[str, Any]) -> list[dict[str, Any]]:
    if not torch.cuda.is_available():
        return [{"part": "memory", "mode": "skipped: needs a CUDA GPU"}]
    if options["search_seconds"] <= 0:
        return [{"part": "memory", "mode": "skipped: search_seconds = 0"}]
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, options["memory_gib"] * 2**30 / total), 0)
    torch.backends.cuda.matmul.allow_tf32 = True
    rows = [largest_depth(options["ffn_width"], options["ffn_batch"], mode, options["search_seconds"])
            for mode in ("none", "recompute", "offload")]
    base = max(rows[0]["largest_depth"], 1)
    for row in rows:
        row["depth_vs_none"] = row["largest_depth"] / base
    return rows


def run_bench(out_dir: Path, quick: bool = False, **options: Any) -> dict:
    """Run both parts; write pipeline.json and pipeline.png."""

    defaults = ({"width": 64, "depth": 4, "batch": 64, "steps": 3} if quick else
                {"width": 4096, "depth": 16, "batch": 32768, "steps": 5})
    defaults.update({"memory_gib": 4.0, "search_seconds": 45.0, "ffn_width": 512, "ffn_batch": 8192,
                     "stages": 2, "replicas": 1, "partition": "time"})
    unknown = set(options) - set(defaults)
    if unknown:
        raise TypeError(f"run_bench() got an unexpected keyword argument '{sorted(unknown)[0]}'")
    options = {**defaults, **options}
    device = "cpu" if quick or not torch.cuda.is_available() else "cuda"
    stages, replicas = options["stages"], options["replicas"]
    if options["partition"] not in ("time", "equal"):
        raise HpmodelError(f"partition = '{options['partition']}' is unknown: use time (profiled, "
                           "balanced) or equal (the same number of blocks per stage)")
    # equal: depth/K MLP blocks per stage, the classifier joins the last stage
    splits = [options["depth"] * i // stages for i in range(1, stages)] if options["partition"] == "equal" else []
    strategy = PipelineParallel(devices=stages * replicas, stages=stages, device=device, split_points=splits)
    rows = strategy.launch(throughput_worker, options, strategy)
    add_bounds(rows, stages=stages)
    rows += memory_rows(options)
    return write_results(out_dir, "pipeline", rows, plot=lambda ax: plot(ax, rows, stages),
                         extra={"options": options, "device": device, "stages": stages,
                                "replicas": replicas},
                         title=f"hpmodel bench pipeline ({stages} stages × {replicas} replica(s))")


def plot(ax, rows: list[dict[str, Any]], stages: int = 2) -> None:
    for schedule in SCHEDULES:
        part = [r for r in rows if r.get("schedule") == schedule]
        ax.plot([r["microbatches"] for r in part], [r["speedup_vs_naive"] for r in part], "o-",
                label=f"{schedule} measured")
    ms = list(MICROBATCHES)
    ax.plot(ms, [stages * m / (m + stages - 1) for m in ms], "k--", label="bubble bound K·M/(M+K−1)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("micro-batches M")
    ax.set_ylabel("speedup over naive model parallelism (M = 1)")
    ax.legend()
