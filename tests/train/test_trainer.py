"""The training loop: determinism, exact gradient accumulation, precision, callbacks, errors."""

import pytest
import torch
from torch import nn

import hpmodel as hm
from hpmodel.config import DataConfig
from hpmodel.datasets import load_splits
from hpmodel.kernel.errors import HpmodelError
from hpmodel.train.callbacks import Callback


@pytest.fixture(scope="module")
def digits():
    return load_splits(DataConfig(name="digits"), seed=0)


def tiny_model():
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))


def sgd(params):
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


def fit(digits, **options):
    epochs = options.pop("epochs", 2)
    trainer = hm.Trainer(strategy=hm.get_strategy("one-device", device="cpu"), progress=False, **options)
    return trainer.fit(tiny_model, sgd, digits.train, epochs=epochs, val_data=digits.val)


def flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_same_seed_gives_bit_identical_weights(digits):
    a, b = fit(digits, seed=3), fit(digits, seed=3)
    assert torch.equal(flat(a.model), flat(b.model))
    assert not torch.equal(flat(a.model), flat(fit(digits, seed=4).model))


def test_grad_accumulation_4x16_equals_batch_64(digits):
    big = fit(digits, batch_size=64, grad_accum=1, epochs=1)
    accumulated = fit(digits, batch_size=16, grad_accum=4, epochs=1)
    assert big.summary["steps"] == accumulated.summary["steps"]
    a, b = flat(big.model), flat(accumulated.model)
    assert torch.allclose(a, b, rtol=1e-6, atol=1e-7), (a - b).abs().max()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains(digits, precision):
    result = fit(digits, precision=precision, epochs=3)
    assert result.history[-1]["val_accuracy"] > 0.85


def test_one_micro_batch_steps_equal_a_plain_loop_bit_for_bit(digits):
    trainer = hm.Trainer(strategy=hm.get_strategy("one-device", device="cpu"), progress=False,
                         batch_size=64, seed=5)
    result = trainer.fit(tiny_model, sgd, digits.train, epochs=1)
    torch.manual_seed(5)  # the Trainer seeds before it builds the model
    model = tiny_model()
    optimizer = sgd(model.parameters())
    batches = trainer.as_batches(digits.train, shuffle=True)  # the same order (seed, epoch 0)
    batches.set_epoch(0)
    for x, y in batches:
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    assert torch.equal(flat(result.model), flat(model))


def test_callbacks_skip_only_the_base_no_ops():
    from hpmodel.train.callbacks import CallbackList

    calls = []

    class StepEnd(Callback):
        def on_step_end(self, state, logs): calls.append("step_end")

    assigned = Callback()
    assigned.on_step_begin = lambda state: calls.append("assigned")  # an instance's own hook
    callbacks = CallbackList([Callback(), StepEnd(), assigned])
    assert len(callbacks.methods["on_step_end"]) == 1 and len(callbacks.methods["on_epoch_end"]) == 0
    callbacks.call("on_step_begin", None)
    callbacks.call("on_step_end", None, {})
    assert calls == ["assigned", "step_end"]


def test_history_metrics_and_early_stopping(digits):
    class Record(Callback):
        def __init__(self):
            self.events = []

        def on_train_begin(self, state): self.events.append("train_begin")
        def on_epoch_end(self, state, logs): self.events.append(("epoch", round(logs["val_loss"], 6)))
        def on_train_end(self, state): self.events.append("train_end")

    record = Record()
    result = fit(digits, callbacks=[record], early_stopping_patience=1, epochs=30,
                 schedule=lambda opt, total: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 10.0))
    assert record.events[0] == "train_begin" and record.events[-1] == "train_end"
    assert len(result.history) < 30  # stopped early
    assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy"} <= set(result.history[0])


def test_clipping_and_cosine_schedule(digits):
    from hpmodel.config import ScheduleConfig
    from hpmodel.train.optim import schedule_factory

    result = fit(digits, clip_grad_norm=1.0, schedule=schedule_factory(ScheduleConfig("cosine", 5)))
    assert result.history[-1]["val_accuracy"] > 0.8


