"""Batches of any structure and models that compute their own loss: dict batches, HF-style
outputs, token-weighted accumulation, regression, and torch.compile'd steps."""

from dataclasses import dataclass

import pytest
import torch
from torch import nn

import hpmodel as hm
from hpmodel.models import GPT, GPTConfig

TINY = GPTConfig(vocab_size=32, seq_len=16, width=32, depth=2, heads=2)


def gpt():
    torch.manual_seed(0)
    return GPT(TINY)


def token_batches(n=64, ignore_tail=False):
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, TINY.vocab_size, (n, TINY.seq_len + 1), generator=generator)
    labels = ids[:, 1:].clone()
    if ignore_tail:  # unequal target counts per example: accumulation must weight by tokens
        for i in range(n):
            labels[i, (i * 7) % TINY.seq_len:] = -100
    return {"input_ids": ids[:, :-1], "labels": labels}


def adamw(params):
    return torch.optim.AdamW(params, lr=3e-3)


def sgd(params):  # linear in the gradient: equal gradients give equal weights (AdamW's
    return torch.optim.SGD(params, lr=0.5, momentum=0.9)  # g/|g| amplifies rounding)


def fit(data, optimizer=sgd, **options):
    options = {"task": "causal-lm", "progress": False, "seed": 0, **options}
    return hm.Trainer(**options).fit(gpt, optimizer, data, epochs=1)


def close(a, b, tolerance=1e-5):
    return all(((a[k] - b[k]).norm() / b[k].norm().clamp_min(1e-12)) <= tolerance for k in a)


def test_dict_batches_train_a_gpt_with_its_own_loss_and_lm_metrics():
    result = fit(token_batches(), adamw, batch_size=16, log_every_steps=2)
    epoch = result.history[0]
    assert {"train_loss", "train_perplexity", "train_bits_per_byte"} <= set(epoch)
    assert result.summary["tokens"] == 64 * TINY.seq_len and result.summary["tokens_per_second"] > 0
    scores = hm.Trainer(task="causal-lm", progress=False).evaluate(result.model, token_batches())
    assert scores["perplexity"] == pytest.approx(torch.tensor(scores["loss"]).exp().item())


def test_accumulation_over_unequal_token_counts_equals_one_large_batch():
    data = token_batches(ignore_tail=True)
    whole = fit(data, batch_size=32)
    accumulated = fit(data, batch_size=8, grad_accum=4)
    assert whole.summary["steps"] == accumulated.summary["steps"] == 2
    assert close(accumulated.state_dict, whole.state_dict)


@dataclass
class Output:
    loss: torch.Tensor
    logits: torch.Tensor


class HFStyle(nn.Module):
    """Takes keyword tensors, ignores an attention mask, returns ``.loss`` and ``.logits``."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(4, 3)

    def forward(self, features, attention_mask=None, labels=None):
        logits = self.linear(features)
        return Output(nn.functional.cross_entropy(logits, labels), logits)


def test_an_hf_style_model_with_dict_batches_uses_its_own_loss():
    x = torch.randn(40, 4)
    data = {"features": x, "attention_mask": torch.ones(40, 4), "labels": (x[:, 0] > 0).long()}
    result = hm.Trainer(progress=False, batch_size=8).fit(HFStyle, adamw, data, epochs=3)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert 0.0 <= result.history[-1]["train_accuracy"] <= 1.0


def test_regression_reports_mse():
    x = torch.randn(64, 3)
    y = x @ torch.tensor([1.0, -2.0, 0.5])
    result = hm.Trainer(task="regression", progress=False, batch_size=16).fit(
        lambda: nn.Linear(3, 1), lambda p: torch.optim.SGD(p, lr=0.1), (x, y), epochs=5)
    assert result.history[-1]["train_mse"] < result.history[0]["train_mse"]


def test_compiled_steps_equal_eager_steps():
    data = token_batches(n=32)
    eager = fit(data, batch_size=16)
    compiled = fit(data, batch_size=16, compile="aot_eager")  # dynamo + AOT autograd, no codegen
    assert close(compiled.state_dict, eager.state_dict, tolerance=1e-4)


def test_an_unknown_task_is_one_line():
    with pytest.raises(hm.ConfigError, match="train.task = 'translation' is unknown"):
        hm.Trainer(task="translation")
