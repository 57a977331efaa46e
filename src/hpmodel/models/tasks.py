"""Tasks: what a batch means, which loss trains it and which metrics describe it.

A batch may be a tensor, a tuple ``(x, y, ...)`` or a dict (``{"input_ids", "labels",
"attention_mask"}``); a dict is passed to the model as keyword arguments (the Hugging
Face convention) and a tuple's first element as the input. A model may return a tensor
(logits), a tuple (logits first) or an object with ``.logits`` and ``.loss``; a loss the
model computed is used as it is.

Every task keeps its sums on the device — ``(loss × weight, correct, weight, examples)``
— so a step never waits for the host, and sums reduce over replicas by addition. The
weight is what the loss is a mean over: examples for classification and regression,
target tokens for causal language modelling, so gradient accumulation over micro-batches
of unequal size equals one large batch exactly.

Example::

    task = get_task("causal-lm")
    loss, sums = task.step(model, {"input_ids": ids, "labels": labels})
    task.summarize(sums.tolist())["perplexity"]
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

from hpmodel.kernel.errors import ConfigError, HpmodelError

IGNORE_INDEX = -100  # label value that no loss or metric counts (as in torch and HF)
SUMS = 4  # loss × weight, correct, weight, examples


def move_to(batch: Any, device: torch.device) -> Any:
    """``batch`` (a tensor, or tuples / lists / dicts of them) on ``device``, non-blocking."""
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(move_to(v, device) for v in batch)
    return batch


def model_inputs(batch: Any) -> Any:
    """The part of ``batch`` the model reads: a dict whole, a tuple's first element."""
    if isinstance(batch, (tuple, list)):
        return batch[0]
    return batch


