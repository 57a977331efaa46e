"""``hpmodel data write`` writes shards that ``data.name = "shards"`` trains from."""

import json

import numpy as np

from conftest import run_cli


def test_write_shards_then_train_from_them(tmp_path):
    from sklearn.datasets import load_digits

    digits = load_digits()
    np.savez(tmp_path / "digits.npz", x=(digits.images / 16).astype(np.float32)[:, None],
             y=digits.target.astype(np.int64))
    run_cli("data", "write", str(tmp_path / "digits.npz"), "--out", str(tmp_path / "shards"),
            "--keys", "x,y", "--records-per-shard", "500", check=True)
    assert len(list((tmp_path / "shards").glob("*.shard"))) == 4
    out = tmp_path / "run"
    run_cli("train", "examples/digits.toml", "--out", str(out), "--set", 'data.name="shards"',
            "--set", f'data.shards="{tmp_path / "shards"}/*.shard"', "--set", "train.epochs=3",
            "--set", "train.progress=false", check=True)
    assert json.loads((out / "summary.json").read_text())["test_accuracy"] > 0.9


def test_missing_source_is_one_clear_line(tmp_path):
    proc = run_cli("data", "write", str(tmp_path / "nope.npz"), "--out", str(tmp_path / "s"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
