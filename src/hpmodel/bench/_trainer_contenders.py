"""The training loops ``hpmodel bench trainer`` races, each on the same :class:`Workload`:
plain PyTorch eager and compiled, Lightning Fabric, HF Accelerate and hpmodel's Trainer,
eager and compiled. Each contender returns the seconds of its timed steps; warm-up steps
(compilation and autotuning included) are not timed, and CUDA is synchronised at both ends.

The ``max-autotune`` contenders (opt-in: they compile for minutes on the GPT) compile with
``mode="max-autotune-no-cudagraphs"``: kernels autotuned, no CUDA graphs, so the race is
about the kernels alone (CUDA graphs are ``train.compile_mode = "reduce-overhead"``).

Example::

    device = torch.device("cuda")
    seconds = RUNNERS["pytorch compile max-autotune"](work, device, work.data(device))
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import time
from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F

from hpmodel.config import ModelConfig
from hpmodel.models import build_model
from hpmodel.models.gpt import GPT, GPTConfig, causal_lm_loss
from hpmodel.strategies import get_strategy
from hpmodel.train import Callback, Trainer

AUTOTUNE_MODE = "max-autotune-no-cudagraphs"  # torch.compile's mode of the max-autotune contenders
OPT_IN = ("pytorch compile max-autotune", "hpmodel compile max-autotune")  # minutes of autotuning
# Every contender that is not hpmodel: "vs fastest peer" compares with the fastest that ran.
PEERS = ("pytorch eager", "pytorch compile", "lightning fabric", "hf accelerate", OPT_IN[0])
CONTENDERS = ("pytorch eager", "pytorch compile", "lightning fabric", "hf accelerate", "hpmodel",
              "hpmodel compile")  # the default race: OPT_IN only when named


@dataclasses.dataclass
class Workload:
    """A model and its random data: a GPT (``gpt`` set) or a reference classifier."""

    name: str
    batch: int
    steps: int
    warmup: int
    gpt: GPTConfig | None = None
    model: ModelConfig | None = None
    input_shape: tuple[int, ...] = (64,)
    num_classes: int = 10
    lr: float = 3e-4

    def build(self) -> nn.Module:
        torch.manual_seed(0)
        if self.gpt is not None:
            return GPT(self.gpt)
        return build_model(self.model, self.input_shape, self.num_classes)

    @property
    def tokens_per_example(self) -> int:
        return self.gpt.seq_len if self.gpt is not None else 0

    def loss_fn(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # (B, T, V) vs (B, T) for the LM, (B, classes) vs (B,) otherwise
        return causal_lm_loss(logits, labels) if self.gpt is not None else F.cross_entropy(logits, labels)

    def data(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """One distinct batch per step (warm-up included), generated on the device."""
        generator = torch.Generator(device=device).manual_seed(0)
        n = self.batch * (self.warmup + self.steps)
        if self.gpt is not None:
            window = torch.randint(0, self.gpt.vocab_size, (n, self.gpt.seq_len + 1),
                                   device=device, generator=generator)
            return window[:, :-1].contiguous(), window[:, 1:].contiguous()
        x = torch.randn((n, *self.input_shape), device=device, generator=generator)
        return x, torch.randint(0, self.num_classes, (n,), device=device, generator=generator)




class Skipped(Exception):
    """A contender that cannot run here; its message is the row's note."""


# -- timing --------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(step: Callable, data: tuple, work: Workload, device: torch.device) -> float:
    """Seconds of ``work.steps`` calls of ``step(x, y)`` after ``work.warmup`` untimed ones."""
    x, y = data
    b = work.batch
    for i in range(work.warmup):
        step(x[i * b:(i + 1) * b], y[i * b:(i + 1) * b])
    _sync(device)
    start = time.perf_counter()
    for i in range(work.warmup, work.warmup + work.steps):
        step(x[i * b:(i + 1) * b], y[i * b:(i + 1) * b])
    _sync(device)
    return time.perf_counter() - start


def adamw(parameters, work: Workload, device: torch.device) -> torch.optim.Optimizer:
    return torch.optim.AdamW(parameters, lr=work.lr, weight_decay=0.1, fused=device.type == "cuda")


def autocast(device: torch.device):
    # bf16 on CUDA, fp32 (no autocast) on the CPU, for every contender
    if device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16)


# -- the contenders: each returns the seconds of the timed steps --------------------------
def pytorch_eager(work: Workload, device: torch.device, data: tuple) -> float:
    return _plain(work, device, data, mode=None)


def pytorch_compile(work: Workload, device: torch.device, data: tuple) -> float:
    return _plain(work, device, data, mode="default")


def pytorch_compile_max_autotune(work: Workload, device: torch.device, data: tuple) -> float:
    return _plain(work, device, data, mode=AUTOTUNE_MODE)


