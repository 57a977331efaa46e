"""Pruning: magnitude pruning under a schedule, structured (whole units removed), and 2:4.

- Magnitude pruning uses ``torch.nn.utils.prune`` (``l1_unstructured`` masks per layer,
  ``prune.remove`` to strip them); the schedules follow TensorFlow Model Optimization's
  ``ConstantSparsity`` and ``PolynomialDecay``. :class:`PruningCallback` applies them
  while the :class:`~hpmodel.train.trainer.Trainer` fine-tunes.
- Structured pruning removes whole output units of each Linear/Conv layer of an
  ``nn.Sequential`` and the matching inputs of the next one. The dependency surgery is
  written here because the models are plain chains (Torch-Pruning is not a dependency).
- 2:4 semi-structured sparsity keeps the 2 largest of every 4 weights of a row, then
  ``torch.sparse.to_sparse_semi_structured`` makes the GPU tensor (CUDA, fp16/bf16).

Example::

    schedule = PolynomialDecay(0.0, 0.8, begin_step=0, end_step=200)
    Trainer(callbacks=[PruningCallback(schedule)]).fit(model, optimizer, data, epochs=3)
    strip_pruning(model); sparsity(model)   # ≈ 0.8
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import prune

from hpmodel.kernel.errors import HpmodelError
from hpmodel.train.callbacks import Callback

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)


@dataclass
class ConstantSparsity:
    """Sparsity ``target`` from ``begin_step`` on, re-applied every ``frequency`` steps.

    Example::

        ConstantSparsity(0.5, begin_step=0)(10)   # 0.5
    """

    target: float
    begin_step: int = 0
    end_step: int = -1  # -1: no end
    frequency: int = 10

    def __post_init__(self):
        if not 0.0 <= self.target < 1.0:
            raise HpmodelError(f"target sparsity {self.target} must be in [0, 1)")

    def active(self, step: int) -> bool:
        in_range = step >= self.begin_step and (self.end_step < 0 or step <= self.end_step)
        return in_range and ((step - self.begin_step) % self.frequency == 0 or step == self.end_step)

    def __call__(self, step: int) -> float:
        return self.target


@dataclass
class PolynomialDecay:
    """TF-MOT's PolynomialDecay: s(t) = s1 + (s0 − s1)(1 − (t − t0)/(t1 − t0))^power,
    clamped to [t0, t1], pruning every ``frequency`` steps between them.

    Example::

        PolynomialDecay(0.0, 0.8, begin_step=0, end_step=100)(50)   # 0.8 - 0.8 * 0.5**3 = 0.7
    """

    initial_sparsity: float
    final_sparsity: float
    begin_step: int
    end_step: int
    power: float = 3.0
    frequency: int = 10

    def __post_init__(self):
        if self.end_step <= self.begin_step:
            raise HpmodelError(f"end_step {self.end_step} must come after begin_step {self.begin_step}")
        for value in (self.initial_sparsity, self.final_sparsity):
            if not 0.0 <= value < 1.0:
                raise HpmodelError(f"sparsity {value} must be in [0, 1)")

    def active(self, step: int) -> bool:
        return self.begin_step <= step <= self.end_step and (
            (step - self.begin_step) % self.frequency == 0 or step == self.end_step)

    def __call__(self, step: int) -> float:
        t = min(max(step, self.begin_step), self.end_step)
        left = 1.0 - (t - self.begin_step) / (self.end_step - self.begin_step)
        return self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * left ** self.power


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every Linear / Conv layer, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, PRUNABLE)]


def apply_magnitude_pruning(model: nn.Module, amount: float) -> None:
    """Mask the smallest ``amount`` of each layer's weights (|w|; earlier zeros stay zero).

    Example::

        apply_magnitude_pruning(model, 0.5); strip_pruning(model)
    """
    for _, layer in prunable_layers(model):
        if prune.is_pruned(layer):
            prune.remove(layer, "weight")  # bake the old mask: pruned weights are 0, smallest first
        prune.l1_unstructured(layer, "weight", amount=float(amount))


def strip_pruning(model: nn.Module) -> nn.Module:
    """Make masks permanent: plain ``weight`` parameters with zeros, no hooks (``prune.remove``)."""
    for _, layer in prunable_layers(model):
        if prune.is_pruned(layer):
            prune.remove(layer, "weight")
    return model


def sparsity(model: nn.Module) -> float:
    """Fraction of zeros among the weights of Linear / Conv layers.

    Example::

        sparsity(strip_pruning(model))   # 0.8
    """
    zeros = total = 0
    for _, layer in prunable_layers(model):
        zeros += int((layer.weight == 0).sum())
        total += layer.weight.numel()
    return zeros / max(total, 1)


class PruningCallback(Callback):
    """Apply a pruning schedule while the Trainer fine-tunes; strip the masks at the end.

    Example::

        Trainer(callbacks=[PruningCallback(ConstantSparsity(0.5))])
    """

    def __init__(self, schedule, strip_at_end: bool = True):
        self.schedule, self.strip_at_end = schedule, strip_at_end
        self.applied: list[tuple[int, float]] = []

    def on_step_begin(self, state) -> None:
        step = state.global_step
        if self.schedule.active(step):
            amount = self.schedule(step)
            apply_magnitude_pruning(state.strategy.unwrap(state.model), amount)
            self.applied.append((step, amount))

    def on_train_end(self, state) -> None:
        if self.strip_at_end:
            strip_pruning(state.strategy.unwrap(state.model))


def _keep_indices(weight: torch.Tensor, amount: float) -> torch.Tensor:
    """Output units to keep: the largest L2 norms, at least one, in their original order."""
    norms = weight.detach().flatten(1).norm(dim=1)
    keep = max(1, round(len(norms) * (1.0 - amount)))
    return norms.topk(keep).indices.sort().values


def _slice_layer(layer: nn.Module, out_index=None, in_index=None) -> nn.Module:
    """A new layer of the same kind with only the given output / input units."""
    weight = layer.weight.detach()
    bias = None if layer.bias is None else layer.bias.detach()
    if out_index is not None:
        weight, bias = weight[out_index], (None if bias is None else bias[out_index])
    if in_index is not None:
        weight = weight[:, in_index]
    if isinstance(layer, nn.Linear):
        new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    else:
        new = type(layer)(weight.shape[1], weight.shape[0], layer.kernel_size, stride=layer.stride,
                          padding=layer.padding, dilation=layer.dilation, bias=bias is not None)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new


def prune_structured(model: nn.Module, amount: float) -> nn.Module:
    """Remove ``amount`` of the output units (neurons / channels, smallest L2 norm) of every
    Linear/Conv layer but the last, and the matching inputs of the layer after it.

    Works on chains (``nn.Sequential`` of blocks) where only element-wise layers, pooling,
    dropout and flatten sit between weight layers; the model really shrinks.

    Example::

        smaller = prune_structured(model, 0.5)    # half the hidden units, same outputs
    """
    if not 0.0 <= amount < 1.0:
        raise HpmodelError(f"structured pruning amount {amount} must be in [0, 1)")
    if any(isinstance(m, nn.MultiheadAttention) for m in model.modules()):
        raise HpmodelError("structured pruning supports chains of Linear/Conv layers (mlp, cnn, "
                           "cnn1d), not transformers: use magnitude pruning for this model")
    layers = prunable_layers(model)
    for (name, layer), (next_name, next_layer) in zip(layers, layers[1:]):
        layer, next_layer = _get(model, name), _get(model, next_name)
        keep = _keep_indices(layer.weight, amount)
        _set(model, name, _slice_layer(layer, out_index=keep))
        if isinstance(next_layer, nn.Linear) and not isinstance(layer, nn.Linear):
            # conv → flatten → linear: each channel owns a contiguous run of features
            per_channel = next_layer.in_features // layer.out_channels
            keep = (keep[:, None] * per_channel + torch.arange(per_channel)).flatten()
        _set(model, next_name, _slice_layer(next_layer, in_index=keep))
    return model


def _get(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name)


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def resize_to_weights(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Rebuild Linear/Conv layers whose stored weights are smaller (a structurally pruned model),
    so plain ``load_state_dict`` fits. Example: ``resize_to_weights(build_model(...), weights)``."""
    for name, layer in prunable_layers(model):
        weight = state_dict.get(f"{name}.weight")
        fits = (weight is not None and weight.dim() == layer.weight.dim()
                and all(a <= b for a, b in zip(weight.shape, layer.weight.shape)))
        if fits and weight.shape != layer.weight.shape:  # else load_state_dict names the mismatch
            out_index = torch.arange(weight.shape[0])
            in_index = torch.arange(weight.shape[1])
            _set(model, name, _slice_layer(layer, out_index=out_index, in_index=in_index))
    return model