def test_nan_loss_stops_with_a_clear_message(digits):
    def nan_loss(logits, y):
        return nn.functional.cross_entropy(logits, y) * float("nan")

    with pytest.raises(HpmodelError, match="loss became nan at step 10"):
        fit(digits, loss_fn=nan_loss, log_every_steps=10)


def test_evaluate_and_predict(digits):
    result = fit(digits)
    trainer = hm.Trainer(strategy=hm.get_strategy("one-device", device="cpu"), progress=False)
    scores = trainer.evaluate(result.model, digits.test)
    logits = trainer.predict(result.model, digits.test)
    assert logits.shape == (len(digits.test), 10)
    manual = (logits.argmax(1) == digits.test.y).float().mean().item()
    assert scores["accuracy"] == pytest.approx(manual)


def test_missing_device_fails_clearly():
    with pytest.raises(HpmodelError, match="does not exist: this machine has 0 CUDA"):
        hm.get_strategy("one-device", device="cuda:3")


def test_drop_remainder_drops_the_last_partial_training_batch():
    x, y = torch.randn(100, 4), torch.randint(0, 2, (100,))
    make = lambda: torch.nn.Linear(4, 2)  # noqa: E731
    opt = lambda p: torch.optim.SGD(p, lr=0.1)  # noqa: E731
    kept = hm.Trainer(batch_size=32, progress=False).fit(make, opt, (x, y), epochs=1)
    dropped = hm.Trainer(batch_size=32, progress=False, drop_remainder=True).fit(make, opt, (x, y))
    assert (kept.summary["steps"], dropped.summary["steps"]) == (4, 3)


def test_data_of_unknown_length_needs_max_steps():
    x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    stream = hm.data.from_tensors((x, y)).filter(lambda e: True).batch(16)
    make = lambda: torch.nn.Linear(4, 2)  # noqa: E731
    opt = lambda p: torch.optim.SGD(p, lr=0.1)  # noqa: E731
    with pytest.raises(hm.HpmodelError, match="train.max_steps"):
        hm.Trainer(progress=False).fit(make, opt, stream)
    result = hm.Trainer(progress=False, max_steps=3).fit(make, opt, stream.repeat())
    assert result.summary["steps"] == 3


def test_a_dataloader_is_one_clear_line():
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    with pytest.raises(hm.HpmodelError, match="loader.dataset"):
        hm.Trainer(progress=False).fit(lambda: torch.nn.Linear(4, 2),
                                       lambda p: torch.optim.SGD(p, lr=0.1), loader)
    with pytest.raises(hm.HpmodelError, match="from_dataset"):
        hm.get_strategy("one-device").distribute(loader)


def test_which_log_windows_a_gpu_run_reads_one_step_late(tmp_path):
    from types import SimpleNamespace

    from hpmodel.train.backup import BackupAndRestore
    from hpmodel.train.callbacks import CallbackList

    cuda, cpu = SimpleNamespace(is_cuda=True), SimpleNamespace(is_cuda=False)
    trainer = hm.Trainer(log_every_steps=5, max_steps=0)
    plain = CallbackList([])
    backups = CallbackList([BackupAndRestore(tmp_path / "b", every_steps=10)])

    def state(step_in_epoch, global_step, sized=True):
        return SimpleNamespace(sized=sized, step_in_epoch=step_in_epoch, steps_per_epoch=20,
                               global_step=global_step)

    assert trainer.defers_logs(state(5, 5), cuda, plain)
    assert not trainer.defers_logs(state(5, 5), cpu, plain)  # the CPU reads at once
    assert not trainer.defers_logs(state(20, 20), cuda, plain)  # the epoch's last step
    assert not trainer.defers_logs(state(5, 5, sized=False), cuda, plain)  # end unknown
    assert not trainer.defers_logs(state(10, 10), cuda, backups)  # a backup at this step
    assert trainer.defers_logs(state(5, 5), cuda, backups)
    assert not hm.Trainer(log_every_steps=1).defers_logs(state(5, 5), cuda, plain)
    assert not hm.Trainer(log_every_steps=5, max_steps=5).defers_logs(state(5, 5), cuda, plain)
