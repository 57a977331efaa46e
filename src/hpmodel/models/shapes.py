"""The input shape each reference model expects, and the one-line check of a first batch.

A reference model carries an :class:`InputSpec` as ``model.expected_input``: the
per-example shape it was built for and how it reads it (``(channels, length)`` for
``cnn1d``). :func:`check_input` compares a batch against it once, before any torch
layer can fail deep inside (or, worse, silently reshape); :func:`layout_problem` catches
channels-last data that a conv net would read as many channels of a tiny signal.

Example::

    model = build_model(ModelConfig(name="cnn1d"), input_shape=(1, 40), num_classes=3)
    model.expected_input.describe()   # "(channels, length) = (1, 40)"
    check_input(model, torch.zeros(8, 1, 40))   # fine
    check_input(model, torch.zeros(8, 40, 1))   # HpmodelError, one line
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hpmodel.kernel.errors import ConfigError, HpmodelError
from hpmodel.kernel.schema import make_config

AXES = {"cnn": ("channels", "height", "width"), "cnn1d": ("channels", "length")}
CHANNELS_LAST_AXES = {"cnn": ("height", "width", "channels"), "cnn1d": ("length", "channels")}


@dataclass
class ReferenceOptions:
    """The ``model.options`` the reference models read (a ``model.target`` gets them all)."""

    channels_last: bool = False  # cnn, cnn1d: examples are (H, W, C) / (length, channels)


def reference_options(options: dict[str, Any]) -> ReferenceOptions:
    """``model.options`` checked against :class:`ReferenceOptions` (an unknown key stops)."""
    allowed = [f.name for f in dataclasses.fields(ReferenceOptions)]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(f"model.options.{unknown[0]} is not read by the reference models (they read "
                          f"{', '.join(allowed)}): remove it, or set model.target to your own model")
    return make_config(ReferenceOptions, dict(options), "reference models", section="model.options")


@dataclass(frozen=True)
class InputSpec:
    """What a model reads per example: ``example`` as fed, read as ``axes`` = ``reads``.

    Example::

        InputSpec("cnn", example=(64,), axes=("channels", "height", "width"), reads=(1, 8, 8))
    """

    model: str
    example: tuple[int, ...]  # per-example shape of a batch, (batch, *example)
    axes: tuple[str, ...] = ()  # names of the axes the model reads
    reads: tuple[int, ...] = ()  # the shape it reads them as, after its own reshape

    def describe(self) -> str:
        """``"(channels, length) = (1, 40)"``, or the bare shape when the axes are unnamed."""
        if not self.axes:
            return shape_text(self.example)
        text = f"({', '.join(self.axes)}) = {shape_text(self.reads or self.example)}"
        if self.reads and tuple(self.reads) != tuple(self.example):
            text += f" fed as {shape_text(self.example)}"
        return text


def shape_text(shape) -> str:
    shape = tuple(int(s) for s in shape)
    return f"({shape[0]},)" if len(shape) == 1 else f"({', '.join(map(str, shape))})"


def layout_problem(name: str, reads: tuple[int, ...], example: tuple[int, ...]) -> str:
    """A one-line message when a conv net's channels-first reading looks channels-last, else "".

    ``cnn1d`` reading (40, 1) is 40 channels of length 1: almost surely (length, channels)
    data. ``cnn`` reading (8, 8, 1) is 8 channels of an 8×1 image: almost surely (H, W, C).
    """
    if name == "cnn1d" and len(reads) == 2:
        channels, length = reads
        suspicious = length < 5 and channels > length  # shorter than one k=5 kernel
        wanted = (length, channels)
    elif name == "cnn" and len(reads) == 3:
        suspicious = reads[2] <= 4 and min(reads[0], reads[1]) > 4
        wanted = (reads[2], reads[0], reads[1])
    else:
        return ""
    if not suspicious:
        return ""
    axes = ", ".join(AXES[name])
    return (f"{name} expects ({axes}) = {shape_text(wanted)} per example but got "
            f"{shape_text(example)}, which reads as {reads[0]} channels: the data look channels-last; "
            "--set model.options.channels_last=true reads them as "
            f"({', '.join(CHANNELS_LAST_AXES[name])}) (or --set model.options.channels_last=false "
            "to keep this reading)")


def expected_input(model: nn.Module) -> InputSpec | None:
    """The :class:`InputSpec` of ``model`` (looking through DDP/compile wrappers), or None."""
    seen = 0
    while model is not None and seen < 4:
        spec = getattr(model, "expected_input", None)
        if isinstance(spec, InputSpec):
            return spec
        if isinstance(spec, (tuple, list)):  # a user model may declare a bare shape
            return InputSpec(type(model).__name__, tuple(spec))
        model = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        seen += 1
    return None


def check_input(model: nn.Module, batch: Any) -> None:
    """Stop with one line when ``batch`` (its inputs: ``(batch, *example)``) does not fit ``model``.

    ``batch`` may be the input tensor, an ``(x, y)`` tuple or a dict with ``"x"``/``"input"``.
    Models without an :class:`InputSpec` pass unchecked. Example::

        check_input(model, next(iter(loader)))  # once, on the first batch
    """
    spec = expected_input(model)
    x = _inputs(batch)
    if spec is None or x is None:
        return
    got = tuple(x.shape[1:])
    if got == tuple(spec.example):
        return
    fix = ("rebuild the model for this shape (build_model(..., input_shape=...); in a run the data "
           "decide it: check data.shape or the arrays' layout)")
    if sorted(got) == sorted(spec.example):
        fix = "the axes look swapped: transpose the examples, or set model.options.channels_last"
    raise HpmodelError(f"{spec.model} expects {spec.describe()} per example but got "
                       f"{shape_text(got) if got else '()'} (batch {tuple(x.shape)}): {fix}")


def _inputs(batch: Any) -> torch.Tensor | None:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch:
        return _inputs(batch[0])
    if isinstance(batch, dict):
        for key in ("x", "input", "inputs", "input_ids"):
            if isinstance(batch.get(key), torch.Tensor):
                return batch[key]
    return None


def require_reference_layout(name: str, config, input_shape: tuple[int, ...], reads) -> None:
    """Raise the :func:`layout_problem` message unless ``model.options.channels_last`` was set."""
    if "channels_last" in getattr(config, "options", {}):
        return
    problem = layout_problem(name, tuple(reads), tuple(input_shape))
    if problem:
        raise ConfigError(problem)


__all__ = ["InputSpec", "ReferenceOptions", "check_input", "expected_input", "layout_problem",
           "reference_options", "shape_text"]
