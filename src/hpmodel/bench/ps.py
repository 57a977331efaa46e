"""``hpmodel bench ps``: asynchronous parameter servers versus synchronous training when one
worker is a straggler — the case where asynchronous training earns its keep.

In one run, on the same data, model and number of examples, with the last worker made
``slowdown`` times slower (it sleeps ``slowdown - 1`` times its own compute after each
step, in every configuration):

- ``mirrored``: plain PyTorch DDP (``torch.nn.parallel.DistributedDataParallel`` over
  Gloo/NCCL) through the ``mirrored`` strategy — every step waits for the straggler;
- ``ps sync``: the parameter-server strategy averaging one step per worker per version;
- ``ps async``: the parameter-server strategy applying each update on arrival;
- ``ps bounded`` (full run only): at most ``staleness_bound`` steps ahead of the slowest.

Reported: examples/second of training, test accuracy, mean/max version lag, and the
ratio async / mirrored. Runs on CPU (``--quick`` in about a minute).

Example::

    hpmodel bench ps --out runs/bench --quick
    hpmodel bench ps --out runs/bench --set slowdown=3 --set workers=4
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from hpmodel.bench.common import write_results
from hpmodel.train.callbacks import Callback
from hpmodel.config import load_config
from hpmodel.datasets import load_splits
from hpmodel.strategies import get_strategy
from hpmodel.runs.parameter_server import evaluate
from hpmodel.train.optim import optimizer_factory
from hpmodel.runs.common import ModelFactory, build_trainer
import shutil


class Straggler(Callback):
    """Make one rank ``factor`` times slower: after each step it sleeps ``factor - 1`` times
    the step's own duration (picklable, so it travels to the spawned processes)."""

    def __init__(self, rank: int, factor: float):
        self.rank, self.factor, self.started = rank, factor, 0.0

    def on_step_begin(self, state) -> None:
        self.started = time.perf_counter()

    def on_step_end(self, state, logs) -> None:
        if state.strategy.rank == self.rank and self.factor > 1:
            time.sleep((self.factor - 1) * (time.perf_counter() - self.started))


def bench_config(quick: bool, workers: int):
    overrides = ["data.name=digits", "data.batch_size=32", "model.name=mlp", "model.width=256",
                 "model.depth=2", "optimizer.name=adamw", "optimizer.lr=0.002",
                 f"train.epochs={3 if quick else 10}", "train.progress=false", "train.log_every_steps=20"]
    return load_config(None, overrides)


def run_mirrored(cfg, workers: int, slowdown: float) -> dict[str, Any]:
    """Synchronous DDP with the last rank as the straggler, through the Trainer."""

    splits = load_splits(cfg.data, cfg.seed)
    strategy = get_strategy("mirrored", devices=workers, device="cpu")
    trainer = build_trainer(cfg, strategy, callbacks=[Straggler(workers - 1, slowdown)])
    factory = ModelFactory(cfg, splits.input_shape, splits.num_classes)
    result = trainer.fit(factory, optimizer_factory(cfg.optimizer), splits.train, epochs=cfg.train.epochs)
    scores = evaluate(factory, result.state_dict, splits.test)
    return {"examples_per_second": result.summary["examples_per_second"],
            "wall_seconds": result.summary["wall_seconds"], "test_accuracy": scores["test_accuracy"],
            "staleness_mean": 0.0, "staleness_max": 0}


def run_ps(cfg, out_dir: Path, mode: str, workers: int, slowdown: float) -> dict[str, Any]:
    slow = [1.0] * (workers - 1) + [slowdown]
    strategy = get_strategy("parameter-server", workers=workers, servers=1, mode=mode,
                            worker_slowdown=slow, staleness_bound=2)
    run_dir = out_dir / f"ps-{mode}"
    if (run_dir / "ps-backup").exists():  # a fresh run, not a resume of the last one

        shutil.rmtree(run_dir / "ps-backup")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    summary = strategy.train_from_config(cfg, run_dir)
    return {key: summary[key] for key in ("examples_per_second", "wall_seconds", "test_accuracy",
                                          "staleness_mean", "staleness_max")}


def run_bench(out_dir: Path, quick: bool = False, workers: int = 2, slowdown: float = 3.0,
              **options: Any) -> dict:
    """Measure every configuration once (see the module docstring); write ps.json and ps.png."""
    if options:
        raise TypeError(f"run_bench() got an unexpected keyword argument '{next(iter(options))}'")
    cfg = bench_config(quick, workers)
    out_dir = Path(out_dir)
    runs = [("mirrored (DDP)", "sync", lambda: run_mirrored(cfg, workers, slowdown))]
    modes = ["sync", "async"] if quick else ["sync", "bounded", "async"]
    runs += [(f"ps {mode}", mode, lambda mode=mode: run_ps(cfg, out_dir, mode, workers, slowdown))
             for mode in modes]
    rows = []
    for name, _mode, run in runs:
        measured = run()
        rows.append({"run": name, **measured})
    baseline = rows[0]["examples_per_second"]
    for row in rows:
        row["vs_mirrored"] = row["examples_per_second"] / max(baseline, 1e-9)

    def plot(axes):
        names = [row["run"] for row in rows]
        values = [row["examples_per_second"] for row in rows]
        bars = axes.bar(names, values, color=["#888888", "#4c72b0", "#dd8452", "#55a868"][:len(rows)])
        for bar, row in zip(bars, rows):
            accuracy = row["test_accuracy"]
            label = f"{row['vs_mirrored']:.2f}×" + (f"\nacc {accuracy:.3f}" if accuracy is not None else "")
            axes.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                          ha="center", va="bottom", fontsize=8)
        axes.set_ylabel("training examples / second")
        axes.set_title(f"{workers} workers, worker {workers - 1} {slowdown:g}× slower")

    return write_results(out_dir, "ps", rows, plot=plot,
                         extra={"quick": quick, "epochs": cfg.train.epochs, "model": "mlp 256×2",
                                "workers": workers, "straggler_slowdown": slowdown},
                         title=f"hpmodel bench ps (straggler {slowdown:g}× slower)")
