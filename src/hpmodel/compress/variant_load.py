"""Load a compressed variant folder back (ONNX Runtime or PyTorch) and score it on its
run's data; :mod:`~hpmodel.compress.variants` builds the folders.

ONNX Runtime runs ONNX files; a PyTorch variant is rebuilt from its config.toml, its pruned
or folded weights resized into the model, fp8 / 2:4 / torchao int4 re-applied on the GPU.

Example::

    predict, info = load_variant("runs/digits-compressed/static-int8")
    evaluate_variant("runs/digits-compressed/qat")["test_accuracy"]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from hpmodel.compress import export, fake_quant, int4, prune, quantize, structured
from hpmodel.config import load_run_config
from hpmodel.datasets import load_splits
from hpmodel.kernel.errors import HpmodelError
from hpmodel.kernel.files import load_weights, read_json
from hpmodel.models import build_model


def load_into(model: nn.Module, weights: dict, where: Path) -> None:
    """Load ``weights`` (from ``where``) into ``model``, resized first to pruned, structured
    or BN-folded shapes; one clear line when they belong to another model."""
    prune.resize_to_weights(model, weights)
    structured.resize_to_state(model, weights)  # Torch-Pruning's smaller norms, attention, embeddings
    fake_quant.add_folded_biases(model, weights)  # QAT / control weights of BatchNorm models
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as error:
        raise HpmodelError(f"'{where}' does not fit the model of its config.toml ({str(error)[:160]})"
                           ": it belongs to another model; compress the run that wrote it") from None
    if missing or unexpected:
        raise HpmodelError(f"'{where}' does not fit the model of its config.toml (missing "
                           f"{list(missing)[:3]}, unexpected {list(unexpected)[:3]}): it belongs to "
                           "another model; compress the run that wrote it")


def is_variant(path: str | Path) -> bool:
    return (Path(path) / "variant.json").is_file()


def load_variant(folder: str | Path, device: str = "cpu", threads: int = 0,
                 trust_model_target: bool = False):
    """A callable ``x -> logits`` for a variant folder (ONNX Runtime or PyTorch) and its info.

    Example::

        predict, info = load_variant("runs/compressed/static-int8")
        predict(torch.randn(8, 1, 8, 8)).shape    # (8, 10)
    """
    folder = Path(folder)
    info = read_json(folder / "variant.json")
    if info.get("format") == "onnx":
        return export.OnnxModel(folder / "model.onnx", threads=threads), info
    return load_torch_variant(folder, info, device, trust_model_target), info


def load_torch_variant(folder: Path, info: dict, device: str = "cpu",
                       trust_model_target: bool = False) -> nn.Module:
    """The variant's PyTorch module (shrunk layers, dtype and fp8 / 2:4 re-applied); a
    ``model.target`` in its config.toml is imported only with ``trust_model_target``."""

    cfg = load_run_config(folder / "config.toml", trust_model_target)
    splits = load_splits(cfg.data, cfg.seed)
    model = build_model(cfg.model, splits.input_shape, splits.num_classes)
    weights = load_weights(folder / "model.safetensors")
    load_into(model, {k: v.float() for k, v in weights.items()}, folder / "model.safetensors")
    model = quantize.to_dtype(model, info.get("dtype", "float32")).eval()
    apply = info.get("apply")
    if apply and (device == "cpu" or not torch.cuda.is_available()):
        raise HpmodelError(f"variant '{folder}' ({apply}) runs only on a CUDA GPU: evaluate it on "
                           "the GPU machine")
    model = model.to(device)
    if apply == "fp8":
        model = quantize.to_float8(model)
    elif apply == "sparse-2:4":
        model = prune.apply_semi_structured(model, to_sparse=True)
    elif apply == "int4":
        model = int4.apply_torchao_int4(model, info.get("group_size", 32))
    return TorchPredictor(model, splits.input_shape, folder)


class TorchPredictor(nn.Module):
    """A module that checks its input shape and casts to its weights' dtype and device."""

    def __init__(self, model: nn.Module, input_shape, folder: Path):
        super().__init__()
        self.model, self.input_shape, self.folder = model, tuple(input_shape), folder
        first = next(model.parameters(), None)
        if first is None:
            first = next(model.buffers())
        self.dtype = first.dtype if first.dtype.is_floating_point and first.dtype.itemsize > 1 else torch.bfloat16
        self.device = first.device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        export.check_torch_input(self.input_shape, x, f"variant '{self.folder}'")
        with torch.no_grad():
            x = x.to(self.device, self.dtype) if x.is_floating_point() else x.to(self.device)
            return self.model(x).float()  # token ids stay integers


def evaluate_variant(folder: str | Path, split: str = "test",
                     trust_model_target: bool = False) -> dict[str, Any]:
    """Accuracy and loss of a variant folder on its run's data split (``hpmodel evaluate`` uses it).

    Example::

        evaluate_variant("runs/compressed/dynamic-int8")["test_accuracy"]
    """

    folder = Path(folder)
    cfg = load_run_config(folder / "config.toml", trust_model_target)
    data = getattr(load_splits(cfg.data, cfg.seed), split)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    predict, _ = load_variant(folder, device=device, trust_model_target=trust_model_target)
    if int4.is_language_model(cfg):  # loss, perplexity, bits per byte over token windows
        return {f"{split}_{k}": v for k, v in int4.evaluate_lm(predict, data).items()}
    logits = torch.cat([predict(x).cpu() for x in data.x.split(256)])
    loss = nn.functional.cross_entropy(logits, data.y).item()
    accuracy = (logits.argmax(-1) == data.y).float().mean().item()
    return {f"{split}_accuracy": accuracy, f"{split}_loss": loss, f"{split}_examples": len(data)}


__all__ = ["TorchPredictor", "evaluate_variant", "is_variant", "load_into", "load_torch_variant",
           "load_variant"]
