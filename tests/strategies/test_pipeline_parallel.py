"""Pipeline on real stage processes (Gloo): GPipe and 1F1B, 2 and 4 stages, and 2 stages × 2
replicas end with OneDevice's weights at the same batch; unsplittable models are refused."""

import pytest
import torch
from torch import nn

import hpmodel as hm
from hpmodel.config import DataConfig
from hpmodel.datasets import load_splits
from hpmodel.kernel.errors import HpmodelError


def tiny_mlp():
    """Five blocks, so 2 and 4 stages both split it."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Sequential(nn.Linear(64, 32), nn.Tanh()),
                         nn.Sequential(nn.Linear(32, 32), nn.Tanh()),
                         nn.Sequential(nn.Linear(32, 32), nn.Tanh()), nn.Linear(32, 10))


def sgd(params):
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


def train(strategy, batch_size=30, grad_accum=1):
    digits = load_splits(DataConfig(name="digits"), seed=0)
    trainer = hm.Trainer(strategy=strategy, batch_size=batch_size, grad_accum=grad_accum,
                         progress=False, max_steps=4, clip_grad_norm=5.0)
    result = trainer.fit(tiny_mlp, sgd, (digits.train.x[:240], digits.train.y[:240]), epochs=1,
                         val_data=(digits.val.x[:100], digits.val.y[:100]))
    return {"state_dict": result.state_dict, "history": result.history}


def train_pipelines(variants):
    """In every launched process: train one Pipeline per variant on the same process group."""
    results = []
    for options, batch_size, grad_accum in variants:
        strategy = hm.get_strategy("pipeline", **options)
        results.append(train(strategy, batch_size, grad_accum))
    return results


# (strategy options, per-replica batch, grad_accum): every variant steps on 60 examples.
# One launch of 4 processes runs all variants (process start-up dominates on 2 cores):
# 4 stages, and 2 stages × 2 replicas (a 2-D mesh), each with GPipe and 1F1B.
# M = 4, 7 and 3 do not all divide the batch: remainders run as one-example micro-batches.
VARIANTS = [({"devices": 4, "schedule": "gpipe", "microbatches": 4}, 30, 2),
            ({"devices": 4, "schedule": "1f1b", "microbatches": 7}, 60, 1),
            ({"devices": 4, "stages": 2, "schedule": "gpipe", "microbatches": 4}, 15, 2),
            ({"devices": 4, "stages": 2, "schedule": "1f1b", "microbatches": 3}, 30, 1)]


@pytest.fixture(scope="module")
def reference():
    return train(hm.get_strategy("one-device", device="cpu"), batch_size=60)


def assert_matches(reference, result):
    expected, actual = reference["state_dict"], result["state_dict"]
    assert list(actual) == list(expected)  # the full model, original key names, on rank 0
    for key, value in expected.items():
        rel = (actual[key] - value).norm() / value.norm()
        assert rel <= 1e-5, (key, rel.item())
    ref, got = reference["history"][0], result["history"][0]
    for metric in ("train_loss", "val_loss", "val_accuracy", "train_accuracy"):
        assert got[metric] == pytest.approx(ref[metric], rel=1e-5), metric


def test_two_and_four_stage_pipelines_match_one_device(reference):
    results = hm.get_strategy("pipeline", devices=4).launch(train_pipelines, VARIANTS)
    assert len(results) == len(VARIANTS)
    for (options, _, _), result in zip(VARIANTS, results):
        try:
            assert_matches(reference, result)
        except AssertionError as error:
            raise AssertionError(f"{options}: {error}") from None


def test_unsplittable_models_are_refused():
    strategy = hm.get_strategy("pipeline", devices=4)

    class NotSequential(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(HpmodelError, match="cannot split a NotSequential: give an nn.Sequential"):
        strategy.setup(NotSequential())
    with pytest.raises(HpmodelError, match="3 block.* but the pipeline has 4 stages"):
        strategy.setup(nn.Sequential(nn.Linear(2, 2), nn.Tanh(), nn.Linear(2, 2)))


def test_weights_tied_across_stages_are_refused():
    embed, head = nn.Linear(4, 4), nn.Linear(4, 4)
    head.weight = embed.weight
    model = nn.Sequential(embed, nn.Tanh(), nn.Tanh(), head)
    strategy = hm.get_strategy("pipeline", devices=2, split_points=[2])
    with pytest.raises(HpmodelError, match="shared between blocks of different stages .0.weight and 3.weight"):
        strategy.setup(model)
    with pytest.raises(HpmodelError, match="split_points = \\[5\\] must be 1 increasing"):
        hm.get_strategy("pipeline", devices=2, split_points=[5]).setup(model)


def test_tasks_other_than_classification_are_refused_before_any_process_starts():
    trainer = hm.Trainer(strategy=hm.get_strategy("pipeline", devices=2), task="causal-lm",
                         progress=False)
    tokens = torch.randint(0, 16, (8, 4))
    model = nn.Sequential(nn.Embedding(16, 8), nn.Linear(8, 16))
    with pytest.raises(HpmodelError, match="strategy 'pipeline' trains .* not task 'causal-lm'"):
        trainer.fit(model, lambda p: torch.optim.SGD(p, lr=0.1), (tokens, tokens))
    with pytest.raises(HpmodelError, match="not task 'causal-lm': use mirrored or sharded"):
        trainer.evaluate(model, (tokens, tokens))
