"""Shared by the compression tests: one small fp32 MLP trained on digits per test module,
and the fixtures built on it (import them into a test module to use them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpmodel.bench.compress import train_reference
from hpmodel.compress.variants import load_source
from hpmodel.config import load_config
from hpmodel.runs.train import evaluate_run

# width 512: weights dominate the file size, so int8 files can be ~4× smaller
MLP_OVERRIDES = ['model.name="mlp"', "model.width=512", "model.depth=2", "optimizer.lr=0.001",
                 "train.epochs=8", "train.progress=false", 'strategy.name="one-device"',
                 'strategy.device="cpu"', "data.batch_size=32"]


def train_mlp(out: Path, extra: list[str] = ()) -> Path:
    """Train the reference MLP (about 4 s on one CPU core) into ``out`` and return it."""
    return train_reference(load_config(None, MLP_OVERRIDES + list(extra)), out)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """The trained fp32 MLP, loaded for compression."""
    return load_source(train_mlp(tmp_path_factory.mktemp("fp32")))


@pytest.fixture(scope="module")
def fp32(source):
    """The fp32 model's test accuracy, the bar every variant is held to."""
    return evaluate_run(source.run_dir)["test_accuracy"]
