"""Multi-process failures through the real CLI end in hpmodel's one line first (the failing
rank's own error, or the signal that killed it), expected events in one line each, and
impossible requests (64 CPU processes, an endpoint nobody serves) in one line, exit 2."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from conftest import run_cli
from hpmodel.kernel.network import free_port

HERE = Path(__file__).resolve().parent
SMALL = ["examples/digits.toml", "--set", "train.progress=false", "--set", "train.epochs=1",
         "--set", "model.width=8"]
LAUNCHER_NOISE = ("Traceback", "torch/distributed/elastic", "torch/multiprocessing", "<NONE>")


def with_test_models(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def assert_quiet(stderr: str) -> None:
    noise = [line for line in lines(stderr) if any(word in line for word in LAUNCHER_NOISE)]
    assert not noise, "\n".join(noise[:10])


def test_a_raising_rank_gives_its_own_error_as_the_first_line(tmp_path, monkeypatch):
    with_test_models(monkeypatch)
    proc = run_cli("train", *SMALL, "--strategy", "mirrored", "--devices", "2",
                   "--set", 'model.target="raising_model:build"', "--out", str(tmp_path / "run"), timeout=180)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert_quiet(proc.stderr)
    first = lines(proc.stderr)[0]
    assert first.startswith("hpmodel: error: worker rank 1 failed: RuntimeError: deliberate failure"), first
    assert "raising_model.py:" in first  # where the worker raised it


def test_a_kill_on_every_attempt_names_the_signal_and_the_used_up_restarts(tmp_path, monkeypatch):
    with_test_models(monkeypatch)
    proc = run_cli("train", *SMALL, "--strategy", "mirrored", "--devices", "2", "--max-restarts", "1",
                   "--set", 'model.target="killing_model:build"', "--out", str(tmp_path / "run"), timeout=240)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert_quiet(proc.stderr)
    restart, error = lines(proc.stderr)[-2:]
    assert restart == ("hpmodel: worker local rank 1 was killed by SIGKILL (exit -9); "
                       "restarting the group (restart 1 of 1)"), proc.stderr[-2000:]
    assert error == ("hpmodel: error: worker rank 1 was killed by SIGKILL (exit -9) and --max-restarts 1 "
                     "are used up: raise --max-restarts or find why it died")
    assert len(lines(proc.stderr)) == 2, proc.stderr[-2000:]


def test_a_deliberate_kill_and_restart_print_one_line(tmp_path):
    proc = run_cli("train", *SMALL, "--strategy", "mirrored", "--devices", "2", "--max-restarts", "1",
                   "--set", "train.max_steps=8", "--set", "train.inject_kill=[1, 3]",
                   "--out", str(tmp_path / "run"), timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_quiet(proc.stderr)
    restarts = [line for line in lines(proc.stderr) if "restarting the group" in line]
    assert restarts == ["hpmodel: worker local rank 1 was killed by SIGKILL (exit -9); "
                        "restarting the group (restart 1 of 1)"]


def test_more_cpu_processes_than_the_host_runs_are_refused_before_launch(tmp_path):
    devices = (os.cpu_count() or 1) * 4 + 1
    started = time.monotonic()
    proc = run_cli("train", *SMALL, "--strategy", "mirrored", "--devices", str(devices),
                   "--set", 'strategy.device="cpu"', "--out", str(tmp_path / "run"), timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert lines(proc.stderr) == [f"hpmodel: error: strategy.devices = {devices} CPU processes on a host "
                                  f"with {os.cpu_count()} core(s) would only wait on each other: ask for at "
                                  f"most {devices - 1} (--devices), or run on GPUs"]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_an_endpoint_that_is_not_this_machine_is_one_line_for_node_zero(tmp_path):
    proc = run_cli("train", *SMALL, "--strategy", "multi-worker", "--nnodes", "2", "--node-rank", "0",
                   "--devices", "1", "--rdzv-endpoint", "192.0.2.1:29500", "--out", str(tmp_path / "run"),
                   timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines(proc.stderr)) == 1 and "does not name this machine" in proc.stderr, proc.stderr[-2000:]


def test_an_endpoint_nobody_serves_is_one_line(tmp_path):
    proc = run_cli("train", *SMALL, "--strategy", "multi-worker", "--nnodes", "2", "--node-rank", "1",
                   "--devices", "1", "--rdzv-endpoint", f"127.0.0.1:{free_port()}",
                   "--set", "strategy.rdzv_timeout_s=3", "--out", str(tmp_path / "run"), timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert_quiet(proc.stderr)
    assert lines(proc.stderr)[-1].startswith("hpmodel: error: nothing answers at rendezvous "
                                             "endpoint 127.0.0.1:"), proc.stderr[-2000:]
    assert len(lines(proc.stderr)) == 1, proc.stderr[-2000:]
