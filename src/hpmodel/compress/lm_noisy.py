"""Noise for a GPT student (noisy student, Xie et al. 2020, for text): random token
replacement on the input and stochastic depth on every block, as hooks, so the student's
weights keep their names and load into the plain GPT; dropout comes from ``model.dropout``.
Every hook is inert in eval mode: a student that becomes the next teacher labels clean.

PyTorch's forward hooks do the work; :class:`~hpmodel.compress.noisy_student.StochasticDepth`
is the classifier's own hook.

Example::

    student = add_lm_noise(GPT(cfg), token_noise=0.1, stochastic_depth=0.1)
    student.train(); student(input_ids)   # ~10 % of the input tokens replaced, blocks dropped
"""

from __future__ import annotations

import torch
from torch import nn

from hpmodel.compress.noisy_student import StochasticDepth
from hpmodel.compress.student import blocks_of
from hpmodel.kernel.errors import HpmodelError


class TokenNoise:
    """Forward pre-hook on a GPT's embeddings: in training, each input token is replaced by a
    uniformly random one with probability ``p`` (the labels, the next tokens, stay clean).

    Example::

        gpt[0].register_forward_pre_hook(TokenNoise(0.1, vocab_size=256))
    """

    def __init__(self, p: float, vocab_size: int):
        if not 0 <= p < 1:
            raise HpmodelError(f"distill.token_noise = {p} must be in [0, 1)")
        self.p, self.vocab_size = float(p), int(vocab_size)

    def __call__(self, module: nn.Module, inputs: tuple):
        if not module.training or not self.p:
            return None
        ids = inputs[0]
        swap = torch.rand(ids.shape, device=ids.device) < self.p
        return (torch.where(swap, torch.randint_like(ids, self.vocab_size), ids), *inputs[1:])


def add_lm_noise(model: nn.Module, token_noise: float, stochastic_depth: float) -> nn.Module:
    """Attach token noise (on the embeddings) and stochastic depth (on each block) to a GPT,
    in place; returns it."""
    model[0].register_forward_pre_hook(TokenNoise(token_noise, model.config.vocab_size))
    if stochastic_depth:
        for block in blocks_of(model):
            block.register_forward_hook(StochasticDepth(stochastic_depth))
    return model


__all__ = ["TokenNoise", "add_lm_noise"]
