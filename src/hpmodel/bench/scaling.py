"""``hpmodel bench scaling``: examples/second on 1..N devices for each data-parallel strategy,
against a plain hand-written DDP script of the same model, in one run.

Every (model, strategy, devices) configuration is its own launch through PyTorch's elastic
launcher, so 1- and N-device numbers come from the same command and never share a process.
Models: a compute-bound conv net, and the reference 12 × (Linear(4096, 4096) + GELU)
at 2,048 examples per GPU (bf16 autocast, AdamW) where plain DDP leaves the tail of the
all-reduce and the optimizer step exposed; ``reference-fused`` is the same with
``AdamW(fused=True)`` for every strategy and for plain DDP. Reports scaling efficiency
(rate(N) / (N × rate(1)) of the same strategy) and the ratio to plain DDP at N devices.

Options (``--set KEY=VALUE``): ``devices`` (largest N; default: every GPU, or 2 CPU
processes), ``models`` (e.g. ``["reference"]``), ``strategies``, ``steps``, ``warmup``,
``strategy_options`` (per bench strategy, e.g.
``strategy_options={mirrored-overlap={bucket_cap_mb=100}}``).

Example::

    hpmodel bench scaling --out runs/bench            # on a GPU machine: every GPU
    hpmodel bench scaling --out runs/bench --quick    # 2 CPU processes, tiny models, < 1 min
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from hpmodel.bench._scaling_workers import Workload, plain_ddp_worker, strategy_worker
from hpmodel.bench.common import write_results
from hpmodel.kernel.errors import HpmodelError
from hpmodel.strategies import get_strategy
from hpmodel.strategies.launch import LaunchSpec, launch
from hpmodel.strategies.process_group import run_in_worker

# name → (strategy name, strategy options); "plain-ddp" is the hand-written reference.
STRATEGIES: dict[str, tuple[str, dict[str, Any]]] = {
    "plain-ddp": ("", {}),
    "mirrored": ("mirrored", {}),
    "mirrored-overlap": ("mirrored", {"overlap_optimizer": True}),
    "mirrored-bf16-grads": ("mirrored", {"gradient_compression": "bf16"}),
    "central-storage": ("central-storage", {"master_device": "device"}),
    "sharded": ("sharded", {}),
}

GPU_MODELS = {
    # Steps of a few ms: enough timed steps that one hiccup does not move the rate.
    "convnet": Workload("convnet", "convnet", batch_per_device=256, width=128, depth=6,
                        steps=100, warmup=20),
    "reference": Workload("reference", "mlp", batch_per_device=2048, width=4096, depth=12,
                          steps=50, warmup=10),
    # The same with AdamW(fused=True) everywhere, plain DDP included: the optimizer step
    # shrinks from ~40 % of the step, so this shows what overlap adds beyond fusing.
    "reference-fused": Workload("reference-fused", "mlp", batch_per_device=2048, width=4096,
                                depth=12, steps=50, warmup=10, fused_optimizer=True),
}
CPU_MODELS = {  # --quick: the same shapes, tiny
    "convnet": Workload("convnet", "convnet", 16, width=8, depth=2, image_size=8, precision="fp32",
                        steps=20, warmup=3),
    "reference": Workload("reference", "mlp", 64, width=128, depth=4, precision="fp32",
                          steps=20, warmup=3),
}


def device_counts(largest: int) -> list[int]:
    """1, 2, 4, ... up to ``largest``, and ``largest`` itself."""
    counts, n = [], 1
    while n < largest:
        counts.append(n)
        n *= 2
    return counts + [largest]


def measure(name: str, workload: Workload, devices: int, device_type: str,
            extra_options: dict | None = None) -> float:
    """Examples/second of one configuration, in its own launch."""

    strategy_name, options = STRATEGIES[name]
    # CPU runs fork (no re-import of torch: quick stays quick); CUDA needs fresh processes.
    spec = LaunchSpec(nproc_per_node=devices, start_method="fork" if device_type == "cpu" else "spawn")
    if not strategy_name:
        return launch(spec, plain_ddp_worker, workload, device_type)
    options = {**options, **(extra_options or {})}
    strategy = get_strategy(strategy_name, devices=devices, device=device_type, **options)
    return launch(spec, run_in_worker, strategy, strategy_worker, (strategy, workload))


def run_bench(out_dir: Path, quick: bool = False, devices: int = 0, models=None, strategies=None,
              steps: int = 0, warmup: int = -1, strategy_options: dict | None = None) -> dict:
    gpus = torch.cuda.device_count() if torch.cuda.is_available() and not quick else 0
    device_type = "cuda" if gpus else "cpu"
    largest = devices or gpus or 2
    if gpus and largest > gpus:
        raise HpmodelError(f"devices = {largest} but this machine has {gpus} GPU(s): "
                           f"use --set devices={gpus}")
    catalogue = GPU_MODELS if gpus else CPU_MODELS
    models = list(models or (["reference"] if quick else catalogue))
    strategies = list(strategies or STRATEGIES)
    for key, known in (("models", catalogue), ("strategies", STRATEGIES)):
        unknown = [v for v in (models if key == "models" else strategies) if v not in known]
        if unknown:
            raise HpmodelError(f"{key} {unknown} unknown: choose from {', '.join(known)}")
    rows = []
    for model_name in models:
        workload = catalogue[model_name]
        if steps:
            workload = dataclasses.replace(workload, steps=steps)
        if warmup >= 0:
            workload = dataclasses.replace(workload, warmup=warmup)
        for name in strategies:
            for n in device_counts(largest):
                rows.append(run_one(model_name, name, workload, n, device_type,
                                    (strategy_options or {}).get(name)))
    add_ratios(rows)
    result = write_results(out_dir, "scaling", rows, plot=lambda ax: plot(ax, rows),
                           extra={"device_type": device_type, "quick": quick,
                                  "workloads": {m: dataclasses.asdict(catalogue[m]) for m in models}},
                           title=f"hpmodel bench scaling ({device_type}, 1..{largest} devices)")
    for row in rows:  # the verdict in one line each, readable in any terminal width
        if row["devices"] == largest:
            print(f"{row['model']:10s} {row['strategy']:17s} at {largest} devices: scaling efficiency "
                  f"{row['efficiency']:.3f} ({row['efficiency vs plain 1']:.3f} against plain DDP on "
                  f"1 device), time overhead vs plain DDP {row['overhead %']:+.1f}%")
    return result


def run_one(model_name: str, name: str, workload: Workload, n: int, device_type: str,
            extra_options: dict | None = None) -> dict:
    started = time.perf_counter()
    row: dict[str, Any] = {"model": model_name, "strategy": name, "devices": n}
    try:
        row["examples/s"] = float(measure(name, workload, n, device_type, extra_options))
    except HpmodelError as error:  # one broken configuration must not lose the others
        row["examples/s"] = float("nan")
        row["error"] = str(error)[:300]
    row["launch s"] = round(time.perf_counter() - started, 1)
    print(f"  {model_name:10s} {name:17s} {n} device(s): {row['examples/s']:,.0f} "
          f"examples/s ({row['launch s']} s)", flush=True)
    return row


def add_ratios(rows: list[dict]) -> None:
    """``efficiency`` = rate(N) / (N × rate(1)) of the same strategy; ``efficiency vs plain 1``
    uses plain DDP's 1-device rate instead (a common yardstick); ``overhead %`` = extra time
    per example against plain DDP at the same N (negative: faster than plain DDP)."""
    rate = {(r["model"], r["strategy"], r["devices"]): r["examples/s"] for r in rows}
    for row in rows:
        one = rate.get((row["model"], row["strategy"], 1), float("nan"))
        row["efficiency"] = round(row["examples/s"] / (row["devices"] * one), 4)
        plain_one = rate.get((row["model"], "plain-ddp", 1), float("nan"))
        row["efficiency vs plain 1"] = round(row["examples/s"] / (row["devices"] * plain_one), 4)
        plain = rate.get((row["model"], "plain-ddp", row["devices"]), float("nan"))
        row["overhead %"] = round(100 * (plain / row["examples/s"] - 1), 2)
        row["examples/s"] = round(row["examples/s"], 1)


def plot(ax, rows: list[dict]) -> None:
    """Speed-up over the same strategy's 1-device rate; the dashed line is perfect scaling."""
    counts = sorted({r["devices"] for r in rows})
    for model in dict.fromkeys(r["model"] for r in rows):
        for name in dict.fromkeys(r["strategy"] for r in rows):
            mine = sorted((r["devices"], r["efficiency"] * r["devices"]) for r in rows
                          if r["model"] == model and r["strategy"] == name)
            if mine:
                ax.plot(*zip(*mine), marker="o", label=f"{model} · {name}",
                        linestyle="-" if model == rows[0]["model"] else ":")
    ax.plot(counts, counts, "k--", linewidth=1, label="perfect")
    ax.set_xlabel("devices")
    ax.set_ylabel("speed-up over 1 device")
    ax.set_xticks(counts)
    ax.legend(fontsize=7)
