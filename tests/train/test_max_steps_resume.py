"""Resume is exact under train.max_steps: a run SIGKILLed right after the backup of its
last step trains no step past the limit when rerun, and ends with the same weights."""

import json
import signal
import subprocess
import sys


from conftest import ROOT, assert_same_weights, hpmodel_env

SETS = ["--set", 'model.name="mlp"', "--set", "model.depth=1", "--set", "train.max_steps=6",
        "--set", "train.progress=false"]


def run(tmp_path, name, *sets):
    cmd = [sys.executable, "-m", "hpmodel", "train", "examples/digits.toml", "--out",
           str(tmp_path / name), *SETS]
    for item in sets:
        cmd += ["--set", item]
    return subprocess.run(cmd, env=hpmodel_env(), cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_killed_after_the_last_steps_backup_the_rerun_trains_no_further(tmp_path):
    assert run(tmp_path, "reference").returncode == 0
    backup = f'backup.dir="{tmp_path / "backup"}"'
    killed = run(tmp_path, "resumed", backup, "backup.every_steps=3", "train.inject_kill=[0, 6]")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    rerun = run(tmp_path, "resumed", backup, "backup.every_steps=3")
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resumed from backup" in rerun.stderr
    assert json.loads((tmp_path / "resumed" / "summary.json").read_text())["steps"] == 6
    assert_same_weights(tmp_path / "reference", tmp_path / "resumed")
