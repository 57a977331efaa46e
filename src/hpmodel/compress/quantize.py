"""Quantization: int8 (dynamic, static with calibration, QAT), float16/bf16 and fp8.

Who does the work:

- ``dynamic-int8`` / ``static-int8`` for CPU deployment: ONNX Runtime's quantizer
  (``quantize_dynamic``; ``quantize_static`` in QDQ format with per-channel weights and a
  ``CalibrationDataReader`` fed from the data pipeline).
- ``float16`` for GPU deployment: ``onnxruntime.transformers.float16`` converts the ONNX
  file; ``float16`` / ``bf16`` in PyTorch is ``module.to(dtype)``.
- ``qat``: torchao's QAT flow (``QATConfig`` prepare → fine-tune → convert) fakes int8
  weights (per channel, symmetric) and activations (per token) in forward and backward;
  the converted float model is then quantized statically by ONNX Runtime, whose rounding
  it has learned to tolerate. torchao's QAT covers Linear layers only: models with
  convolutions use :mod:`hpmodel.compress.fake_quant` instead (every Conv and Linear).
- ``fp8`` (GPU, compute capability ≥ 8.9): ``torch._scaled_mm`` with row-wise scales,
  the kernel torchao's float8 row-wise recipe calls; plain torch so it runs on the GPU
  machines without torchao.

Example::

    quantize_onnx_dynamic("fp32/model.onnx", "int8/model.onnx")
    quantize_onnx_static("fp32/model.onnx", "qdq/model.onnx", calibration_batches(x_train, 8, 64))
"""

from __future__ import annotations

import logging
import contextlib
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import nn

from hpmodel.compress import export, onnx_graph
from hpmodel.compress.export import INPUT_NAME
from hpmodel.kernel.errors import HpmodelError
from hpmodel.kernel.files import atomic_write_bytes
from hpmodel.kernel.quiet import quiet_imports


@contextlib.contextmanager
def _quiet_onnxruntime():
    """ORT's quantizer logs a pre-processing hint on the root logger for every call."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


CONV_KERNELS = ("weight-only", "integer")


def quantize_onnx_dynamic(source: str | Path, target: str | Path, conv_kernel: str = "weight-only") -> Path:
    """int8 weights (per channel) for every Linear and Conv, activations quantized at run time.

    Each op gets the faster correct kernel on x86 CPUs: Gemm/MatMul become ORT's dynamic
    ``MatMulInteger`` (``quantize_dynamic``); Conv weights are stored int8 and dequantized
    in front of ORT's fp32 Conv (``conv_kernel="weight-only"``, TFLite's dynamic-range
    scheme), because ORT's ``ConvInteger`` ran 7.5× slower than fp32 Conv on the digits CNN
    (``conv_kernel="integer"`` keeps it, for comparison). Names are compacted and all-zero
    zero points dropped, so the file is close to its weight bytes.

    Example::

        quantize_onnx_dynamic("model.onnx", "model.int8.onnx")
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if conv_kernel not in CONV_KERNELS:
        raise HpmodelError(f"conv kernel '{conv_kernel}' is unknown: choose {' or '.join(CONV_KERNELS)}")
    op_types = ["MatMul", "Gemm"] + (["Conv"] if conv_kernel == "integer" else [])
    with _quiet_onnxruntime():
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=op_types)
    model = onnx.load(str(target))
    if conv_kernel == "weight-only" and onnx_graph.weight_only_int8(model, {"Conv"}):
        # let ORT fold the dequantized weights into constants at load time, so its fp32 Conv
        # (NCHWc, fused with ReLU) runs: 0.36 ms instead of 0.80 ms at batch 64 on digits
        export.set_session_config(model, {"session.disable_quant_qdq": "1"})
    _finish(model, target)
    return Path(target)


def _finish(model, target: str | Path) -> None:
    """Drop zero zero-points, shorten names, save atomically."""
    onnx_graph.drop_zero_points(model)
    onnx_graph.compact_names(model)
    atomic_write_bytes(target, model.SerializeToString())


def calibration_batches(x: torch.Tensor, batches: int, batch_size: int) -> list[np.ndarray]:
    """The first ``batches`` batches of ``x`` (shuffled with a fixed seed) as float32 arrays.

    Example::

        calibration_batches(splits.train.x, batches=8, batch_size=64)
    """
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    picked = x[order[: batches * batch_size]].float()
    return [chunk.contiguous().numpy() for chunk in picked.split(batch_size)]


