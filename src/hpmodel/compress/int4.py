"""Weight-only int4 for the GPT (issue #19): ONNX Runtime on the CPU, torchao on CUDA.

The heavy lifting is delegated:

- ``int4`` (CPU): the GPT is exported to ONNX fp32 (int64 ``input_ids`` (batch, seq) →
  logits (batch, seq, vocab)) and ONNX Runtime's own ``MatMulNBitsQuantizer`` rounds every
  constant MatMul weight to 4 bits (RTN, ``DefaultWeightOnlyQuantConfig``: symmetric, one
  fp32 scale per block of ``block_size`` weights along the input axis) → ``MatMulNBits``
  ops. That covers the 4 linear layers of each block and the (tied) language-model head.
  With ``embeddings=True`` the quantizer also turns the token and position lookups
  (``Gather``) into ``GatherBlockQuantized`` (int4 blocks along the width); the attention
  products (activation × activation) stay float. ``accuracy_level`` is MatMulNBits' own
  attribute: 0 computes in fp32, 4 quantizes activations to int8 for the int8 kernels.
- ``int4-torchao`` (CUDA): torchao's ``Int4WeightOnlyConfig`` via ``quantize_`` on the bf16
  model (tinygemm's tile-packed layout, which core PyTorch's CUDA build runs). The folder
  stores bf16 weights; int4 is re-applied on load, as fp8 is.

A language model is scored by held-out loss, perplexity and bits per byte (the Trainer's
``causal-lm`` task), not by accuracy alone.

Example::

    quantize_onnx_int4("fp32/model.onnx", "int4/model.onnx", block_size=32)
    evaluate_lm(OnnxModel("int4/model.onnx"), splits.test)["bits_per_byte"]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from hpmodel.compress import export, onnx_graph, quantize
from hpmodel.kernel.errors import ConfigError, HpmodelError
from hpmodel.kernel.files import save_weights
from hpmodel.kernel.quiet import ORT_INT4_QUANTIZER, quiet_imports, quiet_onnxruntime, quieted
from hpmodel.strategies import get_strategy
from hpmodel.train.trainer import Trainer

LM_TASK = "causal-lm"
ACCURACY_LEVELS = (0, 1, 2, 3, 4)  # MatMulNBits: 0 unset (fp32), 1 fp32, 2 fp16, 3 bf16, 4 int8
TORCHAO_GROUP_SIZES = (32, 64, 128, 256)  # tinygemm's int4 kernel


def is_language_model(cfg) -> bool:
    """Whether a run config trains a causal LM (``train.task = "causal-lm"``)."""
    return cfg.train.task == LM_TASK


def input_dtype(cfg) -> torch.dtype:
    """What the exported model reads: int64 token ids for a language model, float otherwise."""
    return torch.int64 if is_language_model(cfg) else torch.float32


def export_run_model(source, model: nn.Module, path: Path) -> Path:
    """``model`` of a loaded run as ONNX fp32, reading what the run's data holds (token ids
    for a language model)."""
    return export.export_onnx(model, source.splits.input_shape, path, input_dtype=input_dtype(source.cfg))


def check_options(block_size: int, accuracy_level: int) -> None:
    """One clear error for a block size or accuracy level MatMulNBits cannot run.

    Example::

        check_options(32, 0)        # fine; check_options(24, 0) raises ConfigError
    """
    if block_size < 16 or block_size & (block_size - 1):
        raise ConfigError(f"int4 block size {block_size} is not a power of two ≥ 16 (ONNX Runtime's "
                          "MatMulNBits needs one): use --int4-block-size 32, 64 or 128")
    if accuracy_level not in ACCURACY_LEVELS:
        raise ConfigError(f"int4 accuracy level {accuracy_level} is unknown: use one of "
                          f"{', '.join(map(str, ACCURACY_LEVELS))} (0: fp32 compute, 4: int8)")


def quantize_onnx_int4(source: str | Path, target: str | Path, block_size: int = 32,
                       accuracy_level: int = 0, embeddings: bool = True) -> dict[str, int]:
    """Write ``target``: ``source`` with every constant MatMul weight (and, with
    ``embeddings``, every constant Gather table) in symmetric blockwise int4; returns how many
    ops of each kind the file has (``matmul_nbits``, ``gather_block_quantized``, ``matmul``).

    Example::

        quantize_onnx_int4("model.fp32.onnx", "model.onnx", block_size=32)["matmul_nbits"]  # 17
    """
    import onnx

    check_options(block_size, accuracy_level)
    ops = ("MatMul", "Gather") if embeddings else ("MatMul",)
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import (
            DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer)

        config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True, bits=4,
                                              accuracy_level=accuracy_level or None,
                                              op_types_to_quantize=ops,
                                              quant_axes=(("MatMul", 0), ("Gather", 1)))
    except (ImportError, TypeError) as error:  # an ONNX Runtime older than this API
        import onnxruntime

        raise HpmodelError(f"int4 needs ONNX Runtime's MatMulNBitsQuantizer with op_types_to_quantize "
                           f"and quant_axes (onnxruntime {onnxruntime.__version__} lacks them: "
                           f"{error}): upgrade onnxruntime (tested with 1.32)") from None
    with quiet_onnxruntime(), quieted(logs=[ORT_INT4_QUANTIZER]):  # per-node INFO, opset notes
        quantizer = MatMulNBitsQuantizer(onnx.load(str(source)), algo_config=config)
        quantizer.process()
    model = quantizer.model.model
    onnx_graph.compact_names(model)
    onnx.save(model, str(target))
    kinds = [node.op_type for node in model.graph.node]
    return {"matmul_nbits": kinds.count("MatMulNBits"), "matmul": kinds.count("MatMul"),
            "gather_block_quantized": kinds.count("GatherBlockQuantized")}


def build_int4(source, options, folder: Path) -> dict[str, Any]:
    """The ``int4`` variant of a GPT run: ``folder/model.onnx`` with MatMulNBits weights."""
    _require_language_model(source.cfg, "int4")
    fp32 = export_run_model(source, source.model, folder / "model.fp32.onnx")
    counts = quantize_onnx_int4(fp32, folder / "model.onnx", options.int4_block_size,
                                options.int4_accuracy_level, options.int4_embeddings)
    return {"format": "onnx", "dtype": "int4", "block_size": options.int4_block_size,
            "accuracy_level": options.int4_accuracy_level,
            "embeddings": "int4" if counts["gather_block_quantized"] else "fp32", **counts,
            "int4_parameters": sum(p.numel() for p in source.model.parameters()),  # tied ones once
            **onnx_graph.weight_sizes(fp32, folder / "model.onnx")}


def build_torchao_int4(source, options, folder: Path) -> dict[str, Any]:
    """The ``int4-torchao`` variant: bf16 weights; torchao's int4 is applied on load (CUDA)."""
    _require_language_model(source.cfg, "int4-torchao")
    if not torch.cuda.is_available():
        raise HpmodelError("int4-torchao needs a CUDA GPU: build it on the GPU machine, or use "
                           "--modes int4 (ONNX Runtime, CPU)")
    group = options.int4_block_size
    if group not in TORCHAO_GROUP_SIZES:
        raise ConfigError(f"int4-torchao group size {group} is not one torchao's int4 kernel "
                          f"runs: use --int4-block-size {' or '.join(map(str, TORCHAO_GROUP_SIZES))}")
    save_weights(folder / "model.safetensors", quantize.to_dtype(source.fresh_model(), "bf16").state_dict())
    return {"format": "torch", "dtype": "bf16", "apply": "int4", "device": "cuda", "group_size": group}


