"""Recomputation and CPU offload: identical gradients, fewer saved-activation bytes."""

import pytest
import torch
from torch import nn

import hpmodel as hm
from hpmodel.kernel.errors import ConfigError, HpmodelError
from hpmodel.train.memory import (SavedTensorMeter, apply_recompute, offload_activations,
                                  parse_recompute, recompute_transform)


def deep_mlp(depth=6, width=64):
    torch.manual_seed(0)
    blocks = [nn.Flatten()] + [nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, width),
                                             nn.GELU()) for _ in range(depth)]
    return nn.Sequential(*blocks, nn.Linear(width, 10))


def gradients_and_bytes(recompute="none", offload=False):
    model = apply_recompute(deep_mlp(), parse_recompute(recompute))
    x, y = torch.randn(32, 64, generator=torch.Generator().manual_seed(1)), torch.arange(32) % 10
    with SavedTensorMeter(offload=offload) as meter:
        loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]  # same order with and without wrappers
    return grads, meter


def test_recompute_and_offload_give_identical_gradients_and_fewer_saved_bytes():
    base_grads, base = gradients_and_bytes()
    assert base.resident_bytes > 0 and base.offloaded_bytes == 0
    results = {mode: gradients_and_bytes(mode) for mode in ("every-2", "all")}
    results["offload"] = gradients_and_bytes(offload=True)
    for mode, (grads, meter) in results.items():
        assert len(grads) == len(base_grads), mode
        for index, grad in enumerate(grads):
            assert torch.equal(grad, base_grads[index]), (mode, index)
    every_2, every_1 = results["every-2"][1].resident_bytes, results["all"][1].resident_bytes
    assert every_1 < every_2 < base.resident_bytes
    offloaded = results["offload"][1]
    assert offloaded.resident_bytes == 0 and offloaded.offloaded_bytes == base.resident_bytes


def test_recompute_keeps_state_dict_keys():
    plain, wrapped = deep_mlp(), apply_recompute(deep_mlp(), 1)
    assert list(plain.state_dict()) == list(wrapped.state_dict())
    wrapped.load_state_dict(plain.state_dict())


def test_trainer_switches_give_the_same_weights():
    x, y = torch.randn(128, 64, generator=torch.Generator().manual_seed(2)), torch.arange(128) % 10

    def fit(**options):
        trainer = hm.Trainer(strategy=hm.get_strategy("one-device", device="cpu"), batch_size=32,
                             progress=False, **options)
        result = trainer.fit(deep_mlp, lambda p: torch.optim.SGD(p, lr=0.1), (x, y), epochs=1)
        return result.model.state_dict()

    base = fit()
    for options in ({"model_transform": recompute_transform("every-2")}, {"offload_activations": True}):
        other = fit(**options)
        for key, value in base.items():
            assert torch.allclose(other[key], value, rtol=1e-6, atol=1e-7), (options, key)


def test_bad_settings_are_refused():
    assert parse_recompute("none") == 0 and parse_recompute("all") == 1 and parse_recompute("every-3") == 3
    with pytest.raises(ConfigError, match="train.recompute = 'sometimes' is unknown"):
        parse_recompute("sometimes")
    with pytest.raises(HpmodelError, match="is not a sequence of blocks"):
        apply_recompute(nn.Linear(2, 2), 1)
    assert isinstance(offload_activations("cpu"), torch.autograd.graph.save_on_cpu)
