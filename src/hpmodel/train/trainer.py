"""``Trainer.fit / evaluate / predict``: the training loop, over any strategy.

The strategy decides where things run; the Trainer owns the step: mixed precision
(``torch.amp``), gradient accumulation that equals the large batch exactly, clipping,
LR schedules, metrics reduced over replicas, callbacks and progress.

Example::

    trainer = hm.Trainer(strategy=hm.get_strategy("one-device"), precision="bf16", grad_accum=4)
    result = trainer.fit(lambda: make_model(), lambda params: torch.optim.AdamW(params),
                         (x_train, y_train), epochs=3, val_data=(x_val, y_val))
    result.model, result.history
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from hpmodel.data import Pipeline, why_waited
from hpmodel.kernel.errors import HpmodelError
from hpmodel.models import check_input
from hpmodel.strategies import OneDevice, OwnsForwardBackward, ProfilesBatches
from hpmodel.train.batches import (Batches, release_batches, set_warm_start, to_batches,
                                   warm_start_epochs)
from hpmodel.train.callbacks import CallbackList, EarlyStopping, ProgressBar, Timer
from hpmodel.train.compiling import check_compile_mode, compile_step
from hpmodel.train.memory import offload_activations
from hpmodel.train.precision import autocast, grad_scaler
from hpmodel.train.seeding import seed_everything
from hpmodel.train.state import TrainState
from hpmodel.train.sums import PendingWindow, RunningSums, WindowLogs
from hpmodel.models.tasks import SUMS, Task, call_model, get_task, move_to, num_examples


@dataclass
class FitResult:
    """What ``fit`` returns: the trained model (on the CPU), per-epoch history and a summary."""

    model: nn.Module | None
    history: list[dict[str, Any]]
    summary: dict[str, Any]
    state_dict: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    wrapped_model: nn.Module | None = field(default=None, repr=False)  # as the strategy set it up


class Trainer:
    """Runs training and evaluation under a strategy.

    ``batch_size`` is per replica (global = per replica × replicas, as in tf.distribute)
    unless ``hold_global_batch`` is set, when it is the global batch split over replicas.
    It applies to every unbatched input (tensors, splits, Datasets, unbatched pipelines);
    a batched :mod:`hpmodel.data` pipeline brings its own batch (see :mod:`.batches`).
    """

    def __init__(self, strategy=None, *, precision: str = "fp32", grad_accum: int = 1,
                 clip_grad_norm: float = 0.0, callbacks=(), seed: int = 0, batch_size: int = 64,
                 loss_fn: Callable | None = None, log_every_steps: int = 10,
                 progress: bool = True, max_steps: int = 0, early_stopping_patience: int = 0,
                 schedule: Callable | None = None, model_transform: Callable | None = None,
                 offload_activations: bool = False, hold_global_batch: bool = False,
                 drop_remainder: bool = False, task: str | Task = "classification",
                 compile: bool | str = False, compile_mode: str = "default"):
        if grad_accum < 1:
            raise HpmodelError(f"grad_accum = {grad_accum} must be at least 1")
        check_compile_mode(compile_mode, compile, grad_accum)
        self.strategy = strategy if strategy is not None else OneDevice()
        self.precision = precision
        self.grad_accum = grad_accum
        self.clip_grad_norm = clip_grad_norm
        self.callbacks = list(callbacks)
        self.seed = seed
        self.batch_size = batch_size
        self.loss_fn = loss_fn or nn.functional.cross_entropy  # what a pipeline stage applies
        self.task = get_task(task, loss_fn)  # the batch's meaning, its loss and its metrics
        self.compile = compile  # torch.compile the training step (model, loss and sums)
        self.compile_mode = compile_mode  # torch.compile's mode (see train/compiling.py)
        self.log_every_steps = max(1, log_every_steps)
        self.progress = progress
        self.max_steps = max_steps
        self.early_stopping_patience = early_stopping_patience
        self.schedule = schedule  # f(optimizer, total_steps) -> LR scheduler
        self.model_transform = model_transform  # f(model) -> model, before the strategy wraps it
        self.offload_activations = offload_activations  # keep saved activations in host memory
        self.hold_global_batch = hold_global_batch
        self.drop_remainder = drop_remainder

    # -- public verbs ---------------------------------------------------------------------
    def fit(self, model, optimizer, data, *, epochs: int = 1, val_data=None) -> FitResult:
        """Train ``model`` (a module or a factory) with ``optimizer`` (a factory f(params))."""
        self.check_strategy_runs_task()  # here, before any process starts
        result = self.strategy.launch(self._fit_entry, model, optimizer, data, epochs, val_data)
        if result is not None and result.model is None and result.state_dict:
            result.model = model() if callable(model) and not isinstance(model, nn.Module) else model
            result.model.load_state_dict(result.state_dict)
        return result

    def _fit_entry(self, *args) -> FitResult:
        result = self.fit_in_process(*args)
        if dist.is_initialized():
            # Under a process-group strategy the result may cross to a parent process:
            # host weights only (a CUDA or DDP module cannot); ``fit`` rebuilds the model.
            result.wrapped_model = result.model = None
        return result

    def fit_in_process(self, model, optimizer, data, epochs: int, val_data=None) -> FitResult:
        """The body of ``fit`` in each process (already launched)."""
        seed_everything(self.seed)
        state = self.build_state(model, optimizer, data, epochs)
        callbacks = CallbackList(self._default_callbacks() + self.callbacks)
        timer = callbacks.callbacks[0]
        callbacks.call("on_train_begin", state)
        warm = warm_start_epochs(state.train_data, epochs)  # see hpmodel.data.warm
        try:
            while state.epoch < epochs and not state.stop_training:
                if self.max_steps and state.global_step >= self.max_steps and not state.step_in_epoch:
                    break  # resumed from a backup taken after the last step's epoch ended
                set_warm_start(state.train_data, warm, state.epoch, epochs)
                self.run_epoch(state, callbacks)
                logs = dict(state.extra.pop("epoch_logs", {}))
                if val_data is not None:
                    logs.update({f"val_{k}": v for k, v in self.evaluate_model(state.model, val_data).items()
                                 if k not in ("examples", "tokens")})
                state.history.append({"epoch": state.epoch + 1, **logs})
                callbacks.call("on_epoch_end", state, logs)
                state.epoch, state.step_in_epoch = state.epoch + 1, 0
        finally:
            release_batches(state.train_data, warm)
        callbacks.call("on_train_end", state)
        summary = {"steps": state.global_step, "epochs": state.epoch,
                   "wall_seconds": timer.seconds,
                   "examples_per_second": timer.examples / max(timer.seconds, 1e-9)}
        summary.update(state.extra.pop("throughput", {}))
        if isinstance(state.train_data, Pipeline):  # the last epoch's, as this process saw it
            summary["input"] = why_waited(state.train_data.stats())
        weights = self.strategy.model_state_dict(state.model)
        model_out = self.strategy.unwrap(state.model) if self.strategy.world_size == 1 else None
        return FitResult(model=model_out, history=state.history, summary=summary,
                         state_dict=weights if self.strategy.is_main else {},
                         wrapped_model=state.model)

    def evaluate(self, model: nn.Module, data) -> dict[str, float]:
        """Loss and accuracy of ``model`` on ``data`` (reduced over replicas)."""
        self.check_strategy_runs_task()
        return self.strategy.launch(self.evaluate_in_process, model, data)

    def evaluate_in_process(self, model: nn.Module, data) -> dict[str, float]:
        if not getattr(model, "_hpmodel_setup", False):
            model, _ = self.strategy.setup(model, None)
        return self.evaluate_model(model, data)

    def predict(self, model: nn.Module, data) -> torch.Tensor:
        """Logits for every example of ``data``, in order (computed in this process)."""
        module = self.strategy.unwrap(model)
        device = next(module.parameters()).device
        module.eval()
        outputs = []
        with torch.no_grad(), autocast(self.precision, device):
            for batch in self.as_batches(data, shuffle=False):
                logits, _ = call_model(module, move_to(batch, device))
                outputs.append(logits.float().cpu())
        return torch.cat(outputs)

    # -- building blocks --------------------------------------------------------------------
    def check_strategy_runs_task(self) -> None:
        """A strategy that runs forward and backward itself (the pipeline) scores (x, y)
        classification only: any other task is refused in one line, before any work."""
        if isinstance(self.strategy, OwnsForwardBackward) and self.task.name != "classification":
            raise HpmodelError(f"strategy 'pipeline' trains (x, y) classification batches, not "
                               f"task '{self.task.name}': use mirrored or sharded for it")

    def build_state(self, model, optimizer, data, epochs: int) -> TrainState:
        self.check_strategy_runs_task()
        model = model() if callable(model) and not isinstance(model, nn.Module) else model
        if self.model_transform is not None:
            model = self.model_transform(model)
        batches = self.as_batches(data, shuffle=True)
        if not isinstance(data, Pipeline):  # a user's pipeline is not read ahead (its position)
            first = next(iter(self.as_batches(data, shuffle=False)))
            check_input(model, first)  # a wrong shape is one line, not a torch traceback
            if isinstance(self.strategy, ProfilesBatches):  # e.g. a pipeline times its blocks
                self.strategy.set_sample_batch(first)
        model, optimizer = self.strategy.setup(model, optimizer)
        model._hpmodel_setup = True
        train_data = self.strategy.distribute(batches)
        count = train_data.cardinality()
        if count < 0 and not self.max_steps:
            raise HpmodelError("the training data has no known length (a filter, repeat() or "
                               "tar shards): set train.max_steps (Trainer(max_steps=N)) to say "
                               "when training ends")
        steps_per_epoch = math.ceil(count / self.grad_accum) if count >= 0 else self.max_steps
        total_steps = steps_per_epoch * epochs
        if self.max_steps:
            total_steps = min(total_steps, self.max_steps)
        scheduler = self.schedule(optimizer, total_steps) if self.schedule else None
        task_step = self.task.step
        if self.compile:  # True: inductor; a string names another torch.compile backend
            # The whole step — forward, loss and metric sums — is one graph, so the loss and
            # the argmax fuse with the logits they read (as nanoGPT's forward takes targets).
            task_step = compile_step(self.task.step, self.compile, self.compile_mode)
        return TrainState(strategy=self.strategy, model=model, task_step=task_step,
                          optimizer=optimizer,
                          scheduler=scheduler, scaler=grad_scaler(self.precision, self.strategy.device),
                          train_data=train_data, epochs=epochs, steps_per_epoch=steps_per_epoch,
                          total_steps=total_steps, sized=count >= 0)

    def as_batches(self, data, shuffle: bool) -> Batches:
        """Any accepted input as batches of the global batch size (:func:`.batches.to_batches`)."""
        return to_batches(data, self.global_batch_size(), shuffle=shuffle, seed=self.seed,
                          drop_remainder=self.drop_remainder and shuffle)

    def global_batch_size(self) -> int:
        if self.hold_global_batch:
            return self.batch_size
        return self.batch_size * self.strategy.num_replicas

    def _default_callbacks(self) -> list:
        defaults: list = [Timer()]
        if self.progress:
            defaults.append(ProgressBar())
        if self.early_stopping_patience:
            defaults.append(EarlyStopping("val_loss", self.early_stopping_patience))
        return defaults

    # -- the loop ---------------------------------------------------------------------------
    def run_epoch(self, state: TrainState, callbacks: CallbackList) -> None:
        state.train_data.set_epoch(state.epoch)
        callbacks.call("on_epoch_begin", state)
        state.model.train()
        batches = iter(state.train_data)
        device = state.strategy.device
        # Sums stay on the device so the step never waits for a host copy (see tasks.py).
        sums = RunningSums(device)
        state.extra["finite"] = sums.finite  # what a backup reads before it writes
        window_start = epoch_start = time.perf_counter()
        waited = 0.0  # seconds the loop spent waiting for its next batch
        pending = None  # a log window read at the next step (see PendingWindow)
        while not state.stop_training:
            if self.max_steps and state.global_step >= self.max_steps:  # e.g. resumed at the end
                state.stop_training = True
                break
            fetch_start = time.perf_counter()
            group = list(itertools.islice(batches, self.grad_accum))
            waited += time.perf_counter() - fetch_start
            if not group:
                break
            callbacks.call("on_step_begin", state)
            sums.window += self.train_step(state, group)
            state.global_step += 1
            state.step_in_epoch += 1
            state.last_step_examples = sum(num_examples(b) for b in group) * state.strategy.num_replicas
            logs = pending.read() if pending is not None else {}
            pending = None
            if state.global_step % self.log_every_steps == 0:
                window = self.strategy.reduce(sums.take_window(), "sum")
                reader = WindowLogs(self, state, time.perf_counter() - window_start)
                window_start = time.perf_counter()
                if self.defers_logs(state, window, callbacks):
                    pending = PendingWindow(window, reader)
                else:
                    logs = reader(window.tolist())
            callbacks.call("on_step_end", state, logs)
            if self.max_steps and state.global_step >= self.max_steps:
                state.stop_training = True
        if pending is not None:  # a callback stopped the run right after a log step
            pending.read()  # its finiteness check still runs (the line itself is not logged)
        sums.take_window()
        epoch = self.task.summarize(self.strategy.reduce(sums.totals, "sum").tolist())
        self.check_finite(state, epoch["loss"])
        seconds = max(time.perf_counter() - epoch_start, 1e-9)
        wait_fraction = float(self.strategy.reduce(waited / seconds, "max"))
        logs = {f"train_{k}": v for k, v in epoch.items() if k not in ("examples", "tokens")}
        state.extra["epoch_logs"] = {**logs, "input_wait_fraction": wait_fraction}
        if "tokens" in epoch:
            state.extra["throughput"] = {"tokens": epoch["tokens"],
                                         "tokens_per_second": epoch["tokens"] / seconds}

    def check_finite(self, state: TrainState, loss: float, step: int = -1) -> None:
        """Stop (one line, exit 2) when ``loss`` — the mean of a log window's or an epoch's
        summed, replica-reduced losses — is non-finite: NaN and inf survive the sums, so a
        finite mean means every step it covers (up to ``step``) was finite."""
        if math.isfinite(loss):
            return
        step = state.global_step if step < 0 else step
        raise HpmodelError(f"the training loss became {loss} at step {step}: lower "
                           "optimizer.lr, enable train.clip_grad_norm, or use precision "
                           "bf16/fp32 (no backup of this state was written)")

    def train_step(self, state: TrainState, group: list) -> torch.Tensor:
        """One optimizer step over ``group`` micro-batches, weighted so it equals one large batch."""
        device = state.strategy.device
        with offload_activations(device, enabled=self.offload_activations):
            if isinstance(state.strategy, OwnsForwardBackward):  # pipeline parallelism
                sums = state.strategy.run_micro_batches(
                    state.model, group, self.loss_fn, scaler=state.scaler,
                    context=lambda: autocast(self.precision, device))
            else:
                sums = self.micro_batch_steps(state, group)
        if self.clip_grad_norm:
            if state.scaler is not None:
                state.scaler.unscale_(state.optimizer)
            state.strategy.clip_grad_norm(state.model, self.clip_grad_norm)
        state.strategy.optimizer_step(state.optimizer, state.scaler)
        state.optimizer.zero_grad(set_to_none=True)
        if state.scheduler is not None:
            state.scheduler.step()
        return sums

    def micro_batch_steps(self, state: TrainState, group: list) -> torch.Tensor:
        """Forward and backward of each batch of ``group``; returns the task's sums."""
        device = state.strategy.device
        group = [move_to(batch, device) for batch in group]
        shares = self.loss_shares(group)
        sums = None
        for index, batch in enumerate(group):
            last = index == len(group) - 1
            sync = contextlib.nullcontext() if last else state.strategy.no_sync(state.model)
            with sync:
                with autocast(self.precision, device):
                    loss, step_sums = state.task_step(state.model, batch)
                if shares is not None:
                    loss = loss * shares[index]
                if state.scaler is not None:
                    loss = state.scaler.scale(loss)
                state.strategy.backward(loss)
            # A compiled step's outputs may live in buffers its next call reuses (CUDA
            # graphs): with more micro-batches to come, keep an own copy of the first sums.
            if sums is None:
                sums = step_sums if last else step_sums.clone()
            else:
                sums = sums + step_sums
        return sums

    def loss_shares(self, group: list) -> list | None:
        """Each micro-batch's share of the step's examples or tokens, by which its loss is
        scaled so that the accumulated gradient equals the large batch's. None for a
        single micro-batch: its share is exactly 1, and a multiply by 1 would still cost a
        kernel and an autograd node at every step (the same gradient, bit for bit)."""
        if len(group) == 1:
            return None
        weights = [self.task.weight(batch) for batch in group]
        total = sum(weights)
        return [weight / total for weight in weights]

    def defers_logs(self, state: TrainState, window: torch.Tensor, callbacks) -> bool:
        """Read this log window one step later (a GPU's sums, not the epoch's last step, no
        backup at this step, and a next step that is no log step itself); else now, as on
        the CPU."""
        last = (not state.sized or state.step_in_epoch >= state.steps_per_epoch
                or bool(self.max_steps and state.global_step >= self.max_steps))
        backup = any(getattr(c, "saves_at", lambda s: False)(state) for c in callbacks.callbacks)
        return window.is_cuda and self.log_every_steps > 1 and not last and not backup

    def evaluate_model(self, model: nn.Module, data) -> dict[str, float]:
        """The task's metrics (loss, accuracy, ...) over ``data``, reduced over all processes."""
        self.check_strategy_runs_task()
        device = self.strategy.device
        batches = self.strategy.distribute(self.as_batches(data, shuffle=False))
        model.eval()
        sums = torch.zeros(SUMS, dtype=torch.float64, device=device)
        with torch.no_grad(), autocast(self.precision, device):
            owns = isinstance(self.strategy, OwnsForwardBackward)
            for batch in batches:
                if owns:  # only a pipeline's last stage has logits: it sums, others add 0
                    sums += self.strategy.run_micro_batches(model, [batch], self.loss_fn,
                                                            train=False)
                    continue
                sums += self.task.step(model, move_to(batch, device))[1]
        model.train()
        return self.task.summarize(self.strategy.reduce(sums, "sum").tolist())
