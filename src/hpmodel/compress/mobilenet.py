"""A small depthwise-separable CNN (MobileNet-style blocks), the case where QAT matters.

Each block is a depthwise 3×3 conv + BatchNorm + ReLU6 followed by a pointwise 1×1 conv +
BatchNorm with no activation (MobileNetV2's linear projection): the projection's outputs are
unbounded and differ in range from channel to channel, and the depthwise conv reads them with
one activation scale per tensor under int8, which is where post-training quantization of
MobileNets loses accuracy. Plain ``torch.nn``; it lives in ``compress`` (not ``models``)
because it exists to exercise quantization. Build it through the config with
``model.target = "hpmodel.compress.mobilenet:mobilenet"``.

Example::

    model = mobilenet((1, 8, 8), 10, width=16, depth=3)
    model(torch.zeros(2, 1, 8, 8)).shape     # (2, 10)
"""

from __future__ import annotations


from torch import nn

from hpmodel.models.layers import Reshape, as_channels_first


def separable_block(channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    """Depthwise 3×3 (groups = channels) + BN + ReLU6, then pointwise 1×1 + BN (linear)."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, stride=stride, padding=1, groups=channels, bias=False),
        nn.BatchNorm2d(channels), nn.ReLU6(),
        nn.Conv2d(channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))


def mobilenet(input_shape, num_classes: int, width: int = 16, depth: int = 3) -> nn.Sequential:
    """Stem conv 3×3 + BN + ReLU6 → ``depth`` separable blocks (the second one strided,
    channels doubling from the second on) → global average pool → Linear.

    Example::

        mobilenet((1, 8, 8), 10)    # digits images, about 3 k parameters
    """
    shape = as_channels_first(tuple(input_shape), 2)
    blocks: list[nn.Module] = [Reshape(*shape), nn.Sequential(
        nn.Conv2d(shape[0], width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU6())]
    channels = width
    for index in range(depth):
        out = width * (2 if index else 1)
        blocks.append(separable_block(channels, out, stride=2 if index == 1 else 1))
        channels = out
    blocks.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)))
    return nn.Sequential(*blocks)


__all__ = ["mobilenet", "separable_block"]
