"""Build compressed variants of a trained run and save each as a folder (loading them back:
:mod:`~hpmodel.compress.variant_load`).

Each variant folder looks like a run directory (so ``hpmodel evaluate`` scores it)::

    VARIANT/config.toml        the source run's config (model sizes, data)
    VARIANT/variant.json       {"mode", "format": "onnx" | "torch", "dtype", "apply", ...}
    VARIANT/model.onnx         ONNX Runtime file (int8, int4, float16 or float32), when exported
    VARIANT/model.safetensors  PyTorch weights (float32, float16, bf16; pruned ones smaller)

The heavy lifting is delegated: ONNX Runtime quantizes (int4: :mod:`~hpmodel.compress.int4`)
and runs ONNX files, torchao fakes quantization for QAT, ``torch.nn.utils.prune`` prunes, the Trainer fine-tunes.

Example::

    build_variants("runs/digits", "runs/digits-compressed", ["dynamic-int8", "qat"])
    variant_load.evaluate_variant("runs/digits-compressed/qat")["test_accuracy"]
"""

from __future__ import annotations

import copy
import functools
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from hpmodel.compress import fake_quant, int4, onnx_graph, prune, quantize, structured
from hpmodel.compress.variant_load import load_into
from hpmodel.kernel.errors import HpmodelError
from hpmodel.kernel.files import load_weights, save_weights, write_json
from hpmodel.datasets import load_splits
from hpmodel.models import build_model
from hpmodel.strategies import get_strategy
from hpmodel.config import ScheduleConfig, load_run_config
from hpmodel.train.optim import optimizer_factory, schedule_factory
from hpmodel.train.trainer import Trainer
import importlib.util

CPU_MODES = ("fp32", "dynamic-int8", "static-int8", "float16", "bf16", "qat", "prune", "prune-int8",
             "structured")
GPU_MODES = ("fp8", "sparse-2:4", "int4-torchao")
LM_MODES = ("fp32", "int4", "int4-torchao")  # what a GPT (train.task = "causal-lm") run gets
MODES = CPU_MODES + ("int4",) + GPU_MODES


WEIGHT_SCALES = ("per-channel", "per-tensor")


@dataclass
class CompressOptions:
    """How variants are built. Example: ``CompressOptions(modes=["qat"], fine_tune_epochs=3)``."""

    modes: list[str] = field(default_factory=lambda: list(CPU_MODES))
    sparsity: float = 0.8  # magnitude pruning target (TF-MOT's MNIST example uses 0.8)
    structured_amount: float = 0.5  # fraction of parameters removed (Torch-Pruning; units without it)
    fine_tune_epochs: int = 3  # QAT and pruning
    fine_tune_lr_scale: float = 1.0  # peak fine-tune LR as a fraction of the run's (cosine to 0)
    calibration_batches: int = 8
    calibration_batch_size: int = 64
    calibration_method: str = "minmax"
    weight_scales: str = "per-channel"  # static int8 and QAT: per-channel | per-tensor (int8-only NPUs/DSPs)
    int4_block_size: int = 32  # weights per int4 scale (ORT MatMulNBits; torchao's group size)
    int4_accuracy_level: int = 0  # MatMulNBits: 0 fp32 compute, 4 int8 activations
    int4_embeddings: bool = True  # token / position tables as int4 GatherBlockQuantized too

    def __post_init__(self):
        if any(mode.startswith("int4") for mode in self.modes):
            int4.check_options(self.int4_block_size, self.int4_accuracy_level)
        if self.weight_scales not in WEIGHT_SCALES:
            raise HpmodelError(f"weight scales '{self.weight_scales}' unknown: choose "
                               f"{' or '.join(WEIGHT_SCALES)}")
        unknown = [m for m in self.modes if m not in MODES]
        if unknown:
            raise HpmodelError(f"compression mode(s) {', '.join(unknown)} unknown: choose from "
                               f"{', '.join(MODES)}")


@dataclass
class SourceRun:
    """A trained run loaded for compression: config, data splits and the fp32 model."""

    run_dir: Path
    cfg: Any
    splits: Any
    model: nn.Module

    def fresh_model(self) -> nn.Module:
        return copy.deepcopy(self.model)


def load_source(run_dir: str | Path, trust_model_target: bool = False) -> SourceRun:
    """Load ``config.toml`` + ``model.safetensors`` of a run directory (clear errors when broken);
    a ``model.target`` there is imported only with ``trust_model_target``."""

    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir / "config.toml", trust_model_target)
    splits = load_splits(cfg.data, cfg.seed)
    model = build_model(cfg.model, splits.input_shape, splits.num_classes)
    load_into(model, load_weights(run_dir / "model.safetensors"), run_dir / "model.safetensors")
    return SourceRun(run_dir, cfg, splits, model.eval())


