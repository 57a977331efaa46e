"""Test-only models for the fault-tolerance tests (``model.target = "backup_models:mlp"``).

``kill_at_call`` makes rank 1 SIGKILL itself at that forward call, on the first attempt
only (``TORCHELASTIC_RESTART_COUNT`` = 0), so a restarted group runs through. ``sleep_s``
slows each forward so a test can kill a run mid-epoch. Neither changes the numbers.
"""

import os
import signal
import time

from torch import nn


class Instrumented(nn.Module):
    def __init__(self, net, kill_at_call, sleep_s):
        super().__init__()
        self.net = net
        self.kill_at_call, self.sleep_s, self.calls = kill_at_call, sleep_s, 0

    def forward(self, x):
        self.calls += 1
        if self.sleep_s:
            time.sleep(self.sleep_s)
        first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
        if self.kill_at_call == self.calls and first_attempt and os.environ.get("RANK") == "1":
            os.kill(os.getpid(), signal.SIGKILL)
        return self.net(x)


def mlp(input_shape, num_classes, width=32, kill_at_call=0, sleep_s=0.0):
    inputs = 1
    for size in input_shape:
        inputs *= size
    net = nn.Sequential(nn.Flatten(), nn.Linear(inputs, width), nn.ReLU(), nn.Dropout(0.1),
                        nn.Linear(width, num_classes))
    return Instrumented(net, kill_at_call, sleep_s)
