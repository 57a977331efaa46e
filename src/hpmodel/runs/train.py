"""Train and evaluate from a configuration: the code path behind ``hpmodel train`` and
``hpmodel evaluate``, usable from Python too.

Example::

    cfg = load_config("examples/digits.toml")
    summary = train_from_config(cfg, "runs/digits")
    evaluate_run("runs/digits")["test_accuracy"]
"""

from __future__ import annotations

import os
import shutil
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from hpmodel.config import RunConfig, load_run_config
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
from hpmodel.compress.variant_load import evaluate_variant
from hpmodel.kernel.errors import HpmodelError
from hpmodel.kernel.locks import DirectoryLock, make_directory


PARTIAL = ".partial"  # a run's files while it runs; moved into the run directory when it ends


def train_from_config(cfg: RunConfig, out_dir: str | Path, *, overwrite: bool = False) -> dict[str, Any]:
    """Train as ``cfg`` says, write the run directory, return ``summary.json``'s content.

    The run writes into ``OUT/.partial`` and moves its files into ``OUT`` only when it
    finishes, so a failing run changes nothing already in ``OUT``; a finished run (its
    ``summary.json``) is replaced only with ``overwrite``. ``OUT`` and ``backup.dir`` are
    locked while the run lasts (:class:`~hpmodel.kernel.locks.DirectoryLock`).

    Example::

        train_from_config(load_config("digits.toml"), "runs/digits", overwrite=True)
    """
    out_dir = Path(out_dir)
    main_node = getattr(cfg.strategy.options, "node_rank", 0) == 0  # other nodes write nothing
    staging = out_dir / PARTIAL
    with ExitStack() as locks:
        if main_node:
            prepare_run_dir(cfg, out_dir, overwrite, locks)
        if cfg.strategy.is_parameter_server:  # its own runner and loop
            summary = train_parameter_server(cfg, staging, cfg.strategy.options)
        else:
            strategy = build_strategy(cfg)
            summary = strategy.launch(train_worker, cfg, str(staging), strategy)
        if main_node:
            promote(staging, out_dir)
    return summary


def prepare_run_dir(cfg: RunConfig, out_dir: Path, overwrite: bool, locks: ExitStack) -> None:
    """Check and lock ``--out`` and ``backup.dir``, then start ``OUT/.partial`` (kept when the
    run resumes from a backup, so its metrics continue)."""
    make_directory(out_dir, "--out", "give a directory for the run")
    locks.enter_context(DirectoryLock(out_dir, "run directory (--out)", fix="give another --out"))
    if (out_dir / "summary.json").is_file() and not overwrite:
        raise HpmodelError(f"'{out_dir}' holds a finished run (summary.json): pass --overwrite to "
                           "replace it (its files stay until the new run finishes), or give another --out")
    for backup_dir in {d for d in (cfg.backup.dir, getattr(cfg.strategy.options, "backup_dir", "")) if d}:
        make_directory(Path(backup_dir), "backup.dir", "give a directory for the backups")
        locks.enter_context(DirectoryLock(backup_dir, "backup.dir", fix="give each run its own backup.dir"))
    staging = out_dir / PARTIAL
    resuming = bool(cfg.backup.dir and step_folders(cfg.backup.dir))
    if not resuming and not cfg.strategy.is_parameter_server:  # a fresh run: nothing to continue
        shutil.rmtree(staging, ignore_errors=True)
    make_directory(staging, "--out", "give a directory for the run")
    if not resuming:  # (the parameter server's own backup stays in OUT/.partial/ps-backup)
        (staging / "metrics.jsonl").unlink(missing_ok=True)
    atomic_write_bytes(staging / "config.toml", to_toml(cfg.to_dict()).encode())


def promote(staging: Path, out_dir: Path) -> None:
    """Move a finished run's files from ``OUT/.partial`` into ``OUT``, ``summary.json`` last
    (its presence says the run directory is complete)."""
    if not staging.is_dir():
        return
    entries = sorted(staging.iterdir(), key=lambda p: p.name == "summary.json")
    for entry in entries:
        target = out_dir / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(entry, target)
    staging.rmdir()


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
    fresh = factory()  # an untrained copy: its size and shape, for the summary
    summary = {**result.summary, **{f"test_{k}": v for k, v in test.items()},
               **{f"baseline_{k}": v for k, v in splits.baselines.items()},
               "strategy": strategy.describe(),
               "parameters": count_parameters(fresh), "precision": cfg.train.precision,
               "total_seconds": time.perf_counter() - started, "history": result.history}
    summary.update(utilisation(fresh, summary, strategy.device))
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


def utilisation(model, summary: dict[str, Any], device) -> dict[str, float]:
    """Model FLOPs utilisation of a language model's run: FLOPs per token × tokens/s over the
    device's peak (reported where the peak is known: H100/H200 bf16)."""
    peak = peak_tflops(device)
    if not isinstance(model, GPT) or "tokens_per_second" not in summary or not peak:
        return {}
    return {"mfu": flops_per_token(model.config) * summary["tokens_per_second"] / (peak * 1e12)}


def evaluate_run(run_dir: str | Path, split: str = "test", *,
                 trust_model_target: bool = False) -> dict[str, Any]:
    """Re-score a trained run on its test split, from its config and weights alone.

    A ``model.target`` in the run's config.toml is imported only with ``trust_model_target``.

    Example::

        evaluate_run("runs/digits", "val")["val_accuracy"]
    """
    run_dir = Path(run_dir)
    if (run_dir / "variant.json").is_file():  # a compressed variant (hpmodel compress)
        return evaluate_variant(run_dir, split, trust_model_target=trust_model_target)
    cfg = load_run_config(run_dir / "config.toml", trust_model_target)
    splits = load_splits(cfg.data, cfg.seed)
    model = build_model(cfg.model, splits.input_shape, splits.num_classes)
    weights = load_weights(run_dir / "model.safetensors")
    fit = f"'{run_dir}/model.safetensors' does not fit the model of its config.toml"
    fix = "it was written by another run: train again, or restore the config.toml it was trained with"
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as error:  # a tensor of another shape
        first = str(error).strip().splitlines()[-1].strip()[:160]
        raise HpmodelError(f"{fit} ({first}): {fix}") from None
    if missing or unexpected:
        raise HpmodelError(f"{fit} (missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]}): {fix}")
    trainer = Trainer(strategy=get_strategy("one-device"), precision=cfg.train.precision,
                      batch_size=256, progress=False, task=cfg.train.task)
    model, _ = trainer.strategy.setup(model, None)
    scores = trainer.evaluate_model(model, getattr(splits, split))
    return {f"{split}_{key}": value for key, value in scores.items()}


__all__ = ["evaluate_run", "train_from_config", "train_worker"]
