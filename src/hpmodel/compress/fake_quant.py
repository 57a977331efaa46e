"""Int8 fake quantization of Conv and Linear layers (weights per channel or per tensor), for
QAT of CNNs.

torchao 0.18's ``QATConfig`` swaps ``nn.Linear`` and ``nn.Embedding`` only (its Conv2d QAT,
pytorch/ao#4933, is MX-only and unmerged), so convolutions are fake-quantized here with
PyTorch's own ops, ``torch.fake_quantize_per_channel_affine`` and
``torch.fake_quantize_per_tensor_affine``, whose backward is the straight-through estimator
(gradient 1 inside the range, 0 where clipped). The rounding matches what
:func:`hpmodel.compress.quantize.quantize_onnx_static` deploys with ONNX Runtime:

- weights: symmetric int8 in [-127, 127], one scale per output channel, scale = max|w| / 127
  (ORT's symmetric ``QInt8``), or one scale per tensor (``per_channel=False``, ORT's
  ``per_channel=False``); BatchNorm is folded into the conv first, as the ONNX export does;
- Conv inputs: asymmetric uint8 per tensor over a range that contains 0, scale =
  (max − min) / 255, zero point round(−min / scale) (ORT's ``MinMax`` calibration); the range
  is a moving average of batch minima and maxima during fine-tuning, frozen in eval mode;
- Linear inputs: the same uint8 scheme with each batch's own range (ORT's dynamic
  ``MatMulInteger``, which the static variant uses for Gemm).

Example::

    model = prepare(fold_batch_norm(model))   # then fine-tune with the Trainer
    model = convert(model)                    # plain layers, weights ready for static int8
"""

from __future__ import annotations

import torch
from torch import nn

CONVS = (nn.Conv1d, nn.Conv2d)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def fake_quantize_weight(weight: torch.Tensor, per_channel: bool = True) -> torch.Tensor:
    """Symmetric int8 per output channel (axis 0) or, ``per_channel=False``, one scale for
    the whole tensor (hardware with per-tensor int8 only); straight-through gradient."""
    if not per_channel:
        amax = weight.detach().abs().max()
        scale = float(amax / 127.0) if amax > 0 else 1.0
        return torch.fake_quantize_per_tensor_affine(weight, scale, 0, -127, 127)
    amax = weight.detach().flatten(1).abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax)).float()
    zero = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -127, 127)


def fake_quantize_uint8(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Asymmetric uint8 over [min(low, 0), max(high, 0)], ORT's scale and zero point."""
    low, high = torch.clamp(low, max=0.0).float(), torch.clamp(high, min=0.0).float()
    scale = torch.clamp((high - low) / 255.0, min=1e-8)
    zero = torch.clamp(torch.round(-low / scale), 0, 255).to(torch.int32)
    return torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255)


