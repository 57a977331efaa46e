"""A model (``model.target = "killing_model:build"``) whose rank 1 SIGKILLs itself at its
``kill_at_call``-th forward call on every attempt, so restarts cannot save the job."""

import os
import signal

from torch import nn


class KillsRankOne(nn.Module):
    def __init__(self, num_classes: int, kill_at_call: int):
        super().__init__()
        self.linear = nn.Linear(64, num_classes)
        self.kill_at_call, self.calls = kill_at_call, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.kill_at_call and os.environ.get("RANK") == "1":
            os.kill(os.getpid(), signal.SIGKILL)
        return self.linear(x.flatten(1))


def build(input_shape, num_classes, kill_at_call=3):
    return KillsRankOne(num_classes, kill_at_call)
