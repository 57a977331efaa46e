"""kill -9 a real ``hpmodel train`` process mid-epoch, rerun the same command: the final
weights are bit-identical to those of a run that never stopped."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from conftest import ROOT, hpmodel_env

HERE = Path(__file__).resolve().parent
CONFIG = """
seed = 1
[data]
name = "digits"
batch_size = 32
[model]
target = "backup_models:mlp"
options = {{ sleep_s = {sleep} }}
[optimizer]
name = "adamw"
lr = 0.003
[schedule]
name = "cosine"
warmup_steps = 5
[train]
epochs = 2
progress = false
log_every_steps = 5
[backup]
dir = "{backup}"
every_steps = 3
"""


def env():
    variables = hpmodel_env()
    variables["PYTHONPATH"] = str(HERE) + os.pathsep + variables["PYTHONPATH"]
    return variables


def command(tmp_path, name, backup, sleep=0.0):
    config = tmp_path / f"{name}.toml"
    config.write_text(CONFIG.format(sleep=sleep, backup=backup))
    return [sys.executable, "-m", "hpmodel", "train", str(config), "--out", str(tmp_path / name)]


def saved_steps(backup: Path) -> list[int]:
    if not backup.is_dir():
        return []
    return [int(p.name.split("-")[1]) for p in backup.iterdir() if (p / "manifest.json").is_file()]


def test_sigkill_mid_epoch_then_rerun_is_bit_identical(tmp_path):
    reference = subprocess.run(command(tmp_path, "reference", ""), env=env(), cwd=ROOT,
                               capture_output=True, text=True, timeout=240)
    assert reference.returncode == 0, reference.stderr[-2000:]
    steps_per_epoch = json.loads((tmp_path / "reference" / "summary.json").read_text())["steps"] // 2

    backup = tmp_path / "backup"
    target = random.Random().randint(4, 2 * steps_per_epoch - 6)  # any step, epoch 1 or 2
    print(f"killing after the backup at or past step {target}")
    victim = subprocess.Popen(command(tmp_path, "resumed", backup, sleep=0.02), env=env(), cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while max(saved_steps(backup), default=0) < target and victim.poll() is None:
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(timeout=30) == -signal.SIGKILL, victim.stderr.read()[-2000:]
    killed_at = max(saved_steps(backup))
    assert killed_at % steps_per_epoch != 0 or killed_at < 2 * steps_per_epoch  # mid-run

    rerun = subprocess.run(command(tmp_path, "resumed", backup, sleep=0.02), env=env(), cwd=ROOT,
                           capture_output=True, text=True, timeout=240)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resumed from backup" in rerun.stderr
    summary = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert summary["steps"] == 2 * steps_per_epoch
    expected = load_file(str(tmp_path / "reference" / "model.safetensors"))
    actual = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    assert not backup.exists()  # removed once training finished
