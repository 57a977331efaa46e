"""Mirrored on 2 real processes with ``--max-restarts 1``: rank 1 SIGKILLs itself mid-epoch,
the elastic agent restarts the group, both ranks restore the newest backup, and the job
ends with exit 0 and weights bit-identical to a run that was never interrupted."""

import json
import os
import re
import subprocess
import sys

import torch
from safetensors.torch import load_file

from conftest import ROOT, hpmodel_env

MODELS = ROOT / "tests" / "train"  # backup_models.py: the test-only killing model
CONFIG = """
seed = 2
[data]
name = "digits"
batch_size = 16
[model]
target = "backup_models:mlp"
options = {{ kill_at_call = {kill} }}
[optimizer]
name = "adamw"
lr = 0.003
[train]
epochs = 1
progress = false
[backup]
dir = "{backup}"
every_steps = 4
asynchronous = {asynchronous}
"""


def train(tmp_path, name, kill=0, asynchronous=False):
    config = tmp_path / f"{name}.toml"
    config.write_text(CONFIG.format(kill=kill, backup=tmp_path / f"{name}-backup",
                                    asynchronous=str(asynchronous).lower()))
    env = hpmodel_env()
    env["PYTHONPATH"] = str(MODELS) + os.pathsep + env["PYTHONPATH"]
    return subprocess.run([sys.executable, "-m", "hpmodel", "train", str(config), "--out",
                           str(tmp_path / name), "--strategy", "mirrored", "--devices", "2",
                           "--max-restarts", "1", "--set", "strategy.device=\"cpu\""],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_killed_worker_restarts_and_finishes_bit_identical(tmp_path):
    reference = train(tmp_path, "reference")
    assert reference.returncode == 0, reference.stderr[-3000:]
    killed = train(tmp_path, "killed", kill=11, asynchronous=True)  # between backups 8 and 12
    assert killed.returncode == 0, killed.stderr[-3000:]
    # The asynchronous backup of step 8 may still be in flight at step 11; then step 4's is used.
    assert re.search(r"resumed from backup .*step-00000000[48]", killed.stderr), killed.stderr[-3000:]
    steps = json.loads((tmp_path / "reference" / "summary.json").read_text())["steps"]
    assert json.loads((tmp_path / "killed" / "summary.json").read_text())["steps"] == steps
    expected = load_file(str(tmp_path / "reference" / "model.safetensors"))
    actual = load_file(str(tmp_path / "killed" / "model.safetensors"))
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
