"""``hpmodel train`` streams ``data.shards``: it equals the same data trained from an .npz
file, and its peak memory stays far below the size of the shards it trains on."""

import json
import subprocess
import sys

import numpy as np
import torch

from hpmodel.data import write_shards
from hpmodel.kernel.files import load_weights

COMMON = ["--set", 'model.name="mlp"', "--set", "model.width=8", "--set", "model.depth=1",
          "--set", "train.progress=false", "--set", "data.batch_size=32"]


def train(config_sets, out, *extra):
    cmd = [sys.executable, "-m", "hpmodel", "train", "examples/digits.toml", "--out", str(out),
           *COMMON, *config_sets, *extra]
    # A wrapper process reports the peak RSS of the run it waited for (and only that run).
    probe = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", probe, *cmd], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return int(proc.stdout.strip().splitlines()[-1]) * 1024  # ru_maxrss is in KiB


def arrays(n_train, n_test, features, seed=0):
    generator = np.random.default_rng(seed)
    x = generator.standard_normal((n_train + n_test, features), dtype=np.float32)
    y = (x[:, :10].argmax(1)).astype(np.int64)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def test_shards_train_exactly_like_the_same_npz(tmp_path):
    x_train, y_train, x_test, y_test = arrays(600, 200, 16)
    np.savez(tmp_path / "d.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    write_shards((x_train, y_train), str(tmp_path / "train"), records_per_shard=250)
    write_shards((x_test, y_test), str(tmp_path / "test"), records_per_shard=250)
    sets = ["--set", "train.epochs=2", "--set", "data.shape=[16]"]
    train(sets + ["--set", 'data.name="npz"', "--set", f'data.path="{tmp_path / "d.npz"}"'],
          tmp_path / "npz")
    train(sets + ["--set", 'data.name="shards"',
                  "--set", f'data.shards="{tmp_path / "train"}/*.shard"',
                  "--set", f'data.test_shards="{tmp_path / "test"}/*.shard"'], tmp_path / "shards")
    a, b = load_weights(tmp_path / "npz/model.safetensors"), load_weights(tmp_path / "shards/model.safetensors")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    for key in ("test_accuracy", "test_loss", "steps"):
        npz = json.loads((tmp_path / "npz/summary.json").read_text())[key]
        assert json.loads((tmp_path / "shards/summary.json").read_text())[key] == npz


def test_shards_four_times_the_peak_memory_train_with_bounded_memory(tmp_path):
    features, per_shard, shards = 65_536, 400, 20  # 256 KiB records, 100 MiB shards, 2 GiB
    generator = np.random.default_rng(0)
    for index in range(shards):
        x = generator.standard_normal((per_shard, features), dtype=np.float32)
        y = (x[:, :10].argmax(1)).astype(np.int64)
        write_shards((x, y), str(tmp_path / "big"), records_per_shard=per_shard,
                     prefix=f"part{index:02d}")
    total = sum(p.stat().st_size for p in (tmp_path / "big").glob("*.shard"))
    peak = train(["--set", "train.epochs=1", "--set", 'data.name="shards"',
                  "--set", f'data.shards="{tmp_path / "big"}/*.shard"',
                  "--set", "data.test_fraction=0.05", "--set", "data.val_fraction=0.0"],
                 tmp_path / "run")
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["steps"] > 0 and np.isfinite(summary["test_loss"])
    assert total >= 4 * peak, f"shards {total / 2**20:.0f} MiB, peak RSS {peak / 2**20:.0f} MiB"
