"""A non-finite model is never backed up; pruning never removes the newest valid backup."""

import shutil

import pytest
import torch

import hpmodel as hm
from hpmodel.kernel.errors import HpmodelError
from hpmodel.train.backup import BackupAndRestore
from hpmodel.train.backup_dcp import check_dcp_folder, load_model_state
from hpmodel.train.backup_format import find_backup, prune, step_folders

from test_backup import Crash, adamw, data, fit, model_fn  # noqa: F401 (fixtures)


def test_diverging_run_stops_and_writes_no_nonfinite_backup(data, tmp_path):
    backups = tmp_path / "backups"
    trainer = hm.Trainer(batch_size=32, progress=False, seed=3, log_every_steps=10**9,
                         callbacks=[BackupAndRestore(backups, every_steps=1, keep=True)])
    with pytest.raises(HpmodelError, match=r"non-finite at step \d+: lower optimizer.lr") as stopped:
        trainer.fit(model_fn(), lambda p: torch.optim.AdamW(p, lr=1e6), data, epochs=2)
    assert "\n" not in str(stopped.value)
    folders = step_folders(backups)
    assert folders, "the good backups before the divergence are kept"
    for folder in folders:
        model = model_fn()()
        optimizer = adamw(model.parameters())
        load_model_state(model, optimizer, folder)
        tensors = list(model.parameters()) + [v for s in optimizer.state.values() for v in s.values()]
        assert all(torch.isfinite(t).all() for t in tensors), folder.name


def test_pruning_keeps_valid_backups_older_than_corrupt_ones(data, tmp_path):
    first = BackupAndRestore(tmp_path, every_steps=2)
    with pytest.raises(KeyboardInterrupt):
        fit(data, [first, Crash(7)])
    first.wait()
    assert [f.name for f in step_folders(tmp_path)] == ["step-000000006", "step-000000004"]
    for step in (8, 10):  # newer backups, damaged: same manifest, one flipped byte
        fake = tmp_path / f"step-{step:09d}"
        shutil.copytree(tmp_path / "step-000000006", fake)
        victim = fake / "__0_0.distcp"
        payload = bytearray(victim.read_bytes())
        payload[len(payload) // 2] ^= 0x01
        victim.write_bytes(bytes(payload))
    prune(tmp_path, keep_last=2, check=check_dcp_folder)
    assert [f.name for f in step_folders(tmp_path)] == [
        "step-000000010", "step-000000008", "step-000000006", "step-000000004"]
    folder, _, problems = find_backup(tmp_path, check=check_dcp_folder)
    assert folder.name == "step-000000006" and len(problems) == 2
    shutil.rmtree(tmp_path / "step-000000006")
    shutil.copytree(tmp_path / "step-000000008", tmp_path / "step-000000006")  # now corrupt too
    prune(tmp_path, keep_last=2, check=check_dcp_folder)  # step-4 is the one valid: it stays
    assert (tmp_path / "step-000000004").is_dir()


def test_background_failure_stops_the_run_at_a_later_step(data, tmp_path, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("hpmodel.train.backup.save_tensors", full_disk)
    backup = BackupAndRestore(tmp_path, every_steps=4, asynchronous=True)
    with pytest.raises(HpmodelError, match="writing a backup to .* failed .*No space left") as stopped:
        fit(data, [backup])
    assert "\n" not in str(stopped.value) and backup.saves == 1  # stopped before the second one
