"""A small encoder-only transformer classifier over a sequence of feature vectors.

An image (C, H, W) is read as H tokens of C·W features; a flat vector of length L as L
tokens of one feature. ``torch.nn.TransformerEncoderLayer`` does the attention.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from hpmodel.models.layers import Reshape
from hpmodel.models.shapes import InputSpec, reference_options
from hpmodel.kernel.errors import ConfigError


class TokenEmbedding(nn.Module):
    """Project features to ``width`` and add a learned position embedding: (B, L, F) → (B, L, D)."""

    def __init__(self, length: int, features: int, width: int):
        super().__init__()
        self.project = nn.Linear(features, width)
        self.position = nn.Parameter(torch.randn(1, length, width) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(x) + self.position


class MeanPoolHead(nn.Module):
    """LayerNorm, mean over tokens, Linear: (B, L, D) → (B, classes)."""

    def __init__(self, width: int, num_classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(x).mean(dim=1))


def sequence_shape(input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(tokens, features) for an example of ``input_shape``."""
    if len(input_shape) == 1:
        return (input_shape[0], 1)
    if len(input_shape) == 2:
        return tuple(input_shape)
    return (input_shape[1], input_shape[0] * math.prod(input_shape[2:]))


def transformer(config, input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """Embedding → depth × TransformerEncoderLayer (pre-norm) → mean-pool head."""
    reference_options(config.options)  # an unknown model.options key stops, as for the cnns
    if config.width % config.heads:
        raise ConfigError(f"model.width = {config.width} must be divisible by model.heads = "
                          f"{config.heads}")
    length, features = sequence_shape(tuple(input_shape))
    blocks: list[nn.Module] = []
    if len(input_shape) == 3:
        # (B, C, H, W) → (B, H, C, W): rows become tokens.
        blocks.append(_RowsAsTokens())
    blocks += [Reshape(length, features), TokenEmbedding(length, features, config.width)]
    for _ in range(config.depth):
        blocks.append(nn.TransformerEncoderLayer(
            config.width, config.heads, dim_feedforward=4 * config.width,
            dropout=config.dropout, activation="gelu", batch_first=True, norm_first=True))
    blocks.append(MeanPoolHead(config.width, num_classes))
    model = nn.Sequential(*blocks)
    model.expected_input = InputSpec("transformer", tuple(input_shape), ("tokens", "features"),
                                     (length, features))
    return model


class _RowsAsTokens(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)
