"""Embedded and file-backed data sets, all behind one small interface.

``load_splits(config)`` returns train / validation / test tensors for the configured
source: scikit-learn's bundled ``digits`` (no network), ``synthetic`` data generated
from a seed, an ``.npz`` file, or toolkit shards (read through :mod:`hpmodel.data`).

Example::

    splits = load_splits(DataConfig(name="digits"), seed=0)
    splits.train.x.shape  # torch.Size([1293, 1, 8, 8])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hpmodel.datasets.sources import load_arrays, split_train_val


@dataclass
class ArraySplit:
    """Examples ``x`` (N, *shape) float32 and integer labels ``y`` (N,)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Splits:
    train: ArraySplit
    val: ArraySplit
    test: ArraySplit
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])


def load_splits(config, seed: int = 0) -> Splits:
    """Load the data named by a :class:`~hpmodel.config.DataConfig` and split it deterministically."""
    arrays = load_arrays(config, seed)
    x_train, y_train, x_val, y_val = split_train_val(
        arrays["x_train"], arrays["y_train"], config.val_fraction, seed
    )
    num_classes = int(max(arrays["y_train"].max(), arrays["y_test"].max())) + 1
    return Splits(
        train=ArraySplit(x_train, y_train),
        val=ArraySplit(x_val, y_val),
        test=ArraySplit(arrays["x_test"], arrays["y_test"]),
        num_classes=num_classes,
    )


__all__ = ["ArraySplit", "Splits", "load_splits"]
