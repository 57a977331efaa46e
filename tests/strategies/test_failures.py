"""Failure behaviour of the multi-process strategies, through the real CLI."""

import os
from pathlib import Path

import pytest
import torch

from conftest import run_cli

HERE = Path(__file__).resolve().parent
MULTI_PROCESS = ("central-storage", "sharded")  # Mirrored/MultiWorker: test_mirrored.py


@pytest.mark.parametrize("strategy", ["mirrored"])
def test_a_raising_process_stops_the_job_with_its_error(tmp_path, monkeypatch, strategy):
    monkeypatch.setenv("PYTHONPATH", str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # Rank 0 waits in a collective for rank 1, which raised: the launcher must stop it, no hang
    # (the collective timeout is 300 s, so a hang would outlast run_cli's 120 s and fail).
    proc = run_cli("train", "examples/digits.toml", "--strategy", strategy, "--devices", "2",
                   "--set", 'model.target="raising_model:build"', "--set", "train.progress=false",
                   "--set", "train.epochs=1", "--out", str(tmp_path / "run"), timeout=120)
    assert proc.returncode != 0
    assert "deliberate failure in the forward pass of rank 1" in proc.stderr
    assert "Traceback" not in proc.stderr.splitlines()[-1]
    assert not (tmp_path / "run" / "model.safetensors").exists()


@pytest.mark.parametrize("strategy", MULTI_PROCESS)
def test_gpus_that_do_not_exist_stop_before_any_process_starts(tmp_path, strategy):
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    proc = run_cli("train", "examples/digits.toml", "--strategy", strategy, "--devices", str(gpus + 1),
                   "--set", 'strategy.device="cuda"', "--out", str(tmp_path / "run"), timeout=60)
    assert proc.returncode == 2
    expected = "needs CUDA GPUs and this machine has none" if gpus == 0 else f"this machine has {gpus} GPU"
    assert expected in proc.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
