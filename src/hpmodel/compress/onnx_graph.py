"""Small rewrites of quantized ONNX graphs (the ``onnx`` package's protobuf API does the work).

- :func:`weight_only_int8`: int8 per-channel weights + ``DequantizeLinear`` in front of a
  float op (Conv). The file stores int8; ORT folds or runs the tiny dequantization and then
  its fast fp32 kernel. This is the kernel choice for convolutions in dynamic int8: ORT's
  ``ConvInteger`` (what ``quantize_dynamic`` emits for Conv) ran 7.5× slower than fp32 Conv
  on the digits CNN at batch 64 (AMD EPYC, 1 thread; docs/compression.md).
- :func:`drop_zero_points`: symmetric int8 weights and int32 biases have all-zero zero
  points, which ``DequantizeLinear`` defaults to: 1 or 4 bytes per channel saved.
- :func:`compact_names`: ORT's quantizer names tensors ``/1/1.0/Conv_output_0_quantized…``;
  short names and no doc strings keep a small model's file close to its weight bytes.
- :func:`weight_bytes`: bytes held by initializers (weights, biases, scales, zero points) —
  the "size of the weights", independent of graph bookkeeping (int4 packs two a byte).

Example::

    model = onnx.load("model.onnx")
    weight_only_int8(model, {"Conv"}); compact_names(model); onnx.save(model, "small.onnx")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def weight_sizes(fp32: Path, quantized: Path) -> dict[str, Any]:
    """Initializer bytes of a quantized file and of the fp32 export it came from (then
    deleted), and the ratio ``x_smaller_weights``."""
    sizes = {"weight_bytes": weight_bytes(quantized), "fp32_weight_bytes": weight_bytes(fp32)}
    Path(fp32).unlink()
    return {**sizes, "x_smaller_weights": sizes["fp32_weight_bytes"] / sizes["weight_bytes"]}


def weight_bytes(path: str | Path) -> int:
    """Bytes of every initializer of an ONNX file (what the weights cost, without the graph).

    Example::

        weight_bytes("fp32/model.onnx") / weight_bytes("int8/model.onnx")   # ≈ 3.9
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    return sum(_stored_bytes(t, numpy_helper) for t in graph.initializer)


def _stored_bytes(tensor, numpy_helper) -> int:
    """Bytes a tensor takes in the file: 4-bit types pack two values a byte (NumPy, and so
    ``to_array``, holds each in a byte of its own)."""
    from onnx import TensorProto

    if tensor.data_type in (TensorProto.INT4, TensorProto.UINT4):
        return (int(np.prod(tensor.dims, dtype=np.int64)) + 1) // 2
    return numpy_helper.to_array(tensor).nbytes


def weight_only_int8(model, op_types: set[str]) -> int:
    """Store the float weight (input 1) of every ``op_types`` node as int8, symmetric, one scale
    per output channel, behind a ``DequantizeLinear``; returns how many weights were converted.

    Example::

        weight_only_int8(onnx_model, {"Conv"})
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    new_nodes, converted = [], 0
    for node in graph.node:
        name = node.input[1] if node.op_type in op_types and len(node.input) > 1 else None
        if name not in initializers or initializers[name].data_type != TensorProto.FLOAT:
            continue
        weight = numpy_helper.to_array(initializers[name])  # (out_channels, in / groups, *kernel)
        amax = np.abs(weight.reshape(weight.shape[0], -1)).max(axis=1)
        scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
        shape = (-1,) + (1,) * (weight.ndim - 1)
        quantized = np.clip(np.rint(weight / scale.reshape(shape)), -127, 127).astype(np.int8)
        graph.initializer.remove(initializers[name])
        graph.initializer.extend([numpy_helper.from_array(quantized, f"{name}_q8"),
                                  numpy_helper.from_array(scale, f"{name}_q8_scale")])
        dequantized = f"{name}_dq"
        new_nodes.append(helper.make_node("DequantizeLinear", [f"{name}_q8", f"{name}_q8_scale"],
                                          [dequantized], axis=0))
        node.input[1] = dequantized
        converted += 1
    for index, node in enumerate(new_nodes):  # constants first: the graph stays topologically sorted
        graph.node.insert(index, node)
    return converted


def drop_zero_points(model) -> int:
    """Remove all-zero int8/int32 zero-point initializers of ``DequantizeLinear`` nodes whose
    input is a constant (weights, biases); returns how many were removed.

    Example::

        drop_zero_points(onnx_model)
    """
    from onnx import TensorProto, numpy_helper

    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    signed = (TensorProto.INT8, TensorProto.INT32)
    removed = set()
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) < 3:
            continue
        data, point = initializers.get(node.input[0]), initializers.get(node.input[2])
        if data is None or point is None or point.data_type not in signed:
            continue
        if not np.any(numpy_helper.to_array(point)):
            del node.input[2]
            removed.add(point.name)
    still_used = {name for node in graph.node for name in node.input}
    for name in removed - still_used:
        graph.initializer.remove(initializers[name])
    return len(removed)


def compact_names(model) -> None:
    """Rename every internal tensor to a short name and drop node names and doc strings
    (graph inputs and outputs keep their names).

    Example::

        compact_names(onnx_model)
    """
    graph = model.graph
    keep = {v.name for v in graph.input} | {v.name for v in graph.output} | {""}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if name in keep:
            return name
        return names.setdefault(name, f"t{len(names)}")

    for tensor in graph.initializer:
        tensor.name = short(tensor.name)
        tensor.doc_string = ""
    for node in graph.node:
        node.name, node.doc_string = "", ""
        for field in (node.input, node.output):
            for index, name in enumerate(field):
                field[index] = short(name)
    kept_info = [v for v in graph.value_info if v.name in names]
    for info in kept_info:
        info.name = names[info.name]
    model.doc_string, graph.doc_string = "", ""


__all__ = ["compact_names", "drop_zero_points", "weight_bytes", "weight_only_int8", "weight_sizes"]
