"""On a GPU the Trainer reads a log window's sums one step late (no blocking read at the log
step): every window still reaches the callbacks once, labelled with its own step, with the
numbers a blocking read gives, and a non-finite loss still stops the run.

Run on a GPU machine: ``pytest -m gpu tests/train``. Skipped without CUDA.
"""

import json

import pytest
import torch
from torch import nn

import hpmodel as hm
from hpmodel.kernel.errors import HpmodelError
from hpmodel.train.callbacks import Callback, MetricsLogger

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


class Logs(Callback):
    def __init__(self):
        self.seen = []

    def on_step_end(self, state, logs):
        if logs:
            self.seen.append((state.global_step, dict(logs)))


def fit(tmp_path, log_every, steps=10, lr=0.05, name="run"):
    torch.manual_seed(0)
    x, y = torch.randn(64 * steps, 8), torch.randint(0, 3, (64 * steps,))
    logs = Logs()
    trainer = hm.Trainer(strategy=hm.get_strategy("one-device", device="cuda"), batch_size=64,
                         progress=False, log_every_steps=log_every, seed=0,
                         callbacks=[logs, MetricsLogger(tmp_path / name)])
    trainer.fit(lambda: nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)),
                lambda p: torch.optim.SGD(p, lr=lr), (x, y), epochs=1)
    return logs.seen, [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").open()]


def test_deferred_windows_arrive_once_with_their_own_step(tmp_path):
    seen, records = fit(tmp_path, log_every=3)
    # windows end at steps 3, 6, 9 (each read one step later); 9 is not the last step
    assert [logs["step"] for _, logs in seen] == [3, 6, 9]
    assert [at for at, _ in seen] == [4, 7, 10]
    assert [r["step"] for r in records if r["kind"] == "step"] == [3, 6, 9]


def test_deferred_windows_equal_blocking_reads(tmp_path):
    deferred, _ = fit(tmp_path, log_every=2, name="deferred")
    blocking, _ = fit(tmp_path, log_every=1, name="blocking")  # log_every 1: read at once
    by_step = dict((logs["step"], logs) for _, logs in blocking)
    for _, logs in deferred:
        window = [by_step[logs["step"] - 1]["loss"], by_step[logs["step"]]["loss"]]
        assert logs["loss"] == pytest.approx(sum(window) / 2, rel=1e-6)


def test_a_non_finite_loss_still_stops_the_run(tmp_path):
    with pytest.raises(HpmodelError, match="loss became"):
        fit(tmp_path, log_every=2, lr=1e30)
