import numpy as np
import pytest
import torch

from hpmodel.config import DataConfig
from hpmodel.datasets import load_splits
from hpmodel.kernel.errors import ConfigError


def test_digits_split_is_deterministic_and_disjoint():
    a, b = load_splits(DataConfig(name="digits"), seed=0), load_splits(DataConfig(name="digits"), seed=0)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    assert float(a.train.x.max()) <= 1.0


def test_synthetic_is_sized_by_config():
    splits = load_splits(DataConfig(name="synthetic", num_examples=500, shape=[3, 16], num_classes=4))
    assert splits.input_shape == (3, 16) and splits.num_classes == 4
    assert len(splits.train) + len(splits.val) + len(splits.test) == 500


def test_npz_source(tmp_path):
    path = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.normal(size=(50, 6)), y_train=rng.integers(0, 3, 50),
             x_test=rng.normal(size=(10, 6)), y_test=rng.integers(0, 3, 10))
    splits = load_splits(DataConfig(name="npz", path=str(path), val_fraction=0.2))
    assert len(splits.test) == 10 and len(splits.train) == 40 and splits.train.x.dtype == torch.float32


def test_npz_missing_arrays_is_named(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, x_train=np.zeros((2, 2)))
    with pytest.raises(ConfigError, match="lacks arrays y_train"):
        load_splits(DataConfig(name="npz", path=str(path)))