def fine_tune(source: SourceRun, model: nn.Module, options: CompressOptions, *,
              callbacks=(), model_transform: Callable | None = None) -> nn.Module:
    """A few epochs of the run's optimizer at a lower learning rate (QAT and pruning)."""

    optimizer_cfg = copy.deepcopy(source.cfg.optimizer)
    optimizer_cfg.lr *= options.fine_tune_lr_scale
    device = "cuda" if torch.cuda.is_available() else "cpu"
    trainer = Trainer(strategy=get_strategy("one-device", device=device), seed=source.cfg.seed,
                      batch_size=source.cfg.data.batch_size, progress=False, callbacks=callbacks,
                      model_transform=model_transform,
                      # cosine to zero: the last steps settle the pruned / fake-quantized weights
                      schedule=schedule_factory(ScheduleConfig(name="cosine")))
    result = trainer.fit(model, optimizer_factory(optimizer_cfg), source.splits.train,
                         epochs=options.fine_tune_epochs)
    return result.model.cpu().eval()


def fine_tune_steps(source: SourceRun, options: CompressOptions) -> int:
    return options.fine_tune_epochs * math.ceil(len(source.splits.train) / source.cfg.data.batch_size)


# -- one builder per mode: (source, options, folder) -> variant.json fields ------------------
def _fp32(source, options, folder):
    save_weights(folder / "model.safetensors", source.model.state_dict())
    _export_if_possible(source, source.model, folder)
    return {"format": "torch", "dtype": "float32"}


# Python packages each mode needs beyond torch (the GPU machines may lack the ONNX stack)
REQUIREMENTS = {"dynamic-int8": ("onnx", "onnxruntime"), "static-int8": ("onnx", "onnxruntime"),
                "float16": ("onnx", "onnxruntime"), "qat": ("torchao", "onnx", "onnxruntime"),
                "prune-int8": ("onnx", "onnxruntime"), "int4": ("onnx", "onnxruntime"),
                "int4-torchao": ("torchao",)}


def missing_packages(mode: str) -> list[str]:
    """Packages ``mode`` needs that are not installed (empty when it can run here).

    Example::

        missing_packages("qat")   # [] where torchao, onnx and onnxruntime are installed
    """

    return [name for name in REQUIREMENTS.get(mode, ()) if importlib.util.find_spec(name) is None]


def _export_if_possible(source, model, folder) -> None:
    """The ONNX copy of a PyTorch variant, for ORT latency; skipped where ``onnx`` is missing."""

    if importlib.util.find_spec("onnx") is not None:
        int4.export_run_model(source, model, folder / "model.onnx")


def _onnx_fp32(source, model, folder) -> Path:
    return int4.export_run_model(source, model, folder / "model.fp32.onnx")


def _dynamic_int8(source, options, folder):
    fp32 = _onnx_fp32(source, source.model, folder)
    quantize.quantize_onnx_dynamic(fp32, folder / "model.onnx")
    return {"format": "onnx", "dtype": "int8", **onnx_graph.weight_sizes(fp32, folder / "model.onnx")}


def _static(source, model, options, folder):
    fp32 = _onnx_fp32(source, model, folder)
    batches = quantize.calibration_batches(source.splits.train.x, options.calibration_batches,
                                           options.calibration_batch_size)
    quantize.quantize_onnx_static(fp32, folder / "model.onnx", batches, options.calibration_method,
                                  per_channel=options.weight_scales == "per-channel")
    return {"format": "onnx", "dtype": "int8", **onnx_graph.weight_sizes(fp32, folder / "model.onnx"),
            "calibration_batches": len(batches),
            "calibration_method": options.calibration_method, "weight_scales": options.weight_scales}


def _static_int8(source, options, folder):
    return _static(source, source.model, options, folder)


def _float16(source, options, folder):
    fp32 = _onnx_fp32(source, source.model, folder)
    quantize.convert_onnx_float16(fp32, folder / "model.onnx")  # for GPU deployment
    fp32.unlink()
    save_weights(folder / "model.safetensors", quantize.to_dtype(source.fresh_model(), "float16").state_dict())
    return {"format": "torch", "dtype": "float16"}


def _bf16(source, options, folder):
    save_weights(folder / "model.safetensors", quantize.to_dtype(source.fresh_model(), "bf16").state_dict())
    return {"format": "torch", "dtype": "bf16"}


def qat_model(source: SourceRun, options: CompressOptions, fake_quant_on: bool = True) -> tuple[nn.Module, str]:
    """Fine-tune a copy of the model with fake int8 (or, ``fake_quant_on=False``, the fp32
    control of the same length); returns the float model and which fake quantizer ran.

    Models with convolutions fold BatchNorm and use :mod:`hpmodel.compress.fake_quant` (every
    Conv and Linear, ORT's rounding); others use torchao's QAT (Linear layers).
    """
    model = source.fresh_model()
    if fake_quant.has_convolutions(model):
        model = fake_quant.fold_batch_norm(model.eval())
        per_channel = options.weight_scales == "per-channel"
        prepare = functools.partial(fake_quant.prepare, per_channel=per_channel)
        convert, kind = fake_quant.convert, f"hpmodel {options.weight_scales} (conv + linear)"
    else:
        if options.weight_scales != "per-channel":
            raise HpmodelError("--weight-scales per-tensor with qat needs a model with "
                               "convolutions (torchao's QAT of Linear layers is per channel): "
                               "drop --weight-scales or use static-int8")
        prepare, convert, kind = quantize.qat_prepare, quantize.qat_convert, "torchao (linear)"
    if not fake_quant_on:
        return fine_tune(source, model, options), "none (fp32 control)"
    return convert(fine_tune(source, model, options, model_transform=prepare)), kind


