"""Structured pruning that follows the model's real dependencies (Torch-Pruning 1.6).

``torch_pruning`` traces the model into a dependency graph: pruning an output channel of one
layer also removes the matching inputs of every consumer, the shared channels of residual
additions (a transformer's residual stream: embedding, LayerNorms, every block's output
projection, the position embedding) and, inside ``nn.MultiheadAttention``, the same dimension
of each head in the query, key and value projections (every head shrinks alike, so
``embed_dim = heads × head_dim`` holds). Layers are physically rebuilt smaller; nothing is
masked. Channels are ranked by L2 magnitude (``MagnitudeImportance(p=2)``), pruned in small
steps until the parameter count reaches the target. Torch-Pruning is optional
(``pip install torch-pruning==1.6.1 --no-deps``); without it :func:`prune_to_ratio` falls back
to :func:`hpmodel.compress.prune.prune_structured` (chains of Linear/Conv only).

Example::

    smaller = prune_to_ratio(model, 0.5, torch.zeros(1, 1, 8, 8))   # half the parameters
    count_parameters(smaller) / count_parameters(model_before)      # ≈ 0.5
"""

from __future__ import annotations

import importlib.util
import logging

import torch
from torch import nn

from hpmodel.compress import prune
from hpmodel.kernel.errors import HpmodelError
from hpmodel.models import count_parameters

log = logging.getLogger(__name__)
FALLBACK = ("torch_pruning is not installed: structured pruning falls back to hpmodel's chain "
            "surgery (mlp, cnn, cnn1d; hidden units, not parameters); pip install "
            "torch-pruning==1.6.1 --no-deps for dependency-aware pruning")


def available() -> bool:
    """True when Torch-Pruning can be imported."""
    return importlib.util.find_spec("torch_pruning") is not None


def prune_to_ratio(model: nn.Module, amount: float, example_input: torch.Tensor,
                   steps: int = 40) -> nn.Module:
    """Remove about ``amount`` of the parameters (channels, hidden units, head dimensions) of
    ``model`` in place, keeping its outputs (the last Linear is left whole); returns it.

    Example::

        prune_to_ratio(transformer_model, 0.3, torch.zeros(1, 1, 8, 8))
    """
    if not 0.0 <= amount < 0.95:
        raise HpmodelError(f"structured pruning amount {amount} must be in [0, 0.95)")
    if not available():
        log.warning(FALLBACK)
        return prune.prune_structured(model, 1.0 - (1.0 - amount) ** 0.5)  # units ~ sqrt(params)
    if amount == 0.0:
        return model
    import torch_pruning as tp

    training = model.training
    # train mode: nn.TransformerEncoderLayer's eval fast path is one fused op the tracer cannot see
    model.train()
    pruner = tp.pruner.MagnitudePruner(
        model, example_input, importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=0.95, iterative_steps=steps, ignored_layers=[_output_layer(model)],
        unwrapped_parameters=_unwrapped(model), round_to=_heads(model))
    target = (1.0 - amount) * count_parameters(model)
    for _ in range(steps):
        if count_parameters(model) <= target:
            break
        pruner.step()
    return model.train(training)


def _heads(model: nn.Module) -> int | None:
    """Channels are removed in multiples of the head count, so every head keeps its size."""
    heads = [m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    return max(heads) if heads else None


def _output_layer(model: nn.Module) -> nn.Module:
    layers = [m for m in model.modules() if isinstance(m, prune.PRUNABLE)]
    if not layers:
        raise HpmodelError("structured pruning needs a model with Linear or Conv layers")
    return layers[-1]


def _unwrapped(model: nn.Module) -> list[tuple[nn.Parameter, int]]:
    """Bare parameters (not inside a Linear/Conv/norm) and their channel axis: the last one,
    e.g. the transformer's learned position embedding (1, tokens, width)."""
    known = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d,
             nn.MultiheadAttention)
    owned = {id(p) for m in model.modules() if isinstance(m, known) for p in m.parameters()}
    return [(p, p.dim() - 1) for p in model.parameters() if id(p) not in owned]


def resize_to_state(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Shrink every Linear, Conv, LayerNorm, MultiheadAttention and bare parameter of a freshly
    built ``model`` to the shapes in ``state_dict`` (a pruned model's weights), so plain
    ``load_state_dict`` fits. In place.

    Example::

        resize_to_state(build_model(cfg.model, shape, 10), load_weights("model.safetensors"))
    """
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        for key, param in list(module.named_parameters(recurse=False)):
            stored = state_dict.get(prefix + key)
            if stored is not None and stored.dim() == param.dim() and stored.shape != param.shape:
                setattr(module, key, nn.Parameter(torch.zeros_like(stored, dtype=param.dtype)))
        _sync_attributes(module)
    return model


def _sync_attributes(module: nn.Module) -> None:
    """Size attributes that forward() reads, from the (resized) parameters."""
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, (nn.Conv1d, nn.Conv2d)):
        module.out_channels = module.weight.shape[0]
        module.in_channels = module.weight.shape[1] * module.groups
    elif isinstance(module, nn.LayerNorm) and module.weight is not None:
        module.normalized_shape = tuple(module.weight.shape)
    elif isinstance(module, nn.MultiheadAttention):
        module.embed_dim = module.kdim = module.vdim = module.in_proj_weight.shape[1]
        module.head_dim = module.embed_dim // module.num_heads


__all__ = ["FALLBACK", "available", "prune_to_ratio", "resize_to_state"]
