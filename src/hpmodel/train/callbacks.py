"""Callbacks: code that runs at the begin and end of training, epochs and steps.

Only the main process writes files or draws progress; callbacks check
``state.strategy.is_main`` themselves.

Example::

    class PrintLoss(Callback):
        def on_epoch_end(self, state, logs):
            print(state.epoch, logs["train_loss"])
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any
from tqdm.auto import tqdm


class Callback:
    """Override any of these hooks; ``state`` is the live :class:`~hpmodel.train.state.TrainState`."""

    def on_train_begin(self, state) -> None: ...
    def on_train_end(self, state) -> None: ...
    def on_epoch_begin(self, state) -> None: ...
    def on_epoch_end(self, state, logs: dict[str, Any]) -> None: ...
    def on_step_begin(self, state) -> None: ...
    def on_step_end(self, state, logs: dict[str, Any]) -> None: ...


class CallbackList:
    """Calls a hook on each callback in order: ``callbacks.call("on_epoch_end", state, logs)``."""

    def __init__(self, callbacks):
        self.callbacks = list(callbacks)

    def call(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(*args)


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved for ``patience`` epochs.

    Example::

        Trainer(callbacks=[EarlyStopping("val_loss", patience=3)])
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 3, mode: str = "min",
                 min_delta: float = 0.0):
        self.monitor, self.patience, self.mode, self.min_delta = monitor, patience, mode, min_delta
        self.best = math.inf if mode == "min" else -math.inf
        self.waited = 0

    def on_epoch_end(self, state, logs) -> None:
        value = logs.get(self.monitor)
        if value is None:
            return
        better = (value < self.best - self.min_delta if self.mode == "min"
                  else value > self.best + self.min_delta)
        if better:
            self.best, self.waited = value, 0
        else:
            self.waited += 1
            if self.waited >= self.patience:
                state.stop_training = True


class MetricsLogger(Callback):
    """Append one JSON object per logged step and per epoch to ``metrics.jsonl``;
    TensorBoard event files too when the ``tensorboard`` package is installed."""

    def __init__(self, out_dir: str | Path, tensorboard: bool = True):
        self.path = Path(out_dir) / "metrics.jsonl"
        self.tensorboard = tensorboard
        self.writer = None

    def on_train_begin(self, state) -> None:
        if not state.strategy.is_main:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # optional extra

                self.writer = SummaryWriter(str(self.path.parent / "tensorboard"))
            except ImportError:  # tensorboard is optional
                self.writer = None

    def _write(self, state, record: dict[str, Any]) -> None:
        if not state.strategy.is_main:
            return
        with self.path.open("a") as out:
            out.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                    self.writer.add_scalar(key, value, record.get("step", 0))

    def on_step_end(self, state, logs) -> None:
        if logs:
            self._write(state, {"kind": "step", "step": state.global_step, "epoch": state.epoch, **logs})

    def on_epoch_end(self, state, logs) -> None:
        self._write(state, {"kind": "epoch", "step": state.global_step, "epoch": state.epoch, **logs})

    def on_train_end(self, state) -> None:
        if self.writer is not None:
            self.writer.close()


class ProgressBar(Callback):
    """A tqdm bar per epoch with rate, ETA and the latest loss (main process only)."""

    def __init__(self):
        self.bar = None
        self.started = 0.0

    def on_epoch_begin(self, state) -> None:
        if not state.strategy.is_main:
            return

        self.bar = tqdm(total=state.steps_per_epoch, initial=state.step_in_epoch,
                        desc=f"epoch {state.epoch + 1}/{state.epochs}", unit="step",
                        dynamic_ncols=True, leave=False)

    def on_step_end(self, state, logs) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        if logs:
            self.bar.set_postfix(loss=f"{logs['loss']:.4f}", ex_s=f"{logs['examples_per_second']:.0f}")

    def on_epoch_end(self, state, logs) -> None:
        if self.bar is None:
            return
        self.bar.close()
        self.bar = None
        shown = {k: v for k, v in logs.items() if isinstance(v, float)}
        text = "  ".join(f"{k} {v:.4f}" for k, v in shown.items())
        print(f"epoch {state.epoch + 1}/{state.epochs}  {text}", flush=True)


class Timer(Callback):
    """Measures training wall time and examples per second for the summary."""

    def __init__(self):
        self.start = 0.0
        self.examples = 0

    def on_train_begin(self, state) -> None:
        self.start = time.perf_counter()

    def on_step_end(self, state, logs) -> None:
        self.examples += state.last_step_examples

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start
