"""Small depthwise-separable CNNs (MobileNet-style blocks), to exercise int8 quantization.

In :func:`mobilenet` each block is a depthwise 3×3 conv + BatchNorm + ReLU6 followed by a
pointwise 1×1 conv + BatchNorm with no activation (MobileNetV2's linear projection): the
projection's outputs are unbounded and differ in range from channel to channel, and the
depthwise conv reads them with one activation scale per tensor under int8. On the 8×8 digits
that costs nothing measurable (docs/compression.md). Plain ``torch.nn``; it lives in
``compress`` (not ``models``) because it exists to exercise quantization. Build it through the
config with ``model.target = "hpmodel.compress.mobilenet:mobilenet"`` (or ``:mobilenet_v1``).

:func:`mobilenet_v1` is MobileNetV1's layout (Howard et al. 2017) instead: ReLU6 after both
convs of each block, channels ×1, 2, 2, 4, 4, 8, 8 with strides 1, 2, 1, 2, 1, 2, 1, on the
input resized in the model (digits 8×8 → 32×32, so the strided blocks still see pixels). It is
the case where *per-tensor* weight scales break static int8 as they break MobileNets on
ImageNet: some depthwise channels go (nearly) dead in training, their BatchNorm variance
collapses, and folding BN multiplies those channels' weights by γ/√(var + ε), a few hundred
times the others' (Nagel et al. 2019, "Data-Free Quantization", fig. 2: per-channel ranges
after folding span 100× in MobileNetV2; Krishnamoorthi 2018, "Quantizing deep convolutional
networks for efficient inference", table 2: MobileNetV1 with per-layer weights drops to 0.1 %
top-1, per-channel keeps 70 %). One scale per tensor then rounds every other channel to a few
levels; per-channel scales lose nothing.

Example::

    model = mobilenet((1, 8, 8), 10, width=16, depth=3)
    model(torch.zeros(2, 1, 8, 8)).shape     # (2, 10)
    mobilenet_v1((1, 8, 8), 10, width=16, input_size=32)   # 7 blocks, about 20 k parameters
"""

from __future__ import annotations

import torch
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


# MobileNetV1's body (Howard et al. 2017, table 1) without its last 5 repeats: (channels ×, stride)
V1_BLOCKS = ((1, 1), (2, 2), (2, 1), (4, 2), (4, 1), (8, 2), (8, 1))


class Resize(nn.Module):
    """Bilinear resize of (B, C, H, W) images to ``size``×``size`` (ONNX ``Resize``, kept float)."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear",
                                         align_corners=False)

    def extra_repr(self) -> str:
        return f"size={self.size}"


def v1_block(channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """MobileNetV1's block: depthwise 3×3 + BN + ReLU6, pointwise 1×1 + BN + ReLU6."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, stride=stride, padding=1, groups=channels, bias=False),
        nn.BatchNorm2d(channels), nn.ReLU6(),
        nn.Conv2d(channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU6())


def mobilenet_v1(input_shape, num_classes: int, width: int = 16, input_size: int = 32,
                 blocks: int = len(V1_BLOCKS)) -> nn.Sequential:
    """Resize to ``input_size`` (0: keep) → stem conv 3×3 + BN + ReLU6 → the first ``blocks``
    of :data:`V1_BLOCKS` (channels ``width`` × multiple) → global average pool → Linear.

    Example::

        mobilenet_v1((1, 8, 8), 10, width=4, input_size=16, blocks=3)   # a tiny one for tests
    """
    shape = as_channels_first(tuple(input_shape), 2)
    layers: list[nn.Module] = [Reshape(*shape)] + ([Resize(input_size)] if input_size else [])
    layers.append(nn.Sequential(nn.Conv2d(shape[0], width, 3, padding=1, bias=False),
                                nn.BatchNorm2d(width), nn.ReLU6()))
    channels = width
    for multiple, stride in V1_BLOCKS[:blocks]:
        layers.append(v1_block(channels, width * multiple, stride))
        channels = width * multiple
    layers.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)))
    return nn.Sequential(*layers)


__all__ = ["Resize", "V1_BLOCKS", "mobilenet", "mobilenet_v1", "separable_block", "v1_block"]
