"""Pruning: schedules follow TF-MOT's formula, stripped weights have the requested sparsity,
structured pruning really shrinks the model, 2:4 masks keep 2 of every 4."""

import pytest
import torch
from torch import nn

from compress_fixtures import fp32, source, train_mlp  # noqa: F401 (fixtures)
from hpmodel.compress import prune
from hpmodel.compress.variants import CompressOptions, build_variant
from hpmodel.config import ModelConfig
from hpmodel.models import build_model, count_parameters
from hpmodel.runs.train import evaluate_run
from hpmodel.kernel.files import load_weights


def test_polynomial_decay_matches_the_formula():
    s0, s1, t0, t1 = 0.1, 0.9, 20, 120
    schedule = prune.PolynomialDecay(s0, s1, begin_step=t0, end_step=t1, power=3, frequency=10)
    for t in (20, 35, 70, 101, 120):
        assert schedule(t) == pytest.approx(s1 + (s0 - s1) * (1 - (t - t0) / (t1 - t0)) ** 3)
    assert schedule(0) == pytest.approx(s0) and schedule(500) == pytest.approx(s1)
    assert [t for t in range(200) if schedule.active(t)] == list(range(20, 121, 10))
    constant = prune.ConstantSparsity(0.5, begin_step=5, frequency=5)
    assert constant(7) == 0.5 and [t for t in range(16) if constant.active(t)] == [5, 10, 15]


@pytest.mark.parametrize("amount", [0.5, 0.8])
def test_stripped_weights_have_the_requested_sparsity(amount):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    prune.apply_magnitude_pruning(model, amount / 2)
    prune.apply_magnitude_pruning(model, amount)  # the schedule's later, larger step
    prune.strip_pruning(model)
    assert not any(nn.utils.prune.is_pruned(m) for m in model.modules())
    assert set(model.state_dict()) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    for layer in (model[0], model[2]):
        assert (layer.weight == 0).float().mean().item() == pytest.approx(amount, abs=1e-3)


def test_scheduled_pruning_during_fine_tune_keeps_accuracy(source, fp32, tmp_path):
    folder = build_variant(source, "prune", tmp_path, CompressOptions(sparsity=0.5, fine_tune_epochs=3))
    weights = load_weights(folder / "model.safetensors")
    matrices = [w for k, w in weights.items() if k.endswith("weight")]
    zeros = sum(int((w == 0).sum()) for w in matrices) / sum(w.numel() for w in matrices)
    assert zeros == pytest.approx(0.5, abs=0.01)
    assert evaluate_run(folder)["test_accuracy"] >= fp32 - 0.01


def test_structured_pruning_shrinks_and_loads_in_plain_pytorch(source, fp32, tmp_path):
    folder = build_variant(source, "structured", tmp_path,
                           CompressOptions(structured_amount=0.5, fine_tune_epochs=3))
    weights = load_weights(folder / "model.safetensors")
    model = build_model(source.cfg.model, source.splits.input_shape, source.splits.num_classes)
    prune.resize_to_weights(model, weights)
    model.load_state_dict(weights, strict=True)
    # structured_amount is the share of parameters removed (Torch-Pruning), ±10%
    assert count_parameters(model) == pytest.approx(0.5 * count_parameters(source.model), rel=0.1)
    assert model(source.splits.test.x[:4]).shape == (4, 10)
    assert evaluate_run(folder)["test_accuracy"] >= fp32 - 0.01


@pytest.mark.parametrize("name", ["cnn", "cnn1d"])
def test_structured_pruning_handles_conv_to_linear(name):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, width=8, depth=2), (1, 8, 8), 10).eval()
    before = count_parameters(model)
    pruned = prune.prune_structured(model, 0.5)
    convs = [m for m in pruned.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))]
    assert [c.out_channels for c in convs] == [4, 8]
    assert count_parameters(pruned) < before
    assert pruned(torch.randn(3, 1, 8, 8)).shape == (3, 10)


def test_semi_structured_mask_keeps_two_of_four():
    weight = torch.randn(64, 128)
    mask = prune.semi_structured_mask(weight)
    groups = mask.reshape(-1, 4)
    assert (groups.sum(1) == 2).all()
    kept = (weight.abs() * mask).reshape(-1, 4).sum(1)
    assert (kept >= weight.abs().reshape(-1, 4).topk(2, dim=1).values.sum(1) - 1e-6).all()
    model = prune.apply_semi_structured(nn.Sequential(nn.Linear(128, 64)), to_sparse=False)
    assert prune.sparsity(model) == 0.5


@pytest.mark.gpu
def test_semi_structured_sparse_linear_on_gpu():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    layer = nn.Sequential(nn.Linear(256, 128)).cuda().half()
    dense = prune.apply_semi_structured(layer, to_sparse=False)[0].weight.detach().clone()
    sparse = prune.apply_semi_structured(nn.Sequential(nn.Linear(256, 128)).cuda().half(), to_sparse=True)
    x = torch.randn(64, 256, device="cuda", dtype=torch.half)
    assert sparse(x).shape == (64, 128) and dense.shape == (128, 256)
