"""Shared by the strategy tests: train the digits model a few steps under a strategy and
compare with OneDevice at the same global batch."""

from __future__ import annotations

import functools

import torch
from torch import nn

import hpmodel as hm
from hpmodel.config import DataConfig
from hpmodel.datasets import load_splits

GLOBAL_BATCH = 64
STEPS = 5


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Sequential(nn.Linear(64, 32), nn.Tanh()), nn.Linear(32, 10))


def sgd(params):
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


def adamw(params):
    return torch.optim.AdamW(params, lr=1e-2, weight_decay=0.01)


def train(strategy, replicas: int = 1, optimizer=sgd, **trainer_options):
    """Train STEPS steps of GLOBAL_BATCH examples split over ``replicas`` processes."""
    splits = load_splits(DataConfig(name="digits"), seed=0)
    trainer = hm.Trainer(strategy=strategy, batch_size=GLOBAL_BATCH // replicas, progress=False,
                         max_steps=STEPS, **trainer_options)
    return trainer.fit(small_model, optimizer, (splits.train.x[:512], splits.train.y[:512]),
                       epochs=1, val_data=splits.val)


@functools.lru_cache(maxsize=None)
def one_device(optimizer=sgd, **trainer_options):
    return train(hm.get_strategy("one-device", device="cpu"), 1, optimizer, **trainer_options)


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / a.norm().clamp_min(1e-12)).item()


def assert_matches_one_device(result, reference, tolerance: float = 1e-5) -> None:
    """Same weights (relative difference ≤ tolerance) and the same reduced metrics."""
    assert set(result.state_dict) == set(reference.state_dict)
    for key, value in reference.state_dict.items():
        assert relative_difference(value, result.state_dict[key]) <= tolerance, key
    assert result.summary["steps"] == reference.summary["steps"] > 0
    mine, theirs = result.history[0], reference.history[0]
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
        assert abs(mine[key] - theirs[key]) <= tolerance * max(1.0, abs(theirs[key])), key
