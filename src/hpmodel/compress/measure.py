"""Measure compressed variants: accuracy, file sizes and latency (the report itself is
:mod:`hpmodel.reporting.compress`).

Accuracy (for a GPT: perplexity and bits per byte too) comes from
:func:`~hpmodel.compress.variant_load.evaluate_variant`, CPU latency from
ONNX Runtime and PyTorch at batch 1 and 64, GPU latency from PyTorch where CUDA exists;
``gzip`` measures how well a file compresses (pruned zeros compress, dense floats do not).

Example::

    row = measure_variant(Path("out/dynamic-int8"))
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import torch

from safetensors import safe_open

from hpmodel.compress import variant_load
from hpmodel.compress.export import OnnxModel
from hpmodel.compress.int4 import is_language_model, token_example
from hpmodel.config import load_config
from hpmodel.datasets import load_splits
from hpmodel.kernel.files import read_json
from hpmodel.kernel.timing import timed

BATCHES = (1, 64)


def file_sizes(path: Path) -> dict[str, int]:
    """Raw and gzip-compressed bytes of a file (level 9, as TF-MOT measures)."""
    data = path.read_bytes()
    return {"bytes": len(data), "gzip_bytes": len(gzip.compress(data, compresslevel=9))}


def parameter_count(folder: Path) -> int:
    """Weights and biases stored by the variant (quantization scales and zero points excluded)."""
    path = folder / "model.safetensors"
    if path.is_file():
        with safe_open(str(path), "pt") as handle:
            return sum(_numel(handle.get_slice(k).get_shape()) for k in handle.keys())
    import onnx

    graph = onnx.load(str(folder / "model.onnx")).graph
    return sum(_numel(t.dims) for t in graph.initializer
               if len(t.dims) >= 1 and "scale" not in t.name and "zero_point" not in t.name)


def _numel(shape) -> int:
    total = 1
    for dim in shape:
        total *= int(dim)
    return total


def latency_ms(predict, example: torch.Tensor, repeats: int) -> float:
    """Median milliseconds of one call on ``example`` after 10 warm-up calls (so batch 1 of
    eager PyTorch is not a first-call artefact)."""
    return 1000 * timed(lambda: predict(example), repeats=repeats, warmup=10)


def measure_variant(folder: Path, repeats: int = 20, threads: int = 0,
                    trust_model_target: bool = False) -> dict[str, Any]:
    """One table row: accuracy, parameters, file sizes and latencies of a variant folder
    (``trust_model_target``: its config's ``model.target`` may be imported)."""
    info = read_json(folder / "variant.json")
    row: dict[str, Any] = {"mode": info["mode"], "format": info["format"], "dtype": info["dtype"]}
    row.update({k: info[k] for k in ("weight_bytes", "fp32_weight_bytes", "x_smaller_weights") if k in info})
    gpu_only = bool(info.get("apply")) and not torch.cuda.is_available()
    if not gpu_only:
        row.update(variant_load.evaluate_variant(folder, trust_model_target=trust_model_target))
    row["parameters"] = info.get("int4_parameters") or parameter_count(folder)  # int4 packs 2 a byte
    main_file = folder / ("model.onnx" if info["format"] == "onnx" else "model.safetensors")
    row.update(file_sizes(main_file))
    if (folder / "model.onnx").is_file():
        row.update({f"onnx_{k}": v for k, v in file_sizes(folder / "model.onnx").items()})
    example = _example_maker(folder)
    onnx_file = folder / "model.onnx"
    if onnx_file.is_file() and info["dtype"] in ("float32", "int8", "int4"):  # fp16 ONNX is for GPUs

        runner = OnnxModel(onnx_file, threads=threads)
        for batch in BATCHES:
            row[f"ort_cpu_ms_b{batch}"] = latency_ms(runner.run_numpy, example(batch).numpy(), repeats)
    if info["format"] == "torch" and not info.get("apply"):
        predictor = variant_load.load_torch_variant(folder, info, "cpu", trust_model_target)
        for batch in BATCHES:
            row[f"torch_cpu_ms_b{batch}"] = latency_ms(predictor, example(batch), repeats)
    if torch.cuda.is_available() and info["format"] == "torch":
        predictor = variant_load.load_torch_variant(folder, info, "cuda", trust_model_target)
        for batch in BATCHES:
            row[f"torch_gpu_ms_b{batch}"] = latency_ms(predictor, example(batch).cuda(), repeats)
    return row


def _example_maker(folder: Path):
    """``batch -> input``: random floats, or random token ids (batch, seq_len) for a GPT."""
    cfg = load_config(folder / "config.toml")
    splits = load_splits(cfg.data, cfg.seed)
    shape = splits.input_shape
    if is_language_model(cfg):  # the gpt's vocabulary: its option, else the data's classes
        vocab = int(cfg.model.options.get("vocab_size", splits.num_classes))
        return lambda batch: token_example(batch, shape, vocab)
    return lambda batch: torch.randn(batch, *shape)


__all__ = ["file_sizes", "measure_variant", "parameter_count"]
