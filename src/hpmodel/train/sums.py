"""The training loop's metric sums on the device and their way into log lines: an epoch's
running sums (:class:`RunningSums`), a window's log line (:class:`WindowLogs`) and, on a
GPU, a window read one step late so the loop never waits on the device (:class:`PendingWindow`).
Plain PyTorch (pinned memory, non-blocking copies, CUDA events) does the work."""

from __future__ import annotations

from typing import Any

import torch

from hpmodel.models.tasks import SUMS
from hpmodel.train.state import TrainState


class RunningSums:
    """The task's sums of an epoch on the device: ``window`` since the last log, ``totals``
    before it. A step adds to ``window`` only (one kernel); NaN and inf stay non-finite
    under addition, so the loss sum says whether any step so far was non-finite."""

    def __init__(self, device: torch.device):
        self.totals = torch.zeros(SUMS, dtype=torch.float64, device=device)
        self.window = torch.zeros(SUMS, dtype=torch.float64, device=device)

    def take_window(self) -> torch.Tensor:
        """The window's sums (a copy); they move into ``totals`` and the window restarts."""
        window = self.window.clone()
        self.totals += self.window
        self.window.zero_()
        return window

    def finite(self) -> torch.Tensor:
        """On the device: every step's loss so far this epoch was finite."""
        return torch.isfinite(self.totals[0] + self.window[0])


class WindowLogs:
    """Turns a log window's replica-reduced sums into its log line: the task's metrics, the
    learning rate and the rates, as of the window's last step (``step``)."""

    def __init__(self, trainer: Any, state: TrainState, seconds: float):  # a Trainer
        self.trainer, self.state, self.seconds = trainer, state, max(seconds, 1e-9)
        self.step, self.lr = state.global_step, state.optimizer.param_groups[0]["lr"]

    def __call__(self, sums: list[float]) -> dict[str, float]:
        scores = self.trainer.task.summarize(sums)
        self.trainer.check_finite(self.state, scores["loss"], step=self.step)
        logs = {k: v for k, v in scores.items() if k not in ("examples", "tokens")}
        logs.update(step=self.step, lr=self.lr,
                    examples_per_second=scores["examples"] / self.seconds)
        if "tokens" in scores:
            logs["tokens_per_second"] = scores["tokens"] / self.seconds
        return logs


class PendingWindow:
    """A log window's sums on their way to the host: copied without blocking at the log
    step and read at the next step's end. By then the device has finished the log step and
    still has the next one queued, so the read never leaves it idle — a blocking read at
    the log step drained the stream (the plain loops read nothing)."""

    def __init__(self, sums: torch.Tensor, logs: WindowLogs):
        self.host = torch.empty(sums.shape, dtype=sums.dtype, pin_memory=True)
        self.host.copy_(sums, non_blocking=True)
        self.copied = torch.cuda.Event()
        self.copied.record(torch.cuda.current_stream(sums.device))  # the copy's stream
        self.logs = logs

    def read(self) -> dict[str, float]:
        self.copied.synchronize()
        return self.logs(self.host.tolist())


__all__ = ["PendingWindow", "RunningSums", "WindowLogs"]
