"""Shared test helpers: run the real CLI, in-process or as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hpmodel.kernel.files import load_weights

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "digits.toml"


def digits_mlp_toml(width: int = 16, strategy: bool = True, **train) -> str:
    """A small run config as TOML: digits, an MLP of ``width`` × 1, AdamW at 3e-3, one
    epoch unless ``train`` says otherwise (its keys go to ``[train]``), one CPU device."""
    train = {"epochs": 1, **train, "progress": False}
    lines = ["seed = 0", "[data]", 'name = "digits"', "batch_size = 32", "[model]",
             'name = "mlp"', f"width = {width}", "depth = 1", "[optimizer]", 'name = "adamw"',
             "lr = 0.003", "[train]", *(f"{key} = {json.dumps(value)}" for key, value in train.items())]
    if strategy:
        lines += ["[strategy]", 'name = "one-device"', 'device = "cpu"']
    return "\n".join(lines) + "\n"


def assert_same_weights(run_a: Path, run_b: Path) -> None:
    """The two run directories' ``model.safetensors`` hold the same tensors, bit for bit."""
    expected, actual = load_weights(run_a / "model.safetensors"), load_weights(run_b / "model.safetensors")
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[k], actual[k]) for k in expected)


def hpmodel_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_cli(*args: str, timeout: float = 300, check: bool = False) -> subprocess.CompletedProcess:
    """Run ``python -m hpmodel ARGS`` as a real process."""
    proc = subprocess.run([sys.executable, "-m", "hpmodel", *args], capture_output=True, text=True,
                          env=hpmodel_env(), timeout=timeout, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"hpmodel {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture
def example_config() -> Path:
    return EXAMPLE
