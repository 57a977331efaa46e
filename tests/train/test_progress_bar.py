"""ProgressBar: a bar on a terminal, a plain line every N seconds anywhere else (fake clock)."""

import io
from types import SimpleNamespace

from hpmodel.train.callbacks import ProgressBar


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run_epoch(bar: ProgressBar, clock: FakeClock, steps: int = 30, seconds_per_step: float = 1.0):
    state = SimpleNamespace(strategy=SimpleNamespace(is_main=True), epoch=0, epochs=2,
                            steps_per_epoch=steps, step_in_epoch=0)
    bar.on_epoch_begin(state)
    for step in range(1, steps + 1):
        clock.now += seconds_per_step
        state.step_in_epoch = step
        logs = {"loss": 1.0 / step, "examples_per_second": 640.0} if step % 5 == 0 else {}
        bar.on_step_end(state, logs)
    bar.on_epoch_end(state, {"train_loss": 0.5, "val_loss": 0.25})


def test_non_terminal_gets_a_plain_line_every_ten_seconds():
    out, clock = io.StringIO(), FakeClock()
    run_epoch(ProgressBar(stream=out, every_s=10, clock=clock), clock)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines[:3] == [
        "epoch 1/2  step 10/30  loss 0.1000  1.0 steps/s  640 ex/s  ETA 0:20",
        "epoch 1/2  step 20/30  loss 0.0500  1.0 steps/s  640 ex/s  ETA 0:10",
        "epoch 1/2  step 30/30  loss 0.0333  1.0 steps/s  640 ex/s  ETA 0:00",
    ]
    assert lines[3] == "epoch 1/2  train_loss 0.5000  val_loss 0.2500" and len(lines) == 4


def test_fast_epochs_print_only_their_summary_line():
    out, clock = io.StringIO(), FakeClock()
    run_epoch(ProgressBar(stream=out, every_s=10, clock=clock), clock, seconds_per_step=0.01)
    assert out.getvalue().splitlines() == ["epoch 1/2  train_loss 0.5000  val_loss 0.2500"]


def test_terminal_keeps_the_bar():
    out, clock = Terminal(), FakeClock()
    bar = ProgressBar(stream=out, every_s=10, clock=clock)
    run_epoch(bar, clock)
    text = out.getvalue()
    assert "\r" in text and "epoch 1/2" in text  # tqdm redraws in place
    assert "steps/s" not in text  # no plain progress lines


def test_other_ranks_print_nothing():
    out, clock = io.StringIO(), FakeClock()
    bar = ProgressBar(stream=out, every_s=1, clock=clock)
    state = SimpleNamespace(strategy=SimpleNamespace(is_main=False), epoch=0, epochs=1,
                            steps_per_epoch=3, step_in_epoch=0)
    bar.on_epoch_begin(state)
    clock.now = 5
    bar.on_step_end(state, {"loss": 1.0, "examples_per_second": 1.0})
    bar.on_epoch_end(state, {"train_loss": 1.0})
    assert out.getvalue() == ""
