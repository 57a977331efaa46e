"""The GPT causal LM: shapes, causality, its loss, its size and its registration."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from hpmodel.config import ModelConfig
from hpmodel.kernel.errors import ConfigError
from hpmodel.models import build_model, count_parameters
from hpmodel.models.gpt import (GPT, CausalLMOutput, GPTConfig, causal_lm_loss, flops_per_token,
                                gpt_125m, num_parameters)
from hpmodel.train.memory import apply_recompute

TINY = GPTConfig(seq_len=16, width=32, depth=2, heads=4)


def _tokens(batch: int = 2, length: int = 17, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_forward_shapes_and_uint8_input():
    torch.manual_seed(0)
    model = GPT(TINY)
    ids = _tokens(3, 16)
    logits = model(ids)
    assert logits.shape == (3, 16, 256)
    torch.testing.assert_close(model(ids.to(torch.uint8)), logits)  # bytes straight from shards
    assert model(ids[:, :5]).shape == (3, 5, 256)  # shorter than seq_len is fine


def test_changing_a_future_token_does_not_change_earlier_logits():
    torch.manual_seed(0)
    model = GPT(TINY).eval()
    ids = _tokens(2, 16)
    changed = ids.clone()
    changed[:, 10] = (changed[:, 10] + 1) % 256
    a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_loss_is_cross_entropy_of_the_next_token():
    torch.manual_seed(0)
    model = GPT(TINY)
    window = _tokens(4, 17)
    x, y = window[:, :-1], window[:, 1:]  # labels are the inputs shifted by one
    out = model(x, labels=y)
    assert isinstance(out, CausalLMOutput)
    expected = F.cross_entropy(model(x).reshape(-1, 256), y.reshape(-1))
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(causal_lm_loss(out.logits, y), expected)
    ignored = y.clone()
    ignored[:, :8] = -100
    torch.testing.assert_close(model(x, labels=ignored).loss,
                               F.cross_entropy(model(x)[:, 8:].reshape(-1, 256), y[:, 8:].reshape(-1)))
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("cfg", [TINY, GPTConfig(seq_len=8, width=24, depth=3, heads=2,
                                                 tie_embeddings=False, bias=False)])
def test_parameter_count_formula_matches_the_model(cfg):
    model = GPT(cfg)
    assert count_parameters(model) == num_parameters(cfg)
    position = cfg.seq_len * cfg.width
    untied_input = 0 if cfg.tie_embeddings else cfg.vocab_size * cfg.width
    assert num_parameters(cfg, non_embedding=True) == num_parameters(cfg) - position - untied_input
    assert flops_per_token(cfg) == 6 * num_parameters(cfg, True) + 12 * cfg.depth * cfg.seq_len * cfg.width


def test_125m_shape_is_gpt2_small():
    assert num_parameters(gpt_125m(vocab_size=50257, seq_len=1024)) == 124_439_808
    assert 95e6 < num_parameters(gpt_125m(tie_embeddings=False)) < 125e6


def test_build_model_reads_model_config_and_options():
    model = build_model(ModelConfig(name="gpt", width=32, depth=2, heads=2, options={"seq_len": 8}),
                        (12,), 256)
    assert isinstance(model, GPT) and model.config.seq_len == 8 and model.config.depth == 2
    assert build_model(ModelConfig(name="gpt", width=32, depth=1, heads=2), (12,), 0).config.vocab_size == 256
    with pytest.raises(ConfigError, match="divisible"):
        build_model(ModelConfig(name="gpt", width=30, depth=1, heads=4), (8,), 256)
    with pytest.raises(ConfigError, match="unknown"):
        build_model(ModelConfig(name="gpt", width=32, depth=1, heads=2, options={"vocab": 3}), (8,), 256)
    with pytest.raises(ConfigError, match="longer than"):
        build_model(ModelConfig(name="gpt", width=32, depth=1, heads=2), (8,), 256)(_tokens(1, 9))


def test_recompute_wraps_blocks_and_keeps_the_gradients():
    torch.manual_seed(0)
    model = GPT(TINY)
    wrapped = apply_recompute(GPT(TINY), every=1)
    wrapped.load_state_dict(model.state_dict())
    window = _tokens(2, 17)
    for m in (model, wrapped):
        m(window[:, :-1], labels=window[:, 1:]).loss.backward()
    for (name, a), b in zip(model.named_parameters(), wrapped.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)