STATIC_OP_TYPES = ["Conv", "Relu", "MaxPool"]
LINEAR_OP_TYPES = ["Gemm", "MatMul"]
LINEAR_KERNELS = ("dynamic", "static")


def quantize_onnx_static(source: str | Path, target: str | Path, batches: Iterable[np.ndarray],
                         method: str = "minmax", activations: str = "uint8",
                         quantize_bias: bool = False, linear: str = "dynamic",
                         per_channel: bool = True) -> Path:
    """int8 weights (per channel) for every Conv and Linear; convolution activations calibrated
    on ``batches`` (QDQ: ORT fuses each DQ → Conv → Q into ``QLinearConv`` when it loads the file).

    The kernel is chosen per op: with ``linear="dynamic"`` (default) Gemm/MatMul take ORT's
    ``MatMulInteger`` with activations quantized per call, because per-channel QDQ Gemm ran
    no faster than fp32 (12.8 vs 10.3 ms at batch 64 on a 2.4 M-parameter MLP, 1 thread)
    while ``MatMulInteger`` ran 9.5× faster; ``linear="static"`` keeps QDQ Gemm/MatMul.

    ``method`` is ONNX Runtime's calibration: ``minmax``, ``entropy`` or ``percentile``.
    Activations are ``uint8`` by default: on x86 CPUs ORT's u8·s8 kernels ran about 2× faster
    than s8·s8 in our measurements (docs/compression.md). Only Gemm/MatMul/Conv inputs are
    quantized, plus ReLU and max pooling between them (so a conv block stays in int8):
    element-wise ops (GELU's Erf, Add, Mul) stay float, which is both faster and more accurate
    than ORT's QLinearAdd/QLinearMul chains. Weight and bias zero points (all zero) are
    dropped and names compacted; biases stay float32 (``quantize_bias=True``: int32 plus a
    scale per channel, no faster on ORT 1.32 and 4 more bytes per channel).

    Example::

        quantize_onnx_static("model.onnx", "model.qdq.onnx", calibration_batches(x, 8, 64))
    """
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_dynamic, quantize_static)

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if linear not in LINEAR_KERNELS:
        raise HpmodelError(f"linear kernel '{linear}' is unknown: choose {' or '.join(LINEAR_KERNELS)}")
    if method not in methods:
        raise HpmodelError(f"calibration method '{method}' is unknown: choose {', '.join(methods)}")
    kinds = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    if activations not in kinds:
        raise HpmodelError(f"activation type '{activations}' is unknown: choose uint8 or int8")
    feeds = [{INPUT_NAME: np.ascontiguousarray(b, dtype=np.float32)} for b in batches]
    if not feeds:
        raise HpmodelError("static int8 needs calibration data: give at least one batch")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(feeds)

        def get_next(self):
            return next(self.items, None)

    with _quiet_onnxruntime():
        quantize_static(str(source), str(target), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, activation_type=kinds[activations],
                        weight_type=QuantType.QInt8, calibrate_method=methods[method],
                        op_types_to_quantize=STATIC_OP_TYPES + (LINEAR_OP_TYPES if linear == "static" else []),
                        extra_options={"QuantizeBias": quantize_bias})
        if linear == "dynamic":
            quantize_dynamic(str(target), str(target), weight_type=QuantType.QInt8,
                             per_channel=per_channel, op_types_to_quantize=LINEAR_OP_TYPES)
    import onnx

    _finish(onnx.load(str(target)), target)
    return Path(target)


def convert_onnx_float16(source: str | Path, target: str | Path) -> Path:
    """Halve an ONNX file's weights and compute; inputs and outputs stay float32.

    Example::

        convert_onnx_float16("model.onnx", "model.fp16.onnx")
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.save(model, str(target))
    return Path(target)


def to_dtype(model: nn.Module, dtype: str) -> nn.Module:
    """``float16`` / ``bf16`` weights in PyTorch (a copy is not made: the model is cast in place).

    Example::

        to_dtype(model, "bf16")
    """
    dtypes = {"float16": torch.float16, "fp16": torch.float16, "bf16": torch.bfloat16,
              "bfloat16": torch.bfloat16, "float32": torch.float32, "fp32": torch.float32}
    if dtype not in dtypes:
        raise HpmodelError(f"dtype '{dtype}' is unknown: choose float16, bf16 or float32")
    return model.to(dtypes[dtype])


def qat_configs():
    """torchao fake-quant configs matching ORT static int8: per-channel symmetric int8 weights,
    per-token asymmetric int8 activations (the coarsest granularity torchao's QAT fakes)."""
    with quiet_imports():  # torchao's notices about kernels for other machines
        from torchao.quantization.qat import IntxFakeQuantizeConfig

    # torchao fakes activations per token (per example here) at most, not per tensor
    activations = IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False)
    weights = IntxFakeQuantizeConfig(torch.int8, "per_channel", is_symmetric=True)
    return activations, weights