def _plain(work: Workload, device: torch.device, data: tuple, mode: str | None) -> float:
    """The plain loop; ``mode`` None is eager, else torch.compile's mode."""
    model = work.build().to(device)
    optimizer = adamw(model.parameters(), work, device)

    def forward_loss(x, y):
        return work.loss_fn(model(x), y)

    # The loss inside the compiled graph, as nanoGPT does (its forward takes the targets).
    if mode is not None:
        forward_loss = torch.compile(forward_loss, **({} if mode == "default" else {"mode": mode}))

    def loss(x, y):
        with autocast(device):
            return forward_loss(x, y)

    return timed_steps(optimizer_steps(loss, lambda value: value.backward(), optimizer), data, work,
                       device)


def optimizer_steps(loss: Callable, backward: Callable, optimizer) -> Callable:
    """One training step of a contender: its loss, its backward, the optimizer step."""

    def step(x, y):
        backward(loss(x, y))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def lightning_fabric(work: Workload, device: torch.device, data: tuple) -> float:
    if importlib.util.find_spec("lightning") is None:
        raise Skipped("lightning not installed")
    from lightning.fabric import Fabric

    fabric = Fabric(accelerator=device.type, devices=1,
                    precision="bf16-mixed" if device.type == "cuda" else "32-true")
    model = work.build().to(device)
    model, optimizer = fabric.setup(model, adamw(model.parameters(), work, device))

    # Fabric's module wrapper applies the autocast.
    step = optimizer_steps(lambda x, y: work.loss_fn(model(x), y), fabric.backward, optimizer)
    return timed_steps(step, data, work, device)


def hf_accelerate(work: Workload, device: torch.device, data: tuple) -> float:
    if importlib.util.find_spec("accelerate") is None:
        raise Skipped("accelerate not installed")
    from accelerate import Accelerator

    accelerator = Accelerator(mixed_precision="bf16" if device.type == "cuda" else "no",
                              cpu=device.type == "cpu")
    model = work.build().to(device)
    model, optimizer = accelerator.prepare(model, adamw(model.parameters(), work, device))

    # prepare() wrapped forward in autocast.
    step = optimizer_steps(lambda x, y: work.loss_fn(model(x), y), accelerator.backward, optimizer)
    return timed_steps(step, data, work, device)


class _SteadyClock(Callback):
    """Times the Trainer's steps after the warm-up ones, synchronised like the others."""

    def __init__(self, warmup: int, device: torch.device):
        self.warmup, self.device = warmup, device
        self.start = self.seconds = 0.0

    def on_train_begin(self, state) -> None:
        self.on_step_end(state, {})  # no warm-up: time from the first step

    def on_step_end(self, state, logs) -> None:
        if state.global_step == self.warmup:
            _sync(self.device)
            self.start = time.perf_counter()

    def on_train_end(self, state) -> None:
        _sync(self.device)
        self.seconds = time.perf_counter() - self.start


def hpmodel_trainer(work: Workload, device: torch.device, data: tuple,
                    compile_mode: str | None = None) -> float:
    """hpmodel's Trainer; ``compile_mode`` None is eager, else ``train.compile_mode``."""
    options: dict[str, Any] = {}
    if compile_mode is not None:
        options.update(compile=True, compile_mode=compile_mode)
    # The GPT as a user trains it: task causal-lm (token loss, accuracy and token counts).
    if work.gpt is not None:
        options["task"] = "causal-lm"
    else:
        options["loss_fn"] = work.loss_fn
    clock = _SteadyClock(work.warmup, device)
    trainer = Trainer(strategy=get_strategy("one-device", device=str(device)),
                      precision="bf16" if device.type == "cuda" else "fp32", batch_size=work.batch,
                      progress=False, max_steps=work.warmup + work.steps,
                      callbacks=[clock], seed=0, **options)
    trainer.fit(work.build, lambda parameters: adamw(parameters, work, device), data, epochs=1)
    return clock.seconds


def hpmodel_compile(work: Workload, device: torch.device, data: tuple) -> float:
    return hpmodel_trainer(work, device, data, compile_mode="default")


def hpmodel_compile_max_autotune(work: Workload, device: torch.device, data: tuple) -> float:
    return hpmodel_trainer(work, device, data, compile_mode=AUTOTUNE_MODE)


RUNNERS: dict[str, Callable[[Workload, torch.device, tuple], float]] = {
    "pytorch eager": pytorch_eager, "pytorch compile": pytorch_compile,
    "lightning fabric": lightning_fabric, "hf accelerate": hf_accelerate,
    "hpmodel": hpmodel_trainer, "hpmodel compile": hpmodel_compile,
    "pytorch compile max-autotune": pytorch_compile_max_autotune,
    "hpmodel compile max-autotune": hpmodel_compile_max_autotune,
}

__all__ = ["AUTOTUNE_MODE", "CONTENDERS", "OPT_IN", "PEERS", "RUNNERS", "Skipped", "Workload"]
