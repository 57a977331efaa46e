"""Mirrored on two real CPU processes (Gloo) matches OneDevice at the same global batch."""

import torch

import hpmodel as hm
from hpmodel.config import DataConfig
from hpmodel.datasets import load_splits
from hpmodel.kernel.errors import HpmodelError
from torch import nn

import pytest


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))


def sgd(params):
    return torch.optim.SGD(params, lr=0.1)


def train(strategy, batch_size):
    splits = load_splits(DataConfig(name="digits"), seed=0)
    trainer = hm.Trainer(strategy=strategy, batch_size=batch_size, progress=False, max_steps=6)
    return trainer.fit(small_model, sgd, (splits.train.x[:512], splits.train.y[:512]), epochs=1,
                       val_data=splits.val)


def test_mirrored_two_processes_match_one_device():
    one = train(hm.get_strategy("one-device", device="cpu"), batch_size=64)
    two = train(hm.get_strategy("mirrored", devices=2), batch_size=32)  # 2 × 32 = 64 global
    for key, value in one.state_dict.items():
        assert torch.allclose(value, two.state_dict[key], rtol=1e-5, atol=1e-6), key
    assert two.history[0]["val_accuracy"] == pytest.approx(one.history[0]["val_accuracy"], abs=1e-6)
    assert two.summary["steps"] == one.summary["steps"] == 6


def test_nccl_without_gpus_stops_before_starting():
    if torch.cuda.is_available():
        pytest.skip("this machine has GPUs")
    with pytest.raises(HpmodelError, match="needs CUDA GPUs and this machine has none"):
        hm.get_strategy("mirrored", devices=2, backend="nccl").launch(print)
