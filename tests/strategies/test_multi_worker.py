"""MultiWorker: two "nodes" on loopback, each its own ``hpmodel train`` process, meet through a
rendezvous endpoint and end with the weights and metrics of OneDevice at the same global batch."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT, hpmodel_env, run_cli
from hpmodel.strategies.launch import free_port
from hpmodel.kernel.files import load_weights
from parity_helpers import relative_difference

COMMON = ["examples/digits.toml", "--set", "train.epochs=1", "--set", "train.max_steps=5",
          "--set", "train.progress=false"]


def test_two_nodes_on_loopback_match_one_device(tmp_path):
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "hpmodel", "train", *COMMON, "--strategy", "multi-worker",
         "--nnodes", "2", "--node-rank", str(rank), "--rdzv-endpoint", endpoint, "--devices", "1",
         "--out", str(tmp_path / f"node{rank}")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=hpmodel_env(), cwd=ROOT)
        for rank in (0, 1)]
    outputs = [node.communicate(timeout=180) for node in nodes]
    for node, (_, stderr) in zip(nodes, outputs):
        assert node.returncode == 0, stderr[-3000:]
    # digits.toml's batch_size 32 is per replica: 2 nodes × 32 = 64 = one device's batch.
    run_cli("train", *COMMON, "--set", "data.batch_size=64", "--out", str(tmp_path / "one"), check=True)
    two = load_weights(tmp_path / "node0" / "model.safetensors")
    one = load_weights(tmp_path / "one" / "model.safetensors")
    assert set(two) == set(one)
    for key in one:
        assert relative_difference(one[key], two[key]) <= 1e-5, key
    summaries = [json.loads((tmp_path / d / "summary.json").read_text()) for d in ("node0", "one")]
    assert summaries[0]["steps"] == summaries[1]["steps"] == 5
    for key in ("test_loss", "test_accuracy"):
        assert abs(summaries[0][key] - summaries[1][key]) <= 1e-5, key
    assert summaries[0]["history"][0]["train_loss"] == \
        pytest.approx(summaries[1]["history"][0]["train_loss"], rel=1e-5)
    assert not (tmp_path / "node1" / "model.safetensors").exists()  # only the main process writes
