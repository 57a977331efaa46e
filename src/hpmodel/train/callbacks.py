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
import sys
import time
from pathlib import Path
from typing import Any, Callable, TextIO

from tqdm.auto import tqdm

from hpmodel.kernel.files import atomic_write_bytes


class Callback:
    """Override any of these hooks; ``state`` is the live :class:`~hpmodel.train.state.TrainState`."""

    def on_train_begin(self, state) -> None: ...
    def on_train_end(self, state) -> None: ...
    def on_epoch_begin(self, state) -> None: ...
    def on_epoch_end(self, state, logs: dict[str, Any]) -> None: ...
    def on_step_begin(self, state) -> None: ...
    def on_step_end(self, state, logs: dict[str, Any]) -> None: ...


HOOKS = ("on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end", "on_step_begin",
         "on_step_end")


class CallbackList:
    """Calls a hook on each callback in order: ``callbacks.call("on_epoch_end", state, logs)``.

    The callbacks are fixed at construction; each hook's methods are looked up once, less
    the base class's no-ops, since the step hooks run at every step."""

    def __init__(self, callbacks):
        self.callbacks = tuple(callbacks)
        self.methods = {hook: overriding(self.callbacks, hook) for hook in HOOKS}

    def call(self, hook: str, *args: Any) -> None:
        for method in self.methods[hook]:
            method(*args)


def overriding(callbacks, hook: str) -> list[Callable]:
    """The ``hook`` methods of ``callbacks`` other than :class:`Callback`'s own empty one."""
    methods = [getattr(callback, hook) for callback in callbacks]
    return [method for method in methods
            if getattr(method, "__func__", None) is not getattr(Callback, hook)]


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
    TensorBoard event files too when the ``tensorboard`` package is installed.

    After a resume (the run starts at a step > 0) the file keeps the records up to that
    step and drops the later ones, which the resumed run writes again; a record the
    resumed run repeats (an epoch's end redone after a backup at its last step) is not
    written twice. So ``metrics.jsonl`` has each step once, as if the run never stopped.

    Example::

        Trainer(callbacks=[MetricsLogger("runs/x")])
    """

    def __init__(self, out_dir: str | Path, tensorboard: bool = True):
        self.path = Path(out_dir) / "metrics.jsonl"
        self.tensorboard = tensorboard
        self.writer = None
        self.started = False
        self.seen: set[tuple] = set()  # records kept from before the resume

    def on_train_begin(self, state) -> None:
        self.started, self.seen = False, set()
        if not state.strategy.is_main:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # optional extra

                self.writer = SummaryWriter(str(self.path.parent / "tensorboard"))
            except ImportError:  # tensorboard is optional
                self.writer = None

    def on_epoch_begin(self, state) -> None:
        self._start(state)

    def _start(self, state) -> None:
        """Once the backup (if any) is restored: trim the records after the restored step."""
        if self.started:
            return
        self.started = True
        if state.strategy.is_main and state.global_step > 0 and self.path.is_file():
            self.seen = trim_records(self.path, state.global_step)

    def _write(self, state, record: dict[str, Any]) -> None:
        self._start(state)
        if not state.strategy.is_main or record_key(record) in self.seen:
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


def record_key(record: dict[str, Any]) -> tuple:
    return record.get("kind"), record.get("step"), record.get("epoch")


def trim_records(path: Path, step: int) -> set[tuple]:
    """Keep the records of ``path`` at or before ``step`` (and no half-written last line);
    return their keys."""
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a line cut by a kill
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(record)
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in kept).encode())
    return {record_key(r) for r in kept}


class ProgressBar(Callback):
    """Progress of the main process: a tqdm bar per epoch on a terminal, plain lines elsewhere.

    When ``stream`` (default ``sys.stdout``, looked up at use) is not a terminal — a log
    file, a pipe, CI — a bar would write hundreds of carriage-return frames, so instead one
    line is printed every ``every_s`` seconds of ``clock``:
    ``epoch 1/10  step 120/300  loss 0.4123  12.3 steps/s  1,234 ex/s  ETA 0:15``.

    Example::

        Trainer(callbacks=[ProgressBar(every_s=30)])       # a line every 30 s in a log
        ProgressBar(stream=io.StringIO(), clock=fake_clock)  # as the tests drive it
    """

    def __init__(self, stream: TextIO | None = None, every_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic):
        self.stream, self.every_s, self.clock = stream, every_s, clock
        self.bar = None
        self.lines = False  # plain-line mode for this epoch
        self.started = self.last_line = 0.0
        self.first_step = 0
        self.last_logs: dict[str, Any] = {}

    @property
    def out(self) -> TextIO:
        return self.stream if self.stream is not None else sys.stdout

    def interactive(self) -> bool:
        """A terminal (or a Jupyter kernel, where tqdm draws a widget)."""
        isatty = getattr(self.out, "isatty", None)
        return bool(isatty and isatty()) or type(self.out).__module__.startswith("ipykernel")

    def on_epoch_begin(self, state) -> None:
        if not state.strategy.is_main:
            return
        self.lines = not self.interactive()
        self.started = self.last_line = self.clock()
        self.first_step, self.last_logs = state.step_in_epoch, {}
        if not self.lines:
            self.bar = tqdm(total=state.steps_per_epoch, initial=state.step_in_epoch,
                            desc=f"epoch {state.epoch + 1}/{state.epochs}", unit="step",
                            dynamic_ncols=True, leave=False, file=self.out)

    def on_step_end(self, state, logs) -> None:
        if logs:
            self.last_logs = logs
        if self.bar is not None:
            self.bar.update(1)
            if logs:
                self.bar.set_postfix(loss=f"{logs['loss']:.4f}", ex_s=f"{logs['examples_per_second']:.0f}")
        elif self.lines and state.strategy.is_main and self.clock() - self.last_line >= self.every_s:
            self.last_line = self.clock()
            print(self.progress_line(state), file=self.out, flush=True)

    def progress_line(self, state) -> str:
        """``epoch E/N  step S/T  loss L  R steps/s  X ex/s  ETA m:ss`` (fields known so far)."""
        done = state.step_in_epoch - self.first_step
        rate = done / max(self.clock() - self.started, 1e-9)
        parts = [f"epoch {state.epoch + 1}/{state.epochs}",
                 f"step {state.step_in_epoch}/{state.steps_per_epoch}"]
        if "loss" in self.last_logs:
            parts.append(f"loss {self.last_logs['loss']:.4f}")
        parts.append(f"{rate:.1f} steps/s")
        if "examples_per_second" in self.last_logs:
            parts.append(f"{self.last_logs['examples_per_second']:,.0f} ex/s")
        if rate > 0:
            left = int(round(max(state.steps_per_epoch - state.step_in_epoch, 0) / rate))
            parts.append(f"ETA {left // 60}:{left % 60:02d}")
        return "  ".join(parts)

    def on_epoch_end(self, state, logs) -> None:
        if not state.strategy.is_main:
            return
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.lines = False
        shown = {k: v for k, v in logs.items() if isinstance(v, float)}
        text = "  ".join(f"{k} {v:.4f}" for k, v in shown.items())
        print(f"epoch {state.epoch + 1}/{state.epochs}  {text}", file=self.out, flush=True)


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
