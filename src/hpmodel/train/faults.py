"""Fault injection for chaos testing and the demo: kill a worker on purpose, once.

``train.inject_kill = [rank, step]`` makes the process of that rank SIGKILL itself after
that optimizer step, on the first attempt only (``TORCHELASTIC_RESTART_COUNT`` = 0, set by
PyTorch's elastic launcher), so a job started with ``--max-restarts 1`` restarts, resumes
from its newest backup and runs through. Nothing else changes: the numbers of the
restarted run equal those of a run that never stopped.
"""

from __future__ import annotations

import os
import signal

from hpmodel.train.callbacks import Callback


def restart_count() -> int:
    """How many times the elastic launcher has restarted this worker group."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


class KillOnce(Callback):
    """SIGKILL this process after optimizer step ``step`` if it has rank ``rank`` (first attempt only).

    Example::

        Trainer(strategy=mirrored, callbacks=[BackupAndRestore("ckpt", every_steps=5), KillOnce(1, 12)])
    """

    def __init__(self, rank: int, step: int):
        self.rank, self.step = rank, step

    def on_step_end(self, state, logs) -> None:
        if (state.global_step == self.step and state.strategy.rank == self.rank
                and restart_count() == 0):
            os.kill(os.getpid(), signal.SIGKILL)
