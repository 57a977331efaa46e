"""The small trained runs ``hpmodel bench compress`` compresses: train one model on one CPU
device and write the two files :func:`~hpmodel.compress.variants.load_source` reads.

Example::

    run = train_run(Path("/tmp/w/mlp"), ['model.name="mlp"'], epochs=4)
    accuracy_on_test(load_source(run).model, load_source(run))
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from hpmodel.config import load_config
from hpmodel.datasets import load_splits
from hpmodel.kernel.files import atomic_write_bytes, save_weights
from hpmodel.kernel.schema import to_toml
from hpmodel.models import build_model
from hpmodel.strategies import get_strategy
from hpmodel.train.optim import optimizer_factory, schedule_factory
from hpmodel.train.trainer import Trainer


def train_reference(cfg, out: Path) -> Path:
    """Train ``cfg``'s model on one CPU device and write the two files ``load_source`` reads
    (``config.toml``, ``model.safetensors``). The bench's reference models only need these,
    so it does not go through the full run machinery (``hpmodel.runs.train``). The initial
    weights come from ``cfg.seed`` (torch's default generator starts from a random seed in
    each process, and the Trainer seeds only after the model is built)."""
    out.mkdir(parents=True, exist_ok=True)
    splits = load_splits(cfg.data, cfg.seed)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, splits.input_shape, splits.num_classes)
    trainer = Trainer(strategy=get_strategy("one-device", device="cpu"), seed=cfg.seed,
                      batch_size=cfg.data.batch_size, progress=False,
                      schedule=schedule_factory(cfg.schedule))
    result = trainer.fit(model, optimizer_factory(cfg.optimizer), splits.train, epochs=cfg.train.epochs)
    atomic_write_bytes(out / "config.toml", to_toml(cfg.to_dict()).encode())
    save_weights(out / "model.safetensors", result.model.state_dict())
    return out


def train_run(out: Path, overrides: list[str], epochs: int) -> Path:
    """:func:`train_reference` of the default config plus ``overrides`` (``--set`` syntax),
    batch 32, ``epochs`` epochs."""
    base = ["train.progress=false", 'strategy.name="one-device"', 'strategy.device="cpu"',
            "data.batch_size=32", f"train.epochs={epochs}"]
    return train_reference(load_config(None, base + overrides), out)


def accuracy_on_test(model: nn.Module, source) -> float:
    """Accuracy of the float ``model`` on ``source``'s test split."""
    with torch.no_grad():
        logits = model.eval()(source.splits.test.x)
    return (logits.argmax(-1) == source.splits.test.y).float().mean().item()


__all__ = ["accuracy_on_test", "train_reference", "train_run"]