def qat_prepare(model: nn.Module) -> nn.Module:
    """Swap every ``nn.Linear`` for torchao's fake-quantized one (in place; returns ``model``).

    Example::

        trainer = Trainer(model_transform=qat_prepare)   # fine-tune with fake quant
    """
    with quiet_imports():
        from torchao.quantization import quantize_
        from torchao.quantization.qat import QATConfig

    activations, weights = qat_configs()
    quantize_(model, QATConfig(activation_config=activations, weight_config=weights, step="prepare"))
    return model


def qat_convert(model: nn.Module) -> nn.Module:
    """Drop the fake quantizers (torchao's convert step): plain ``nn.Linear`` layers again.

    Example::

        float_model = qat_convert(trained)    # then export_onnx + quantize_onnx_static
    """
    with quiet_imports():
        from torchao.quantization import quantize_
        from torchao.quantization.qat import QATConfig

    quantize_(model, QATConfig(step="convert"))
    return model


def fp8_supported() -> bool:
    """True on a CUDA device with fp8 tensor cores (compute capability ≥ 8.9)."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)


def _rowwise_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, k) → fp8 e4m3 values and one float32 scale per row, (rows, 1)."""
    amax = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12)
    scale = amax / torch.finfo(torch.float8_e4m3fn).max
    return (x.float() / scale).to(torch.float8_e4m3fn), scale


_COMPILED_ROWWISE = None


def _rowwise_fp8_fused(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_rowwise_fp8` fused into one kernel by ``torch.compile`` (on an H200 the eager
    version's extra passes made fp8 slower than bf16 below 8192³; fused it is 1.36× at 4096³)."""
    global _COMPILED_ROWWISE
    if _COMPILED_ROWWISE is None:
        _COMPILED_ROWWISE = torch.compile(_rowwise_fp8, dynamic=False)
    return _COMPILED_ROWWISE(x)


class Float8Linear(nn.Module):
    """A Linear layer that runs in fp8 with row-wise scales (weights quantized once,
    activations per call), accumulating in float and returning bf16.

    Example::

        layer = Float8Linear.from_linear(nn.Linear(4096, 4096).cuda().bfloat16())
        y = layer(torch.randn(64, 4096, device="cuda", dtype=torch.bfloat16))
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        weight_fp8, weight_scale = _rowwise_fp8(weight.detach())  # (out, in), (out, 1)
        self.register_buffer("weight_fp8", weight_fp8)
        self.register_buffer("weight_scale", weight_scale.t().contiguous())  # (1, out)
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(torch.bfloat16))

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Float8Linear":
        return cls(linear.weight, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x_fp8, x_scale = _rowwise_fp8_fused(x.reshape(-1, shape[-1]))
        out = torch._scaled_mm(x_fp8, self.weight_fp8.t(), scale_a=x_scale, scale_b=self.weight_scale,
                               bias=self.bias, out_dtype=torch.bfloat16)
        return out.reshape(*shape[:-1], out.shape[-1])


def to_float8(model: nn.Module) -> nn.Module:
    """Replace every ``nn.Linear`` whose sizes are multiples of 16 by :class:`Float8Linear`.

    Example::

        model = to_float8(model.cuda().bfloat16())
    """
    if not fp8_supported():
        raise HpmodelError("fp8 needs a CUDA GPU with compute capability ≥ 8.9 (Ada, Hopper or "
                           "newer): run this mode on the GPU machine or drop 'fp8' from --modes")
    for name, child in model.named_children():
        if isinstance(child, nn.Linear) and child.in_features % 16 == 0 and child.out_features % 16 == 0:
            setattr(model, name, Float8Linear.from_linear(child))
        else:
            to_float8(child)
    return model


__all__ = ["Float8Linear", "calibration_batches", "convert_onnx_float16", "fp8_supported",
           "qat_convert", "qat_prepare", "quantize_onnx_dynamic", "quantize_onnx_static",
           "to_dtype", "to_float8"]
