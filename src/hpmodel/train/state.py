"""The live state of a training run, handed to every callback."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn


@dataclass
class TrainState:
    """Everything that decides the future of a run, plus counters callbacks read."""

    strategy: Any
    model: nn.Module  # as the strategy set it up: what backups and state dicts read
    task_step: Any  # ``(model, batch) -> (loss, sums)``: the task's step or its torch.compile
    optimizer: Any
    scheduler: Any
    scaler: Any
    train_data: Any
    epochs: int
    steps_per_epoch: int  # optimizer steps per epoch
    total_steps: int
    sized: bool = True  # the epoch's length is known (so is its last step)
    epoch: int = 0
    step_in_epoch: int = 0  # optimizer steps done in the current epoch
    global_step: int = 0
    last_step_examples: int = 0  # examples in the last step, over all replicas
    stop_training: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # callbacks' own state

    def counters(self) -> dict[str, int]:
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                "global_step": self.global_step}

    def load_counters(self, counters: dict[str, int]) -> None:
        self.epoch = int(counters["epoch"])
        self.step_in_epoch = int(counters["step_in_epoch"])
        self.global_step = int(counters["global_step"])
