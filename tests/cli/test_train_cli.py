"""The command-line contract: run directory, evaluate round trip, strategies list."""

import json

import pytest

from conftest import run_cli


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    run_cli("train", "examples/digits.toml", "--out", str(out), "--set", "train.progress=false",
            check=True)
    return out


def test_demo_config_reaches_97_percent(trained_run):
    for name in ("model.safetensors", "config.toml", "metrics.jsonl", "summary.json"):
        assert (trained_run / name).is_file(), name
    summary = json.loads((trained_run / "summary.json").read_text())
    assert summary["test_accuracy"] >= 0.97
    for key in ("test_loss", "steps", "examples_per_second", "wall_seconds"):
        assert key in summary
    lines = (trained_run / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(line)["kind"] in ("step", "epoch") for line in lines)
    # why the accelerator waited: the last epoch's input diagnosis, in the summary and report
    assert summary["input"]["slowest_stage"] and "input-bound" in summary["input"]["text"]
    assert "Why the accelerator waited" in (trained_run / "report.md").read_text()


def test_evaluate_round_trips_test_accuracy(trained_run):
    proc = run_cli("evaluate", str(trained_run), check=True)
    scores = json.loads(proc.stdout.strip().splitlines()[-1])
    summary = json.loads((trained_run / "summary.json").read_text())
    assert scores["test_accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-9)


def test_evaluate_refuses_corrupt_weights(trained_run, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(trained_run, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    proc = run_cli("evaluate", str(broken))
    assert proc.returncode == 2 and "corrupt or not safetensors" in proc.stderr


def test_version_and_strategies():
    assert run_cli("--version", check=True).stdout.startswith("hpmodel ")
    listing = run_cli("strategies", check=True).stdout
    assert "one-device" in listing and "mirrored" in listing
