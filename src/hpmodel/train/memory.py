"""Memory tools usable with any strategy: activation recomputation and CPU offload.

PyTorch does the heavy lifting: ``torch.utils.checkpoint`` (through torch's
``checkpoint_wrapper``, which keeps the state-dict keys of the wrapped block) drops a
block's activations after its forward pass and recomputes them in backward; and
``torch.autograd.graph.save_on_cpu`` moves every tensor autograd saves for backward to
host memory ("memory swap") and brings it back when backward needs it. Both are config
switches: ``train.recompute = "all" | "every-k"`` and ``train.offload_activations = true``.

:class:`SavedTensorMeter` counts the bytes autograd keeps for backward (with saved-tensor
hooks), so tests and benchmarks can show what each tool saves.

Example::

    model = apply_recompute(model, every=2)          # checkpoint blocks 0, 2, 4, ...
    with offload_activations(torch.device("cuda")):
        loss_fn(model(x), y).backward()
"""

from __future__ import annotations

import contextlib
import functools
import re
from typing import Any

import torch
from torch import nn

from hpmodel.kernel.errors import ConfigError, HpmodelError
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper


def parse_recompute(value: str) -> int:
    """``train.recompute`` → checkpoint every k-th block (0: off): none → 0, all → 1, every-k → k.

    Example::

        parse_recompute("every-2")  # 2
    """
    if value in ("none", "", "off"):
        return 0
    if value == "all":
        return 1
    match = re.fullmatch(r"every-(\d+)", value)
    if not match or int(match.group(1)) < 1:
        raise ConfigError(f"train.recompute = '{value}' is unknown: use none, all or every-K "
                          "(K ≥ 1, e.g. every-2)")
    return int(match.group(1))


def blocks_of(model: nn.Module) -> list[nn.Module]:
    """The blocks of a model that is a sequence of blocks (``nn.Sequential`` or ``nn.ModuleList``)."""
    if isinstance(model, (nn.Sequential, nn.ModuleList)):
        return list(model)
    raise HpmodelError(f"a {type(model).__name__} is not a sequence of blocks: build the model as "
                       "torch.nn.Sequential(block, block, ...) so it can be split at block boundaries")


def apply_recompute(model: nn.Module, every: int = 1) -> nn.Module:
    """Recompute the activations of every ``every``-th block in backward instead of keeping them.

    Blocks 0, k, 2k, ... are wrapped in place (state-dict keys are unchanged); ``every=0``
    leaves the model as it is. Returns ``model``.

    Example::

        model = apply_recompute(nn.Sequential(*blocks), every=1)
    """
    if every < 0:
        raise ConfigError(f"recompute every = {every} must be 0 (off) or more")
    if every == 0:
        return model

    blocks = blocks_of(model)
    for index in range(0, len(blocks), every):
        if not _has_parameters_or_compute(blocks[index]):
            continue
        model[index] = checkpoint_wrapper(blocks[index])  # non-reentrant torch.utils.checkpoint
    return model


def _has_parameters_or_compute(block: nn.Module) -> bool:
    # A Flatten or Reshape keeps nothing for backward: wrapping it would only add overhead.
    return any(True for _ in block.parameters()) or len(list(block.children())) > 0


def recompute_transform(value: str):
    """A picklable ``f(model) -> model`` for ``train.recompute`` (None when it is "none").

    Example::

        Trainer(model_transform=recompute_transform("every-2"))
    """
    every = parse_recompute(value)
    return functools.partial(apply_recompute, every=every) if every else None


def offload_activations(device: torch.device | str | None = None, enabled: bool = True):
    """A context in which autograd keeps saved activations in host memory (pinned on CUDA).

    Example::

        with offload_activations("cuda"):
            loss = loss_fn(model(x), y)
            loss.backward()
    """
    if not enabled:
        return contextlib.nullcontext()
    device = torch.device(device) if device is not None else torch.device("cpu")
    pin = device.type == "cuda" and torch.cuda.is_available()
    return torch.autograd.graph.save_on_cpu(pin_memory=pin)


class SavedTensorMeter(torch.autograd.graph.saved_tensors_hooks):
    """Counts the bytes autograd saves for backward while the context is open.

    ``resident_bytes``: kept as they are (on the compute device); ``offloaded_bytes``:
    handed to :func:`offload_activations`'s hooks when ``offload=True``. Tensors saved
    inside a recomputed block are not kept at all and so are not counted. Parameters are
    saved too (a Linear keeps its weight); they are counted once per save like any tensor.

    Example::

        with SavedTensorMeter() as meter:
            loss = model(x).sum()
        meter.resident_bytes
    """

    def __init__(self, offload: bool = False, device: torch.device | str | None = None):
        self.resident_bytes = 0
        self.offloaded_bytes = 0
        self.count = 0
        inner = offload_activations(device) if offload else None

        def pack(tensor: torch.Tensor) -> Any:
            self.count += 1
            size = tensor.numel() * tensor.element_size()
            if inner is None:
                self.resident_bytes += size
                return tensor
            self.offloaded_bytes += size
            return inner.pack_hook(tensor)

        def unpack(packed: Any) -> torch.Tensor:
            return packed if inner is None else inner.unpack_hook(packed)

        super().__init__(pack, unpack)

    def __enter__(self) -> "SavedTensorMeter":
        super().__enter__()
        return self


__all__ = ["SavedTensorMeter", "apply_recompute", "blocks_of", "offload_activations",
           "parse_recompute", "recompute_transform"]
