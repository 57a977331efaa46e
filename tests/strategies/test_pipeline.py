"""Pipeline on real stage processes (Gloo): GPipe and 1F1B end with OneDevice's weights."""

import pytest
import torch
from torch import nn

import hpmodel as hm
from hpmodel.config import DataConfig
from hpmodel.datasets import load_splits
from hpmodel.errors import HpmodelError


def tiny_mlp():
    """Five blocks, so 2 and 4 stages both split it."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Sequential(nn.Linear(64, 32), nn.Tanh()),
                         nn.Sequential(nn.Linear(32, 32), nn.Tanh()),
                         nn.Sequential(nn.Linear(32, 32), nn.Tanh()), nn.Linear(32, 10))


def sgd(params):
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


@pytest.fixture(scope="module")
def digits():
    return load_splits(DataConfig(name="digits"), seed=0)


def train(strategy, digits, batch_size=30, grad_accum=1):
    trainer = hm.Trainer(strategy=strategy, batch_size=batch_size, grad_accum=grad_accum,
                         progress=False, max_steps=4, clip_grad_norm=5.0)
    return trainer.fit(tiny_mlp, sgd, (digits.train.x[:240], digits.train.y[:240]), epochs=1,
                       val_data=(digits.val.x[:100], digits.val.y[:100]))


@pytest.fixture(scope="module")
def reference(digits):
    return train(hm.get_strategy("one-device", device="cpu"), digits, batch_size=60)


def assert_same_weights(expected, actual):
    assert list(actual) == list(expected)  # the full model, original key names, on rank 0
    for key, value in expected.items():
        rel = (actual[key] - value).norm() / value.norm()
        assert rel <= 1e-5, (key, rel.item())


@pytest.mark.parametrize("stages, schedule, microbatches", [
    (2, "gpipe", 4), (2, "1f1b", 4), (4, "gpipe", 4), (4, "1f1b", 7)])
def test_pipeline_matches_one_device(digits, reference, stages, schedule, microbatches):
    # batch 30 × grad_accum 2 = 60 examples a step, as OneDevice's batch of 60;
    # M = 4 and 7 do not divide 30: the remainder runs as one-example micro-batches.
    strategy = hm.get_strategy("pipeline", devices=stages, schedule=schedule,
                               microbatches=microbatches)
    result = train(strategy, digits, batch_size=30, grad_accum=2)
    assert_same_weights(reference.state_dict, result.state_dict)
    assert result.history[0]["val_loss"] == pytest.approx(reference.history[0]["val_loss"], rel=1e-5)
    assert result.history[0]["val_accuracy"] == pytest.approx(reference.history[0]["val_accuracy"])
    assert result.history[0]["train_loss"] == pytest.approx(reference.history[0]["train_loss"], rel=1e-5)
