"""Convolutional classifiers for images (``cnn``) and 1-D signals (``cnn1d``).

No batch normalisation: its running statistics differ per replica, which would break the
rule that every strategy matches OneDevice.
"""

from __future__ import annotations

import torch
from torch import nn

from hpmodel.models.layers import Reshape, as_channels_first


def cnn(config, input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """depth × (Conv2d 3×3, ReLU, MaxPool 2 while the image is ≥ 4 wide) → Linear."""
    return _convnet(config, input_shape, num_classes, spatial_dims=2)


def cnn1d(config, input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """depth × (Conv1d k=5, ReLU, MaxPool 2 while the signal is ≥ 8 long) → Linear."""
    return _convnet(config, input_shape, num_classes, spatial_dims=1)


def _convnet(config, input_shape, num_classes, spatial_dims: int) -> nn.Sequential:
    conv, pool, kernel, min_size = ((nn.Conv2d, nn.MaxPool2d, 3, 4) if spatial_dims == 2
                                    else (nn.Conv1d, nn.MaxPool1d, 5, 8))
    shape = as_channels_first(tuple(input_shape), spatial_dims)
    blocks: list[nn.Module] = [Reshape(*shape)]
    channels, size = shape[0], shape[-1]
    for index in range(config.depth):
        out = config.width * (2 ** min(index, 2))
        layers = [conv(channels, out, kernel, padding=kernel // 2), nn.ReLU()]
        if size >= min_size:
            layers.append(pool(2))
            size //= 2
        if config.dropout:
            layers.append(nn.Dropout(config.dropout))
        blocks.append(nn.Sequential(*layers))
        channels = out
    with torch.no_grad():
        features = nn.Sequential(*blocks)(torch.zeros(1, *input_shape)).numel()
    blocks.append(nn.Sequential(nn.Flatten(), nn.Linear(features, num_classes)))
    return nn.Sequential(*blocks)
