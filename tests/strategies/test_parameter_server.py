"""ParameterServer on real processes (TensorPipe RPC over 127.0.0.1): accuracy against
OneDevice, a SIGKILLed worker, bounded staleness, sync rounds and unreachable peers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpmodel.config import DataConfig, load_config
from hpmodel.datasets import load_splits
from hpmodel.parameter_server.cluster import free_port
from hpmodel.runs.parameter_server import place_variables, plan_steps
from hpmodel.runs.train import train_from_config
from hpmodel.kernel.files import load_weights

from conftest import ROOT, digits_mlp_toml, hpmodel_env, run_cli


pytestmark = pytest.mark.slow


def write_config(tmp_path: Path, epochs: int) -> Path:
    path = tmp_path / f"digits-{epochs}.toml"
    path.write_text(digits_mlp_toml(width=64, epochs=epochs, log_every_steps=10))
    return path


def train_size() -> int:
    return len(load_splits(DataConfig(name="digits"), 0).train)


def one_device_accuracy(config: Path, out: Path) -> float:
    return train_from_config(load_config(config), out)["test_accuracy"]


def ps_args(config: Path, out: Path, *sets: str) -> list[str]:
    args = ["train", str(config), "--strategy", "parameter-server", "--workers", "2", "--servers", "1",
            "--out", str(out)]
    for item in sets:
        args += ["--set", item]
    return args


def read_metrics(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_place_variables_balances_by_size():
    placement = place_variables({"w": 100, "b": 10, "v": 90, "c": 5}, ["server0", "server1"])
    assert placement == {"server0": ["w", "c"], "server1": ["v", "b"]}
    steps = plan_steps(100, 32, epochs=2, seed=0)
    assert len(steps) == 8 and sorted(steps[0][1].tolist() + steps[1][1].tolist() + steps[2][1].tolist()
                                      + steps[3][1].tolist()) == list(range(100))


def test_async_two_workers_matches_one_device(tmp_path):
    config = write_config(tmp_path, epochs=8)
    reference = one_device_accuracy(config, tmp_path / "one")
    out = tmp_path / "ps"
    run_cli(*ps_args(config, out), timeout=180, check=True)
    summary = json.loads((out / "summary.json").read_text())
    assert abs(summary["test_accuracy"] - reference) <= 0.015, (summary["test_accuracy"], reference)
    planned = len(plan_steps(train_size(), 32, 8, 0))
    assert summary["steps"] == planned and summary["workers_lost"] == []
    assert [row["worker"] for row in summary["per_worker"]] == ["worker0", "worker1"]
    assert all(row["steps"] > 0 for row in summary["per_worker"])
    assert summary["staleness_max"] >= 1  # two workers in flight: updates land on newer versions
    records = read_metrics(out)
    assert {"step", "worker"} <= {r["kind"] for r in records}
    assert all("staleness_mean" in r for r in records if r["kind"] == "step")
    assert (out / "model.safetensors").is_file() and (out / "ps-backup" / "server0.json").is_file()
    weights = load_weights(out / "model.safetensors")
    assert set(weights) == {"1.0.weight", "1.0.bias", "2.weight", "2.bias"}


def test_sigkilled_worker_is_replaced_and_run_completes(tmp_path):
    config = write_config(tmp_path, epochs=10)
    out = tmp_path / "ps"
    # Both workers 3× slower so the run lasts long enough to kill one in the middle.
    proc = subprocess.Popen([sys.executable, "-m", "hpmodel",
                             *ps_args(config, out, "strategy.worker_slowdown=[3, 3]")],
                            env=hpmodel_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        deadline = time.monotonic() + 120
        live = out / ".partial"  # a running run's files; moved into out when it finishes
        while not any(r.get("step", 0) >= 30 for r in read_metrics(live) if r["kind"] == "step"):
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before the kill"
            time.sleep(0.02)
        pid = json.loads((live / "ps-cluster.json").read_text())["pids"]["worker1"]
        os.kill(pid, signal.SIGKILL)
        output, _ = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["workers_lost"] == ["worker1"]
    assert summary["steps"] == len(plan_steps(train_size(), 32, 10, 0))  # the lost step was run again
    events = [r for r in read_metrics(out) if r["kind"] == "event"]
    assert events and events[0]["worker"] == "worker1"
    reference = one_device_accuracy(config, tmp_path / "one")
    assert abs(summary["test_accuracy"] - reference) <= 0.015, (summary["test_accuracy"], reference)


def test_bounded_staleness_holds_a_fast_worker_back(tmp_path):
    config = write_config(tmp_path, epochs=2)
    out = tmp_path / "ps"
    run_cli(*ps_args(config, out, 'strategy.mode="bounded"', "strategy.staleness_bound=1",
                     "strategy.worker_slowdown=[1, 4]", "train.max_steps=60"), timeout=180, check=True)
    summary = json.loads((out / "summary.json").read_text())
    fast, slow = (row["steps"] for row in summary["per_worker"])
    assert summary["clock_gap_max"] <= 1
    assert fast - slow <= 2  # at most bound + 1 steps apart, although worker1 is 4× slower
    assert summary["staleness_max"] <= (2 - 1) * (2 * 1 + 1)
    assert summary["steps"] == 60


def test_sync_rounds_equal_one_device_at_the_same_global_batch(tmp_path):
    import torch

    config = write_config(tmp_path, epochs=1)
    out = tmp_path / "ps"
    run_cli(*ps_args(config, out, 'strategy.mode="sync"', "train.max_steps=40"), timeout=180, check=True)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["staleness_max"] == 0 and summary["steps"] == 40
    assert [row["steps"] for row in summary["per_worker"]] == [20, 20]
    # 20 rounds of 2 × 32 examples = 20 OneDevice steps of 64, in the same order.
    train_from_config(load_config(config, ["data.batch_size=64", "train.max_steps=20"]), tmp_path / "one")
    one, two = load_weights(tmp_path / "one" / "model.safetensors"), load_weights(out / "model.safetensors")
    for key, value in one.items():
        assert torch.allclose(value, two[key], rtol=1e-4, atol=1e-5), key


@pytest.mark.parametrize("role", ["worker", "coordinator"])
def test_unreachable_peer_fails_clearly_within_30_seconds(tmp_path, role):
    config = write_config(tmp_path, epochs=1)
    started = time.monotonic()
    proc = run_cli(*ps_args(config, tmp_path / "ps", f'strategy.role="{role}"',
                            f'strategy.coordinator_address="127.0.0.1:{free_port()}"',
                            "strategy.connect_timeout_s=5"), timeout=60)
    assert time.monotonic() - started < 30
    assert proc.returncode == 2, proc.stderr[-2000:]
    expected = "cannot reach the coordinator" if role == "worker" else "did not join the coordinator"
    assert expected in proc.stderr + proc.stdout


def make_server(backup_dir: Path, mode: str = "async"):
    import torch

    from hpmodel.config import OptimizerConfig
    from hpmodel.parameter_server.server import ServerSpec, ShardServer
    from hpmodel.train.optim import optimizer_factory

    torch.manual_seed(0)
    spec = ServerSpec(index=0, tensors={"w": torch.randn(4, 3), "b": torch.zeros(4)},
                      optimizer_factory=optimizer_factory(OptimizerConfig(name="adamw", lr=0.1)),
                      mode=mode, backup_dir=str(backup_dir), backup_every_steps=2)
    return ShardServer(spec)


def test_server_applies_each_step_once_and_resumes_from_its_backup(tmp_path):
    import torch

    server = make_server(tmp_path)
    grads = {"w": torch.ones(4, 3), "b": torch.ones(4)}
    assert server.push(0, grads, read_version=0) == 0
    assert server.push(1, grads, read_version=0) == 1  # one update landed since its pull
    assert server.push(1, grads, read_version=0) is None  # a re-run step: dropped
    assert server.push(2, grads, read_version=2) == 0
    server.write_backup()
    version, params = server.pull()
    restarted = make_server(tmp_path)  # a new server process with the same backup directory
    assert restarted.version == version == 3 and restarted.applied == {0, 1, 2}
    for key, value in restarted.pull()[1].items():
        assert torch.equal(value, params[key]), key
    server.push(3, grads, 3)
    restarted.push(3, grads, 3)  # the optimizer state came back too: the same next update
    for key, value in restarted.pull()[1].items():
        assert torch.equal(value, server.pull()[1][key]), key


def test_sync_server_averages_a_round_into_one_update(tmp_path):
    import torch

    server = make_server(tmp_path / "a", mode="sync")
    single = make_server(tmp_path / "b", mode="async")
    server.push(0, {"w": torch.ones(4, 3), "b": torch.ones(4)}, 0)
    server.push(1, {"w": 3 * torch.ones(4, 3), "b": 3 * torch.ones(4)}, 0)
    assert server.version == 0 and server.apply_round([0, 1]) == 1
    single.push(0, {"w": 2 * torch.ones(4, 3), "b": 2 * torch.ones(4)}, 0)
    for key, value in server.pull()[1].items():
        assert torch.allclose(value, single.pull()[1][key]), key