def apply_torchao_int4(model: nn.Module, group_size: int = 32) -> nn.Module:
    """torchao's weight-only int4 on every Linear of a bf16 model on CUDA (in place).

    Example::

        model = apply_torchao_int4(quantize.to_dtype(gpt, "bf16").cuda(), group_size=32)
    """
    with quiet_imports():
        from torchao.quantization import Int4WeightOnlyConfig, quantize_
    quantize_(model, Int4WeightOnlyConfig(group_size=group_size,
                                          int4_packing_format="tile_packed_to_4d"))
    return model


def _require_language_model(cfg, mode: str) -> None:
    if not is_language_model(cfg):
        raise HpmodelError(f"mode '{mode}' is weight-only int4 for GPT runs (train.task = "
                           f"'causal-lm'), this run's task is '{cfg.train.task}': use "
                           "dynamic-int8 or static-int8 for it")


class TokenPredictor(nn.Module):
    """A callable ``input_ids -> logits`` (an ONNX file or a module) as a module the
    Trainer can score: ``forward(input_ids, labels=None)`` returns the logits."""

    def __init__(self, predict: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.predict = predict

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, **_) -> torch.Tensor:
        return self.predict(input_ids).float().to(input_ids.device)  # a CUDA variant's too


def evaluate_lm(predict: Callable[[torch.Tensor], torch.Tensor], data) -> dict[str, float]:
    """Loss, perplexity, bits per byte and token accuracy of ``predict`` on a split of token
    windows (the Trainer's ``causal-lm`` task over batches of 64 windows).

    Example::

        evaluate_lm(OnnxModel("int4/model.onnx"), splits.test)["perplexity"]
    """
    trainer = Trainer(strategy=get_strategy("one-device", device="cpu"), batch_size=64,
                      progress=False, task=LM_TASK, precision="fp32")
    return trainer.evaluate_model(TokenPredictor(predict), data)  # no setup: no weights to move


def token_example(batch: int, shape: tuple[int, ...], vocab_size: int = 256) -> torch.Tensor:
    """Random int64 token ids (batch, seq) for timing a language model."""
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab_size, (batch, *shape), generator=generator)


__all__ = ["apply_torchao_int4", "build_int4", "build_torchao_int4", "check_options", "evaluate_lm",
           "export_run_model", "input_dtype", "is_language_model", "quantize_onnx_int4", "token_example"]