def _qat(source, options, folder):
    model, kind = qat_model(source, options)
    save_weights(folder / "model.safetensors", model.state_dict())  # float weights after QAT
    return {**_static(source, model, options, folder), "fine_tune_epochs": options.fine_tune_epochs,
            "fake_quant": kind}


def pruned_model(source: SourceRun, options: CompressOptions) -> tuple[nn.Module, list]:
    """Fine-tune under PolynomialDecay(0 → sparsity) over the first half of the steps, then strip."""
    steps = fine_tune_steps(source, options)
    end = max(1, steps // 2)
    schedule = prune.PolynomialDecay(0.0, options.sparsity, begin_step=0, end_step=end,
                                     frequency=max(1, end // 10))
    callback = prune.PruningCallback(schedule)
    model = fine_tune(source, source.fresh_model(), options, callbacks=[callback])
    return prune.strip_pruning(model), callback.applied


def _prune(source, options, folder):
    model, applied = pruned_model(source, options)
    save_weights(folder / "model.safetensors", model.state_dict())
    _export_if_possible(source, model, folder)
    return {"format": "torch", "dtype": "float32", "sparsity": prune.sparsity(model),
            "schedule": [list(a) for a in applied]}


def _prune_int8(source, options, folder):
    model, _ = pruned_model(source, options)
    fp32 = _onnx_fp32(source, model, folder)
    quantize.quantize_onnx_dynamic(fp32, folder / "model.onnx")
    fp32.unlink()
    return {"format": "onnx", "dtype": "int8", "sparsity": prune.sparsity(model)}


def _structured(source, options, folder):
    example = source.splits.train.x[:1].float()
    model = structured.prune_to_ratio(source.fresh_model(), options.structured_amount, example)
    model = fine_tune(source, model, options)
    save_weights(folder / "model.safetensors", model.state_dict())
    _export_if_possible(source, model, folder)
    return {"format": "torch", "dtype": "float32", "structured_amount": options.structured_amount,
            "pruner": "torch_pruning" if structured.available() else "hpmodel chain surgery",
            "parameters": sum(p.numel() for p in model.parameters())}


def _fp8(source, options, folder):
    if not quantize.fp8_supported():
        raise HpmodelError("fp8 needs a CUDA GPU with compute capability ≥ 8.9")
    save_weights(folder / "model.safetensors", quantize.to_dtype(source.fresh_model(), "bf16").state_dict())
    return {"format": "torch", "dtype": "bf16", "apply": "fp8", "device": "cuda"}


def _sparse_24(source, options, folder):
    if not torch.cuda.is_available():
        raise HpmodelError("2:4 sparsity needs a CUDA GPU")
    model = prune.apply_semi_structured(source.fresh_model(), to_sparse=False)
    save_weights(folder / "model.safetensors", quantize.to_dtype(model, "bf16").state_dict())
    return {"format": "torch", "dtype": "bf16", "apply": "sparse-2:4", "device": "cuda"}


BUILDERS: dict[str, Callable] = {
    "fp32": _fp32, "dynamic-int8": _dynamic_int8, "static-int8": _static_int8, "float16": _float16,
    "bf16": _bf16, "qat": _qat, "prune": _prune, "prune-int8": _prune_int8,
    "structured": _structured, "fp8": _fp8, "sparse-2:4": _sparse_24,
    "int4": int4.build_int4, "int4-torchao": int4.build_torchao_int4,
}


def variant_folder_name(mode: str) -> str:
    return mode.replace(":", "")


def build_variant(source: SourceRun, mode: str, out_dir: str | Path,
                  options: CompressOptions | None = None) -> Path:
    """Build one variant of ``source`` into ``out_dir/MODE`` and return the folder.

    Example::

        build_variant(load_source("runs/digits"), "static-int8", "runs/compressed")
    """
    options = options or CompressOptions()
    missing = missing_packages(mode)
    if missing:
        raise HpmodelError(f"mode '{mode}' needs {', '.join(missing)}: install hpmodel[compress] "
                           "or drop the mode from --modes")
    folder = Path(out_dir) / variant_folder_name(mode)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    shutil.copyfile(source.run_dir / "config.toml", folder / "config.toml")
    info = BUILDERS[mode](source, options, folder)
    write_json(folder / "variant.json", {"mode": mode, "source": str(source.run_dir), **info})
    return folder


__all__ = ["CPU_MODES", "GPU_MODES", "LM_MODES", "MODES", "CompressOptions", "SourceRun", "build_variant",
           "missing_packages", "fine_tune", "qat_model", "load_source"]
