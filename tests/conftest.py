"""Shared test helpers: run the real CLI, in-process or as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
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


STDLIB_FILES = ("abc.py", "bisect.py", "colorsys.py", "keyword.py", "heapq.py", "fnmatch.py")


def stdlib_text_shards(out: Path, files: int, seq_len: int, val_fraction: float, **kw) -> Path:
    """Byte-token shards of the first ``files`` of :data:`STDLIB_FILES` (Python's own
    source, on every machine) in ``out``; ``kw`` goes to ``write_text_shards``."""
    from hpmodel.data import write_text_shards

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    write_text_shards([str(stdlib / name) for name in STDLIB_FILES[:files]], str(out),
                      seq_len=seq_len, val_fraction=val_fraction, seed=0, **kw)
    return out


def gpt_toml(shards: Path, *, width: int, depth: int, seq_len: int, batch_size: int, lr: float,
             max_steps: int, log_every: int, drop_remainder: bool = False, tie: bool = False,
             cpu: bool = True) -> str:
    """A tiny causal-lm run config as TOML: a byte-level GPT on ``shards`` (train-*/val-*),
    AdamW, ``max_steps`` steps; ``cpu`` adds a one-device CPU strategy."""
    options = f"seq_len = {seq_len}, vocab_size = 256" + (", tie_embeddings = true" if tie else "")
    lines = ["seed = 0", "[data]", 'name = "shards"', f'shards = "{shards}/train-*.shard"',
             f'test_shards = "{shards}/val-*.shard"', f"batch_size = {batch_size}",
             "val_fraction = 0.0", *(["drop_remainder = true"] if drop_remainder else []),
             "[model]", 'name = "gpt"', f"width = {width}", f"depth = {depth}", "heads = 2",
             f"options = {{ {options} }}", "[optimizer]", 'name = "adamw"', f"lr = {lr}",
             "[train]", 'task = "causal-lm"', f"max_steps = {max_steps}", "progress = false",
             f"log_every_steps = {log_every}"]
    if cpu:
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