class FakeQuantized(nn.Module):
    """Wraps a Conv or Linear: fake-quantized input (uint8) and weight (int8 per channel).

    Example::

        layer = FakeQuantized(nn.Conv2d(8, 8, 3, groups=8))
    """

    def __init__(self, layer: nn.Module, momentum: float = 0.01, per_channel: bool = True):
        super().__init__()
        self.layer, self.momentum, self.per_channel = layer, momentum, per_channel
        self.dynamic = isinstance(layer, nn.Linear)  # ORT quantizes Linear inputs per call
        self.register_buffer("low", torch.zeros(()))
        self.register_buffer("high", torch.zeros(()))
        self.register_buffer("observed", torch.zeros((), dtype=torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic:
            x = fake_quantize_uint8(x, x.detach().min(), x.detach().max())
        else:
            if self.training:
                self._observe(x.detach())
            x = fake_quantize_uint8(x, self.low, self.high)
        weight = fake_quantize_weight(self.layer.weight, self.per_channel)
        if isinstance(self.layer, nn.Linear):
            return nn.functional.linear(x, weight, self.layer.bias)
        return self.layer._conv_forward(x, weight, self.layer.bias)

    def _observe(self, x: torch.Tensor) -> None:
        low, high = x.min(), x.max()
        if not self.observed:
            self.low.copy_(low), self.high.copy_(high), self.observed.fill_(True)
        else:
            self.low.lerp_(low, self.momentum), self.high.lerp_(high, self.momentum)


def fold_batch_norm(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm that directly follows a Conv (inside the same ``nn.Sequential``)
    into that conv's weight and bias, with the running statistics; the BatchNorm keeps its
    state-dict keys but becomes the identity (:class:`FoldedBatchNorm`). In place.

    Example::

        fold_batch_norm(model.eval())   # same outputs in eval mode, no BN left to train
    """
    for module in list(model.modules()):
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        for (_, conv), (name, norm) in zip(children, children[1:]):
            if isinstance(conv, CONVS) and type(norm) in BATCH_NORMS:
                _fold(conv, norm)
                setattr(module, name, FoldedBatchNorm(norm.num_features))
    return model


def _fold(conv: nn.Module, norm: nn.Module) -> None:
    with torch.no_grad():
        factor = norm.weight / torch.sqrt(norm.running_var + norm.eps)  # (out,)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
        conv.weight.mul_(factor.reshape(-1, *([1] * (conv.weight.dim() - 1))))
        conv.bias = nn.Parameter((bias - norm.running_mean) * factor + norm.bias)


class FoldedBatchNorm(nn.BatchNorm2d):
    """The identity, with BatchNorm's parameters set so that a plain BatchNorm loaded from its
    state dict is the identity too (weight 1, bias 0, mean 0, var 1 − eps) and frozen."""

    def __init__(self, num_features: int):
        super().__init__(num_features)
        with torch.no_grad():
            self.running_var.fill_(1.0 - self.eps)
        self.weight.requires_grad_(False)
        self.bias.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def prepare(model: nn.Module, per_channel: bool = True) -> nn.Module:
    """Wrap every Conv and Linear in :class:`FakeQuantized` (in place; returns ``model``);
    weights per output channel, or per tensor with ``per_channel=False``.

    Example::

        trainer.fit(prepare(fold_batch_norm(model)), optimizer, data, epochs=3)
    """
    for name, child in model.named_children():
        if isinstance(child, CONVS + (nn.Linear,)):
            setattr(model, name, FakeQuantized(child, per_channel=per_channel))
        elif not isinstance(child, FakeQuantized):
            prepare(child, per_channel)
    return model


def convert(model: nn.Module) -> nn.Module:
    """Unwrap :class:`FakeQuantized` layers: plain float layers whose weights the fine-tune
    adapted to int8 rounding; export them and quantize with ORT static int8.

    Example::

        export_onnx(convert(model), (1, 8, 8), "qat.onnx")
    """
    for name, child in model.named_children():
        if isinstance(child, FakeQuantized):
            setattr(model, name, child.layer)
        else:
            convert(child)
    return model


def add_folded_biases(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Give bias-free convs a bias where ``state_dict`` has one (weights saved after
    :func:`fold_batch_norm`), so plain ``load_state_dict`` fits. In place.

    Example::

        add_folded_biases(mobilenet((1, 8, 8), 10), load_weights("qat/model.safetensors"))
    """
    for name, layer in model.named_modules():
        bias = state_dict.get(f"{name}.bias")
        if isinstance(layer, CONVS) and layer.bias is None and bias is not None:
            layer.bias = nn.Parameter(torch.zeros_like(bias))
    return model


def has_convolutions(model: nn.Module) -> bool:
    """True when ``model`` has a Conv layer (torchao's QAT would leave it in float)."""
    return any(isinstance(m, CONVS) for m in model.modules())


__all__ = ["FakeQuantized", "FoldedBatchNorm", "add_folded_biases", "convert", "fake_quantize_uint8",
           "fake_quantize_weight", "fold_batch_norm", "has_convolutions", "prepare"]
