"""``hpmodel bench trainer``: one model, one data set, one optimizer and one precision
through the training loops a user would pick instead of hpmodel's, in one run.

Contenders: plain PyTorch eager, plain PyTorch + ``torch.compile`` (of the forward and
the loss together), Lightning Fabric (``lightning.fabric.Fabric``), HF Accelerate
(``accelerate.Accelerator``) — each skipped with a note when its package is missing —
and hpmodel's :class:`~hpmodel.train.Trainer`, eager and compiled (``train.compile``: the
whole step). Data are random tokens (or
random features) already on the device; AdamW (fused on CUDA); bf16 autocast on CUDA,
fp32 on the CPU. The rate is steady state: warm-up steps (compilation included) are not
timed, and CUDA is synchronised at both ends of the timed steps. ``vs fastest peer`` is a
row's rate over the fastest non-hpmodel contender's on the same model.

Workloads: on a GPU the GPT at 98M parameters (12 layers × 768, vocab 8,192, untied,
seq 512, batch 64); on the CPU (and with ``--quick``) a tiny GPT and the reference
``cnn1d`` and ``mlp``.

Options (``--set KEY=VALUE``): ``models`` (e.g. ``["gpt"]``), ``contenders``, ``steps``,
``warmup``, ``repeats`` (rounds, contender order rotated; the median rate is reported),
``batch``, ``peak_tflops`` (for MFU; default 989 on H100/H200, bf16 dense), ``threads``
(CPU intra-op threads, default 1; 0 keeps torch's default).

Example::

    hpmodel bench trainer --out runs/bench-trainer            # one GPU: the 98M GPT
    hpmodel bench trainer --out runs/bench-trainer --quick    # CPU, small models, < 1 min
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import importlib.util
import math
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F

from hpmodel.bench.common import write_results
from hpmodel.config import ModelConfig
from hpmodel.kernel.errors import HpmodelError
from hpmodel.kernel.timing import peak_tflops as device_peak_tflops
from hpmodel.models import build_model, count_parameters
from hpmodel.models.gpt import GPT, GPTConfig, causal_lm_loss, flops_per_token
from hpmodel.strategies import get_strategy
from hpmodel.train import Callback, Trainer


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


GPU_WORKLOADS = {
    "gpt": Workload("gpt", batch=64, steps=50, warmup=10, lr=3e-4,
                    gpt=GPTConfig(vocab_size=8192, seq_len=512, width=768, depth=12, heads=12,
                                  tie_embeddings=False)),
}
CPU_WORKLOADS = {
    "gpt": Workload("gpt", batch=16, steps=30, warmup=5, lr=1e-3,
                    gpt=GPTConfig(seq_len=64, width=64, depth=2, heads=2)),
    "cnn1d": Workload("cnn1d", batch=64, steps=60, warmup=5, model=ModelConfig(name="cnn1d", width=32, depth=2),
                      input_shape=(1, 256), lr=1e-3),
    "mlp": Workload("mlp", batch=256, steps=150, warmup=5, model=ModelConfig(name="mlp", width=256, depth=3),
                    input_shape=(64,), lr=1e-3),
}
PEERS = ("pytorch eager", "pytorch compile", "lightning fabric", "hf accelerate")
CONTENDERS = PEERS + ("hpmodel", "hpmodel compile")


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
    return _plain(work, device, data, compiled=False)


def pytorch_compile(work: Workload, device: torch.device, data: tuple) -> float:
    return _plain(work, device, data, compiled=True)


def _plain(work: Workload, device: torch.device, data: tuple, compiled: bool) -> float:
    model = work.build().to(device)
    optimizer = adamw(model.parameters(), work, device)

    def forward_loss(x, y):
        return work.loss_fn(model(x), y)

    # The loss inside the compiled graph, as nanoGPT does (its forward takes the targets).
    forward_loss = torch.compile(forward_loss) if compiled else forward_loss

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


def hpmodel_trainer(work: Workload, device: torch.device, data: tuple, compiled: bool = False) -> float:
    options: dict[str, Any] = {}
    if compiled:
        options["compile"] = True
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
    return hpmodel_trainer(work, device, data, compiled=True)


RUNNERS: dict[str, Callable[[Workload, torch.device, tuple], float]] = {
    "pytorch eager": pytorch_eager, "pytorch compile": pytorch_compile,
    "lightning fabric": lightning_fabric, "hf accelerate": hf_accelerate,
    "hpmodel": hpmodel_trainer, "hpmodel compile": hpmodel_compile,
}


# -- the run -------------------------------------------------------------------------------
def run_bench(out_dir: Path, quick: bool = False, models=None, contenders=None, steps: int = 0,
              warmup: int = -1, repeats: int = 0, batch: int = 0, peak_tflops: float = 0.0,
              threads: int = 1) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() and not quick else "cpu")
    catalogue = GPU_WORKLOADS if device.type == "cuda" else CPU_WORKLOADS
    models, contenders = list(models or catalogue), list(contenders or CONTENDERS)
    for key, chosen, known in (("models", models, catalogue), ("contenders", contenders, CONTENDERS)):
        unknown = [v for v in chosen if v not in known]
        if unknown:
            raise HpmodelError(f"{key} {unknown} unknown here ({device.type}): choose from {', '.join(known)}")
    repeats = repeats or (1 if quick or device.type == "cuda" else 5)
    peak = peak_tflops or device_peak_tflops(device)
    rows, errors = [], {}
    workloads = [_sized(catalogue[name], quick, steps, warmup, batch) for name in models]
    previous = used_threads = torch.get_num_threads()
    try:
        if device.type == "cpu" and threads:
            # One intra-op thread by default: on a shared CPU, OpenMP's spinning threads turn
            # the ratio into a scheduling lottery (5x swings measured on 2 busy cores).
            torch.set_num_threads(threads)
            used_threads = threads
        for work in workloads:
            rows += measure_workload(work, device, contenders, repeats, peak, errors)
    finally:
        torch.set_num_threads(previous)
    add_ratios(rows)
    title = f"hpmodel bench trainer ({device.type}, {repeats} round(s), median)"
    result = write_results(out_dir, "trainer", rows, plot=lambda ax: plot(ax, rows), title=title,
                           extra={"device_type": device.type, "quick": quick, "repeats": repeats,
                                  "peak_tflops": peak or None, "errors": errors,
                                  "cpu_threads": used_threads,
                                  "workloads": {w.name: dataclasses.asdict(w) for w in workloads}})
    for key, message in errors.items():
        print(f"{key} failed: {message}")
    return result


def _sized(work: Workload, quick: bool, steps: int, warmup: int, batch: int) -> Workload:
    changes: dict[str, Any] = {"steps": max(10, work.steps // 3), "warmup": 3} if quick else {}
    changes.update({k: v for k, v in (("steps", steps), ("batch", batch)) if v})
    if warmup >= 0:
        changes["warmup"] = warmup
    return dataclasses.replace(work, **changes)


def measure_workload(work: Workload, device: torch.device, contenders: list[str], repeats: int,
                     peak: float, errors: dict[str, str]) -> list[dict[str, Any]]:
    """One row per contender: the median examples/s over ``repeats`` rounds (failures'
    messages go to ``errors``)."""
    data = work.data(device)
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    notes: dict[str, str] = {}
    for round_index in range(repeats):
        order = contenders[round_index % len(contenders):] + contenders[:round_index % len(contenders)]
        for name in order:
            if name in notes:
                continue
            try:
                seconds = RUNNERS[name](work, device, data)
                rates[name].append(work.batch * work.steps / seconds)
            except Skipped as skipped:
                notes[name] = str(skipped)
            except Exception as error:  # one broken contender must not lose the others
                notes[name] = f"failed: {type(error).__name__}"
                errors[f"{work.name} · {name}"] = (str(error).splitlines() or [""])[0][:300]
            finally:
                _release(device)
            print(f"  {work.name:6s} {name:17s} round {round_index + 1}: "
                  f"{(rates[name] or [math.nan])[-1]:,.1f} examples/s {notes.get(name, '')}", flush=True)
    parameters = count_parameters(work.build())
    rows = []
    for name in contenders:
        rate = statistics.median(rates[name]) if rates[name] else math.nan
        row: dict[str, Any] = {"model": work.name, "contender": name, "examples/s": rate,
                               "tokens/s": rate * work.tokens_per_example if work.gpt else None,
                               "vs fastest peer": None, "vs pytorch eager": None}
        if work.gpt is not None and peak:
            row["MFU"] = flops_per_token(work.gpt) * row["tokens/s"] / (peak * 1e12)
        row.update({"params (M)": round(parameters / 1e6, 2), "note": notes.get(name, "")})
        rows.append(row)
    return rows


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """``vs fastest peer``: rate over the fastest non-hpmodel contender's on the same model;
    ``vs pytorch eager``: over the plain eager loop's."""
    for model in {row["model"] for row in rows}:
        mine = [row for row in rows if row["model"] == model]
        peers = [row["examples/s"] for row in mine if row["contender"] in PEERS
                 and math.isfinite(row["examples/s"])]
        fastest = max(peers, default=math.nan)
        eager = next((row["examples/s"] for row in mine if row["contender"] == "pytorch eager"), math.nan)
        for row in mine:
            row["vs fastest peer"] = round(row["examples/s"] / fastest, 3)
            row["vs pytorch eager"] = round(row["examples/s"] / eager, 3)
            row["examples/s"] = round(row["examples/s"], 1)
            if row["tokens/s"] is not None:
                row["tokens/s"] = round(row["tokens/s"], 0)
            if "MFU" in row:
                row["MFU"] = round(row["MFU"], 4)


def plot(ax, rows: list[dict[str, Any]]) -> None:
    """Bars of each contender's rate over plain PyTorch eager, grouped by model."""
    models = list(dict.fromkeys(row["model"] for row in rows))
    names = list(dict.fromkeys(row["contender"] for row in rows))
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        values = [next((r["vs pytorch eager"] for r in rows if r["model"] == m and r["contender"] == name),
                       math.nan) for m in models]
        ax.bar([j + i * width for j in range(len(models))], [0 if math.isnan(v) else v for v in values],
               width, label=name)
    ax.axhline(1.0, color="k", linestyle="--", linewidth=1)
    ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(models))], models)
    ax.set_ylabel("examples/s over plain PyTorch eager")
    ax.legend(fontsize=7)
