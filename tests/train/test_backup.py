"""BackupAndRestore in one process: exact resume, corrupt backups, foreign directories."""

import pytest
import torch
from torch import nn

import hpmodel as hm
from hpmodel.config import DataConfig
from hpmodel.datasets import load_splits
from hpmodel.kernel.errors import HpmodelError
from hpmodel.train.backup import BackupAndRestore
from hpmodel.train.backup_format import find_backup, step_folders
from hpmodel.train.callbacks import Callback
from hpmodel.train.optim import schedule_factory
from hpmodel.config import ScheduleConfig


class Crash(Callback):
    """Stands in for a dying process: raises after ``step`` optimizer steps."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, state, logs):
        if state.global_step == self.step:
            raise KeyboardInterrupt(f"crash at step {state.global_step}")


def model_fn(width=24):
    def build():
        # Dropout draws from torch's RNG every step: a resume that loses the stream differs.
        return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Dropout(0.2),
                             nn.Linear(width, 10))
    return build


def adamw(params):
    return torch.optim.AdamW(params, lr=3e-3, weight_decay=1e-4)


@pytest.fixture(scope="module")
def data():
    splits = load_splits(DataConfig(name="digits"), seed=0)
    return (splits.train.x[:320], splits.train.y[:320])  # 10 steps per epoch at batch 32


def fit(data, callbacks=(), width=24, epochs=2):
    trainer = hm.Trainer(batch_size=32, progress=False, callbacks=list(callbacks), seed=3,
                         schedule=schedule_factory(ScheduleConfig(name="cosine", warmup_steps=3)))
    return trainer.fit(model_fn(width), adamw, data, epochs=epochs)


def assert_identical(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def reference(data):
    return fit(data).state_dict


def test_resume_after_crash_is_bit_identical(data, reference, tmp_path):
    first = BackupAndRestore(tmp_path, every_steps=3)
    with pytest.raises(KeyboardInterrupt):
        fit(data, [first, Crash(14)])  # mid-epoch 2
    first.wait()  # manifests are sealed in a background thread, which a real crash kills too
    assert [p.name for p in step_folders(tmp_path)] == ["step-000000012", "step-000000010"]
    backup = BackupAndRestore(tmp_path, every_steps=3)
    resumed = fit(data, [backup])
    assert backup.restored_from.name == "step-000000012"
    assert resumed.summary["steps"] == 20 and len(resumed.history) == 2
    assert_identical(resumed.state_dict, reference)
    assert not tmp_path.exists()  # removed when training finished (keep=False)


def test_async_backups_resume_bit_identical(data, reference, tmp_path):
    first = BackupAndRestore(tmp_path, every_steps=2, asynchronous=True)
    with pytest.raises(KeyboardInterrupt):
        fit(data, [first, Crash(7)])
    first.wait()
    resumed = fit(data, [BackupAndRestore(tmp_path, every_steps=2, asynchronous=True, keep=True)])
    assert_identical(resumed.state_dict, reference)
    assert tmp_path.exists()  # keep=True


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_newest_backup_is_reported_and_previous_used(data, reference, tmp_path, capfd, damage):
    first = BackupAndRestore(tmp_path, every_steps=2)
    with pytest.raises(KeyboardInterrupt):
        fit(data, [first, Crash(15)])
    first.wait()
    newest = step_folders(tmp_path)[0]
    victim = max(newest.glob("*.distcp"), key=lambda p: p.stat().st_size)
    payload = bytearray(victim.read_bytes())
    if damage == "truncate":
        payload = payload[: len(payload) // 2]
    else:
        payload[len(payload) // 2] ^= 0x01
    victim.write_bytes(bytes(payload))
    folder, _, problems = find_backup(tmp_path)
    assert folder.name == "step-000000012" and len(problems) == 1
    assert ("truncated" if damage == "truncate" else "corrupt") in problems[0]
    capfd.readouterr()
    backup = BackupAndRestore(tmp_path, every_steps=2)
    resumed = fit(data, [backup])
    skipped = [line for line in capfd.readouterr().err.splitlines() if "skipped" in line]
    assert len(skipped) == 1 and newest.name in skipped[0]
    assert backup.restored_from.name == "step-000000012"
    assert_identical(resumed.state_dict, reference)


def test_backup_of_another_model_is_refused(data, tmp_path):
    first = BackupAndRestore(tmp_path, every_steps=2)
    with pytest.raises(KeyboardInterrupt):
        fit(data, [first, Crash(3)])
    first.wait()
    with pytest.raises(HpmodelError, match="different model or config .*model.1.weight"):
        fit(data, [BackupAndRestore(tmp_path, every_steps=2)], width=16)
    with pytest.raises(HpmodelError, match="differs in config.model.width"):
        fit(data, [BackupAndRestore(tmp_path, fingerprint={"model.width": 16})])