def call_model(model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(logits, loss or None)`` of ``model`` on ``batch`` (see the module docstring)."""
    out = model(**batch) if isinstance(batch, dict) else model(model_inputs(batch))
    if torch.is_tensor(out):
        return out, None
    if isinstance(out, (tuple, list)):
        return out[0], None
    logits, loss = getattr(out, "logits", None), getattr(out, "loss", None)
    if logits is None:
        raise HpmodelError(f"the model returned a {type(out).__name__} without .logits: return "
                           "a tensor of logits, a tuple (logits, ...) or an object with .logits")
    return logits, loss


def targets(batch: Any) -> torch.Tensor:
    """The labels of ``batch``: a tuple's second element, or ``labels`` / ``y`` of a dict."""
    if isinstance(batch, dict):
        for key in ("labels", "y", "targets"):
            if key in batch:
                return batch[key]
        raise HpmodelError(f"a dict batch needs 'labels' (or 'y' or 'targets'); it has {sorted(batch)}")
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[1]
    raise HpmodelError("a batch needs labels: give (x, y) tuples or dicts with 'labels'")


def num_examples(batch: Any) -> int:
    """Examples (rows) in ``batch`` — a host number: shapes need no device sync."""
    first = model_inputs(batch)
    if isinstance(first, dict):
        first = next(iter(first.values()))
    return int(first.shape[0])


class Task:
    """Base: subclasses name themselves and define the loss and the metric sums."""

    name = ""

    def __init__(self, loss_fn: Callable | None = None):
        self.loss_fn = loss_fn

    def weight(self, batch: Any) -> torch.Tensor | int:
        """What this batch's loss is a mean over (examples by default)."""
        return num_examples(batch)

    def step(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, sums)`` of one forward pass; ``loss`` is a mean over ``weight(batch)``."""
        raise NotImplementedError

    def summarize(self, sums: list[float]) -> dict[str, float]:
        loss, correct, weight, examples = sums
        return {"loss": loss / max(weight, 1), "accuracy": correct / max(weight, 1),
                "examples": int(examples)}


def _sums(loss: torch.Tensor, correct, weight, examples: int) -> torch.Tensor:
    """``(loss × weight, correct, weight, examples)`` as one float64 vector on the loss's
    device. Host numbers enter as fill kernels (``full_like``), never as a host→device
    copy: a copy from pageable memory synchronises the stream, at every micro-batch."""
    loss = loss.detach().double()

    def on_device(value) -> torch.Tensor:
        return value.double() if torch.is_tensor(value) else torch.full_like(loss, float(value))

    weight = on_device(weight)
    return torch.stack([loss * weight, on_device(correct), weight, on_device(examples)])


class Classification(Task):
    """Cross-entropy (or ``loss_fn``) over class logits; accuracy by argmax."""

    name = "classification"

    def step(self, model, batch):
        logits, loss = call_model(model, batch)
        y = targets(batch)
        if loss is None:
            loss_fn = self.loss_fn or nn.functional.cross_entropy
            # A loss with ``wants_batch`` also reads the batch's other tensors (distillation).
            loss = (loss_fn(logits, y, batch) if getattr(loss_fn, "wants_batch", False)
                    else loss_fn(logits, y))
        n = len(y)
        with torch.no_grad():
            correct = (logits.argmax(-1) == y).sum()
        return loss, _sums(loss, correct, n, n)


class CausalLM(Task):
    """Next-token cross-entropy, a mean over target tokens (labels ≠ -100).

    ``labels`` are the targets already shifted (``labels[t]`` follows ``input_ids[t]``),
    as ``hpmodel data write --text`` writes them. Metrics: loss per token (nats),
    perplexity, bits per token and, for byte-level tokens, bits per byte.
    """

    name = "causal-lm"

    def __init__(self, loss_fn: Callable | None = None, bytes_per_token: float = 1.0):
        super().__init__(loss_fn)
        self.bytes_per_token = bytes_per_token

    def weight(self, batch):
        return (targets(batch) != IGNORE_INDEX).sum()

    def step(self, model, batch):
        logits, loss = call_model(model, batch)
        labels = targets(batch)
        counted = labels != IGNORE_INDEX
        tokens = counted.sum()
        if loss is None:
            loss_fn = self.loss_fn or nn.functional.cross_entropy
            loss = loss_fn(logits.flatten(0, -2).float(), labels.flatten(),
                           ignore_index=IGNORE_INDEX)
        if torch.is_grad_enabled():
            # Training: no argmax over (batch × seq × vocab) logits at every step — the
            # LM metrics are the loss's; token accuracy is an evaluation metric.
            correct = math.nan
        else:
            correct = ((logits.argmax(-1) == labels) & counted).sum()
        return loss, _sums(loss, correct, tokens, num_examples(batch))

    def summarize(self, sums):
        loss, correct, tokens, examples = sums
        per_token = loss / max(tokens, 1)
        bits = per_token / math.log(2)
        metrics = {"loss": per_token}
        if not math.isnan(correct):  # NaN: sums of training steps (see ``step``)
            metrics["accuracy"] = correct / max(tokens, 1)
        return {**metrics, "perplexity": math.exp(min(per_token, 700.0)),
                "bits_per_token": bits, "bits_per_byte": bits / self.bytes_per_token,
                "tokens": int(tokens), "examples": int(examples)}


class Regression(Task):
    """Mean squared error of the model's output against float targets."""

    name = "regression"

    def step(self, model, batch):
        out, loss = call_model(model, batch)
        y = targets(batch).to(out.dtype)
        out = out.reshape(y.shape) if out.numel() == y.numel() else out
        if loss is None:
            loss = (self.loss_fn or nn.functional.mse_loss)(out, y)
        n = len(y)
        return loss, _sums(loss, 0, n, n)

    def summarize(self, sums):
        loss, _, weight, examples = sums
        return {"loss": loss / max(weight, 1), "mse": loss / max(weight, 1),
                "examples": int(examples)}


TASKS = {task.name: task for task in (Classification, CausalLM, Regression)}


def get_task(task: str | Task, loss_fn: Callable | None = None) -> Task:
    """A :class:`Task` by name (``classification``, ``causal-lm``, ``regression``) or as given.

    Example::

        get_task("regression").name  # 'regression'
    """
    if isinstance(task, Task):
        return task
    if task not in TASKS:
        raise ConfigError(f"train.task = '{task}' is unknown: allowed values are "
                          f"{', '.join(TASKS)}")
    return TASKS[task](loss_fn)
