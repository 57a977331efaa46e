"""Small layers the reference models share."""

from __future__ import annotations

import math

import torch
from torch import nn


class Reshape(nn.Module):
    """Reshape each example (the batch dimension is kept): ``(B, *in) -> (B, *shape)``."""

    def __init__(self, *shape: int):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


class ChannelsFirst(nn.Module):
    """Move the last axis (channels) to the front of each example: ``(B, *S, C) -> (B, C, *S)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.movedim(-1, 1)


def as_channels_first(input_shape: tuple[int, ...], spatial_dims: int) -> tuple[int, ...]:
    """The (C, *spatial) shape a conv net sees for an example of ``input_shape``.

    1-D nets read a (C, L) signal: an image (C, H, W) becomes (C, H*W); a flat vector (L,)
    becomes (1, L). 2-D nets read (C, H, W): a flat vector of a square length becomes one
    square channel.
    """
    if spatial_dims == 1:
        if len(input_shape) == 1:
            return (1, input_shape[0])
        return (input_shape[0], math.prod(input_shape[1:]))
    if len(input_shape) == 3:
        return tuple(input_shape)
    if len(input_shape) == 2:
        return (1, *input_shape)
    side = math.isqrt(math.prod(input_shape))
    if side * side != math.prod(input_shape):
        raise ValueError(f"a 2-D cnn needs image-shaped input (C, H, W); got {input_shape}: "
                         "use model.name = 'cnn1d' or 'mlp' for flat features")
    return (1, side, side)
