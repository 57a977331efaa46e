"""Sources of arrays: scikit-learn's bundled digits, generated data and .npz files.

scikit-learn ships the digits images inside its wheel, so nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from hpmodel.kernel.errors import ConfigError
from sklearn.datasets import load_digits

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def load_arrays(config, seed: int) -> dict[str, torch.Tensor]:
    """Return ``x_train, y_train, x_test, y_test`` tensors for ``config.name``."""
    loaders = {"digits": digits_arrays, "synthetic": synthetic_arrays, "npz": npz_arrays}
    if config.name not in loaders:
        raise ConfigError(f"data.name = '{config.name}' is unknown: allowed values are "
                          f"{', '.join(loaders)}")
    return loaders[config.name](config, seed)


def digits_arrays(config, seed: int) -> dict[str, torch.Tensor]:
    """scikit-learn's 1,797 8×8 digit images, scaled to [0, 1], shape (N, 1, 8, 8)."""

    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)  # (N, 1, 8, 8)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    return _split_test(x, y, config.test_fraction, seed)


def synthetic_arrays(config, seed: int) -> dict[str, torch.Tensor]:
    """Gaussian class clusters of ``config.shape``; sized by ``data.num_examples``."""
    generator = torch.Generator().manual_seed(seed + 12345)
    shape = tuple(int(d) for d in config.shape)
    centers = torch.randn((config.num_classes, *shape), generator=generator)
    y = torch.randint(0, config.num_classes, (config.num_examples,), generator=generator)
    noise = torch.randn((config.num_examples, *shape), generator=generator) * config.noise
    x = centers[y] + noise * centers.std()
    return _split_test(x.float(), y, config.test_fraction, seed)


def npz_arrays(config, seed: int) -> dict[str, torch.Tensor]:
    """Arrays ``x_train, y_train, x_test, y_test`` from ``data.path``."""
    path = Path(config.path)
    if not config.path or not path.is_file():
        raise ConfigError(f"data.path '{config.path}' does not exist: give an .npz file holding "
                          f"{', '.join(NPZ_KEYS)}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in NPZ_KEYS if k not in npz.files]
            if missing:
                raise ConfigError(f"data.path '{path}' lacks arrays {', '.join(missing)}: "
                                  f"an .npz needs {', '.join(NPZ_KEYS)}")
            arrays = {k: np.asarray(npz[k]) for k in NPZ_KEYS}
    except (OSError, ValueError) as error:
        raise ConfigError(f"data.path '{path}' is not a readable .npz file ({error})") from None
    return {k: torch.from_numpy(v.astype(np.float32 if k.startswith("x") else np.int64))
            for k, v in arrays.items()}


def _split_test(x: torch.Tensor, y: torch.Tensor, fraction: float, seed: int):
    test, train = test_indices(len(y), fraction, seed)
    return {"x_train": x[train], "y_train": y[train], "x_test": x[test], "y_test": y[test]}


def test_indices(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(test, train)`` positions of ``n`` examples: a seeded random ``fraction`` held out."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = max(1, int(round(n * fraction)))
    return order[:n_test], order[n_test:]


def val_indices(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(val, train)`` positions of ``n`` training examples (deterministic)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))
    n_val = int(round(n * fraction))
    return order[:n_val], order[n_val:]


def split_train_val(x, y, fraction: float, seed: int):
    """Hold out ``fraction`` of the training examples for validation (deterministic)."""
    val, train = val_indices(len(y), fraction, seed)
    return x[train], y[train], x[val], y[val]
