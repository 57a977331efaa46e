"""Convolutional classifiers for images (``cnn``) and 1-D signals (``cnn1d``).

No batch normalisation: its running statistics differ per replica, which would break the
rule that every strategy matches OneDevice.
"""

from __future__ import annotations

import torch
from torch import nn

from hpmodel.models.layers import ChannelsFirst, Reshape, as_channels_first
from hpmodel.models.shapes import AXES, InputSpec, reference_options, require_reference_layout


def cnn(config, input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """depth × (Conv2d 3×3, ReLU, MaxPool 2 while the image is ≥ 4 wide) → Linear.

    Reads (channels, height, width); ``model.options.channels_last`` reads (H, W, C)."""
    return _convnet(config, input_shape, num_classes, spatial_dims=2)


def cnn1d(config, input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """depth × (Conv1d k=5, ReLU, MaxPool 2 while the signal is ≥ 8 long) → Linear.

    Reads (channels, length); ``model.options.channels_last`` reads (length, channels)."""
    return _convnet(config, input_shape, num_classes, spatial_dims=1)


def _convnet(config, input_shape, num_classes, spatial_dims: int) -> nn.Sequential:
    name = "cnn" if spatial_dims == 2 else "cnn1d"
    conv, pool, kernel, min_size = ((nn.Conv2d, nn.MaxPool2d, 3, 4) if spatial_dims == 2
                                    else (nn.Conv1d, nn.MaxPool1d, 5, 8))
    input_shape = tuple(input_shape)
    channels_last = reference_options(config.options).channels_last and len(input_shape) > 1
    fed = (input_shape[-1], *input_shape[:-1]) if channels_last else input_shape
    shape = as_channels_first(fed, spatial_dims)
    require_reference_layout(name, config, input_shape, shape)
    blocks: list[nn.Module] = [ChannelsFirst(), Reshape(*shape)] if channels_last else [Reshape(*shape)]
    channels, size = shape[0], min(shape[1:])  # pool while every spatial axis is long enough
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
    model = nn.Sequential(*blocks)
    model.expected_input = InputSpec(name, input_shape, AXES[name], shape)
    return model