def semi_structured_mask(weight: torch.Tensor) -> torch.Tensor:
    """2:4 mask: in every group of 4 consecutive weights of a row keep the 2 largest |w|.

    Example::

        w * semi_structured_mask(w)     # exactly half zeros, 2 in every 4
    """
    if weight.shape[-1] % 4:
        raise HpmodelError(f"2:4 sparsity needs the input size to be a multiple of 4, not {weight.shape[-1]}")
    groups = weight.detach().abs().reshape(-1, 4)
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(1, groups.topk(2, dim=1).indices, True)
    return mask.reshape(weight.shape)


def apply_semi_structured(model: nn.Module, to_sparse: bool = True) -> nn.Module:
    """Prune every Linear to 2:4; with ``to_sparse`` (CUDA, fp16/bf16) store the weights as
    ``torch.sparse`` semi-structured tensors so matmuls use the sparse tensor cores.

    Example::

        apply_semi_structured(model.cuda().half())
    """
    for _, layer in prunable_layers(model):
        if not isinstance(layer, nn.Linear) or layer.in_features % 64 or layer.out_features % 64:
            continue  # the sparse kernels need both sizes to be multiples of 64
        with torch.no_grad():
            pruned = layer.weight * semi_structured_mask(layer.weight)
        if to_sparse:
            if not torch.cuda.is_available() or not layer.weight.is_cuda:
                raise HpmodelError("2:4 sparse kernels need the model on a CUDA GPU: move it with "
                                   ".cuda() or pass to_sparse=False to only apply the mask")
            pruned = torch.sparse.to_sparse_semi_structured(pruned)
        layer.weight = nn.Parameter(pruned, requires_grad=False)
    return model


__all__ = ["ConstantSparsity", "PolynomialDecay", "PruningCallback", "apply_magnitude_pruning",
           "apply_semi_structured", "prunable_layers", "prune_structured", "resize_to_weights",
           "semi_structured_mask", "sparsity", "strip_pruning"]
