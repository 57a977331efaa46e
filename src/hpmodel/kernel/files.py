"""Files that are never half written: atomic bytes, JSON and weights.

Weights are written with ``safetensors`` (loading executes no code); every file is
written atomically (temporary file, fsync, rename) so a crash never leaves half a file.

Example::

    write_json("runs/x/summary.json", {"steps": 10})
    save_weights("runs/x/model.safetensors", model.state_dict())
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from hpmodel.kernel.errors import HpmodelError


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, data: Any) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise HpmodelError(f"'{path}' does not exist: is this a run directory written by "
                           "'hpmodel train'?") from None
    except json.JSONDecodeError as error:
        raise HpmodelError(f"'{path}' is not valid JSON ({error})") from None


def save_weights(path: str | Path, state_dict: dict[str, torch.Tensor],
                 metadata: dict[str, str] | None = None) -> None:
    """Save tensors as safetensors, atomically (shared tensors are cloned apart)."""

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    atomic_write_bytes(path, save(tensors, metadata=metadata))


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file; a missing or corrupt file gives one clear error."""

    path = Path(path)
    if not path.is_file():
        raise HpmodelError(f"weights file '{path}' does not exist: train first or check the run directory")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise HpmodelError(f"weights file '{path}' is corrupt or not safetensors ({error}): "
                           "re-run training to write it again") from None
