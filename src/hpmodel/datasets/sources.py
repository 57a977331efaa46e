"""Sources of arrays: scikit-learn's bundled digits, generated data and .npz files.

scikit-learn ships the digits images inside its wheel, so nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from hpmodel.kernel.errors import ConfigError

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
    from sklearn.datasets import load_digits  # here: 1.5 s of import only where digits are read

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
    """Arrays ``x_train, y_train, x_test, y_test`` from ``data.path``, checked (:func:`check_npz`)."""
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
    except (OSError, ValueError, EOFError) as error:
        raise ConfigError(f"data.path '{path}' is not a readable .npz file ({error})") from None
    check_npz(path, arrays)
    return {k: torch.from_numpy(v.astype(np.float32 if k.startswith("x") else np.int64))
            for k, v in arrays.items()}


MAX_LABEL = 1_000_000  # a larger class index is a broken file, not a classifier to build


def check_npz(path, arrays: dict[str, np.ndarray]) -> None:
    """One ConfigError naming the array and the fix for anything that would not train as
    written: non-numeric or empty arrays, x / y lengths that differ, labels that are not
    class indices (2-D, fractional, negative, or beyond ``MAX_LABEL``, which would allocate
    one output per class). Nothing is allocated to check.

    Example::

        check_npz("d.npz", {"x_train": x, "y_train": y, "x_test": xt, "y_test": yt})
    """
    where = f"data.path '{path}'"
    for key, array in arrays.items():
        if not any(np.issubdtype(array.dtype, kind) for kind in (np.integer, np.floating, np.bool_)):
            raise ConfigError(f"{where}: {key} has dtype {array.dtype}, not numbers: save numeric "
                              "arrays (x float, y integer class indices)")
        if array.size == 0 or array.ndim == 0:
            raise ConfigError(f"{where}: {key} is empty (shape {array.shape}): save at least one example")
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if y.ndim != 1:
            raise ConfigError(f"{where}: y_{split} has shape {y.shape}: labels must be one class "
                              "index per example, shape (N,) (for one-hot labels save argmax(axis=1))")
        if len(x) != len(y):
            raise ConfigError(f"{where}: x_{split} has {len(x)} examples but y_{split} {len(y)} "
                              "labels: save one label per example")
        _check_labels(where, f"y_{split}", y)
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise ConfigError(f"{where}: x_train examples have shape {arrays['x_train'].shape[1:]} but "
                          f"x_test {arrays['x_test'].shape[1:]}: save both splits with one example shape")


def _check_labels(where: str, key: str, y: np.ndarray) -> None:
    floating = np.issubdtype(y.dtype, np.floating)
    if floating and not np.all(np.isfinite(y)):
        raise ConfigError(f"{where}: {key} holds NaN or infinite labels: labels must be class indices")
    if floating and not np.array_equal(y, np.floor(y)):
        raise ConfigError(f"{where}: {key} holds fractional labels (e.g. {y[y != np.floor(y)][0]}): "
                          "labels must be integer class indices 0 .. classes - 1")
    low, high = y.min(), y.max()
    if low < 0:
        raise ConfigError(f"{where}: {key} holds the negative label {low}: labels must be class "
                          "indices 0 .. classes - 1")
    if high > MAX_LABEL:
        raise ConfigError(f"{where}: {key} holds the label {high}, beyond {MAX_LABEL:,} classes: labels "
                          "must be class indices 0 .. classes - 1 (renumber them)")


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
