"""A script using a strategy runs unchanged under torchrun and matches OneDevice."""

import subprocess
import sys
from pathlib import Path

import torch

from conftest import hpmodel_env
from hpmodel.strategies.launch import free_port
from parity_helpers import assert_matches_one_device, one_device

HERE = Path(__file__).resolve().parent


class Result:
    def __init__(self, saved):
        self.state_dict, self.history, self.summary = saved["state_dict"], saved["history"], saved["summary"]


def test_script_runs_unchanged_under_torchrun(tmp_path):
    out = tmp_path / "weights.pt"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
               str(HERE / "torchrun_script.py"), str(out), "multi-worker"]
    proc = subprocess.run(command, capture_output=True, text=True, env=hpmodel_env(), timeout=180)
    assert proc.returncode == 0, proc.stderr[-12000:]
    result = Result(torch.load(out, weights_only=True))
    assert_matches_one_device(result, one_device())
