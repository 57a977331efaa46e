"""Seeds and the random-number streams that decide a run's future."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every RNG stream of this process, as tensors and plain data (safe to load without pickle)."""
    state = {
        "python": _python_state_to_list(random.getstate()),
        "numpy": _numpy_state_to_dict(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_python_state_from_list(state["python"]))
    np.random.set_state(_numpy_state_from_dict(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_state_to_list(state) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_state_from_list(data) -> tuple:
    version, internal, gauss = data
    return (int(version), tuple(int(v) for v in internal), gauss)


def _numpy_state_to_dict(state) -> dict:
    name, keys, pos, has_gauss, cached = state
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _numpy_state_from_dict(data) -> tuple:
    keys = data["keys"].numpy().astype(np.uint32) if torch.is_tensor(data["keys"]) else np.asarray(
        data["keys"], dtype=np.uint32)
    return (data["name"], keys, int(data["pos"]), int(data["has_gauss"]), float(data["cached"]))
