"""Train and evaluate from a configuration: the code path behind ``hpmodel train`` and
``hpmodel evaluate``, usable from Python too.

Example::

    cfg = load_config("examples/digits.toml")
    summary = train_from_config(cfg, "runs/digits")
    evaluate_run("runs/digits")["test_accuracy"]
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from hpmodel.config import RunConfig, load_config
from hpmodel.datasets import load_splits
from hpmodel.models import build_model, count_parameters
from hpmodel.kernel.schema import to_toml
from hpmodel.kernel.timing import peak_tflops
from hpmodel.models.gpt import GPT, flops_per_token
from hpmodel.runs.parameter_server import train as train_parameter_server
from hpmodel.strategies import get_strategy
from hpmodel.train.backup import BackupAndRestore, config_fingerprint
from hpmodel.train.backup_format import step_folders
from hpmodel.train.callbacks import MetricsLogger
from hpmodel.train.faults import KillOnce, restart_count
from hpmodel.train.optim import optimizer_factory
from hpmodel.kernel.files import atomic_write_bytes, load_weights, save_weights, write_json
from hpmodel.train.trainer import Trainer
from hpmodel.runs.common import ModelFactory, build_strategy, build_trainer
from hpmodel.compress.variants import evaluate_variant
from hpmodel.kernel.errors import HpmodelError


def train_from_config(cfg: RunConfig, out_dir: str | Path) -> dict[str, Any]:
    """Train as ``cfg`` says, write the run directory, return ``summary.json``'s content."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / "config.toml", to_toml(cfg.to_dict()).encode())
    if not (cfg.backup.dir and step_folders(cfg.backup.dir)):  # a resumed run keeps its metrics
        (out_dir / "metrics.jsonl").unlink(missing_ok=True)
    if cfg.strategy.is_parameter_server:  # its own runner and loop
        return train_parameter_server(cfg, out_dir, cfg.strategy.options)
    strategy = build_strategy(cfg)
    summary = strategy.launch(train_worker, cfg, str(out_dir), strategy)
    return summary


def train_worker(cfg: RunConfig, out_dir: str, strategy) -> dict[str, Any]:
    """Every process's part of a configured run; the main process writes the files."""
    started = time.perf_counter()
    splits = load_splits(cfg.data, cfg.seed)
    factory = ModelFactory(cfg, splits.input_shape, splits.num_classes)
    callbacks = [MetricsLogger(out_dir)]
    if cfg.backup.dir:
        callbacks.append(BackupAndRestore(cfg.backup.dir, every_steps=cfg.backup.every_steps,
                                          every_epoch=cfg.backup.every_epoch, keep=cfg.backup.keep,
                                          asynchronous=cfg.backup.asynchronous,
                                          fresh_if_corrupt=cfg.backup.fresh_if_corrupt,
                                          fingerprint=config_fingerprint(cfg)))
    if cfg.train.inject_kill:
        rank, step = cfg.train.inject_kill
        callbacks.append(KillOnce(int(rank), int(step)))
    trainer = build_trainer(cfg, strategy, callbacks)
    result = trainer.fit_in_process(factory, optimizer_factory(cfg.optimizer), splits.train,
                                    cfg.train.epochs, splits.val if len(splits.val) else None)
    test = trainer.evaluate_model(result.wrapped_model, splits.test)
    summary = {**result.summary, **{f"test_{k}": v for k, v in test.items()},
               **{f"baseline_{k}": v for k, v in splits.baselines.items()},
               "strategy": strategy.describe(),
               "parameters": count_parameters(factory()), "precision": cfg.train.precision,
               "total_seconds": time.perf_counter() - started, "history": result.history}
    summary.update(utilisation(factory, summary, strategy.device))
    backup = next((cb for cb in callbacks if isinstance(cb, BackupAndRestore)), None)
    summary["restarts"] = restart_count()
    if backup is not None and backup.restored_from is not None:
        summary["resumed_from"] = str(backup.restored_from)
        summary["resumed_at_step"] = backup.restored_step
    if strategy.is_main:
        save_weights(Path(out_dir) / "model.safetensors", result.state_dict,
                     metadata={"model": cfg.model.name, "hpmodel": "1"})
        write_json(Path(out_dir) / "summary.json", summary)
    strategy.barrier()
    return summary


def utilisation(factory, summary: dict[str, Any], device) -> dict[str, float]:
    """Model FLOPs utilisation of a language model's run: FLOPs per token × tokens/s over the
    device's peak (reported where the peak is known: H100/H200 bf16)."""
    model, peak = factory(), peak_tflops(device)
    if not isinstance(model, GPT) or "tokens_per_second" not in summary or not peak:
        return {}
    return {"mfu": flops_per_token(model.config) * summary["tokens_per_second"] / (peak * 1e12)}


def evaluate_run(run_dir: str | Path, split: str = "test") -> dict[str, Any]:
    """Re-score a trained run on its test split, from its config and weights alone."""
    run_dir = Path(run_dir)
    if (run_dir / "variant.json").is_file():  # a compressed variant (hpmodel compress)

        return evaluate_variant(run_dir, split)
    cfg = load_config(run_dir / "config.toml")
    splits = load_splits(cfg.data, cfg.seed)
    model = build_model(cfg.model, splits.input_shape, splits.num_classes)
    weights = load_weights(run_dir / "model.safetensors")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise HpmodelError(f"'{run_dir}/model.safetensors' does not fit the model of its config.toml "
                           f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})")
    trainer = Trainer(strategy=get_strategy("one-device"), precision=cfg.train.precision,
                      batch_size=256, progress=False)
    model, _ = trainer.strategy.setup(model, None)
    scores = trainer.evaluate_model(model, getattr(splits, split))
    return {f"{split}_accuracy": scores["accuracy"], f"{split}_loss": scores["loss"],
            f"{split}_examples": scores["examples"]}


__all__ = ["evaluate_run", "train_from_config", "train_worker"]
