"""Model and optimizer state through ``torch.distributed.checkpoint`` (DCP).

DCP does the heavy lifting: ``get_state_dict`` / ``set_state_dict`` give one view of the
state of a plain module, a DDP module and an FSDP2 (``fully_shard``) module; ``dcp.save``
writes each replicated tensor once and each shard by its owner; ``dcp.async_save`` writes
in a background thread. This module adds a CPU snapshot taken before an asynchronous save
(so later steps cannot change the tensors being written) and a metadata reader that
refuses any pickled class outside DCP's own metadata types.

Example::

    handle = save_model_state(model, optimizer, "ckpt/step-000000012", asynchronous=True)
    handle.result()                       # the write is complete on this rank
    load_model_state(model, optimizer, "ckpt/step-000000012")
"""

from __future__ import annotations

import pickle
import warnings
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import StorageMeta
from torch.distributed.tensor import DTensor
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict, set_state_dict

# Without a process group DCP warns on every call that it assumes one process: intended here.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")

ALLOWED_TORCH_NAMES = {"Size", "layout", "memory_format"}


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP's ``.metadata`` and nothing else: no code can run while loading it."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = (
            module in ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.filesystem")
            or (module == "torch" and (name in ALLOWED_TORCH_NAMES
                                       or isinstance(getattr(torch, name, None), torch.dtype)))
            or (module == "torch.serialization" and name == "_get_layout")
            or (module == "pathlib" and name in ("PosixPath", "WindowsPath", "PurePosixPath", "Path"))
            or (module == "collections" and name == "OrderedDict")
        )
        value = super().find_class(module, name) if allowed else None
        if value is None or (module.startswith("torch.distributed") and not isinstance(value, type)):
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a checkpoint index")
        return value


def _safe_reader(path: str | Path):
    class SafeFileSystemReader(FileSystemReader):
        """DCP's file reader whose metadata is read with a restricted unpickler."""

        def read_metadata(self, *args: Any, **kwargs: Any):
            rank = kwargs.get("rank")
            name = ".metadata" if rank is None else f"__{rank}.metadata"
            with open(Path(self.path) / name, "rb") as handle:
                metadata = _MetadataUnpickler(handle).load()
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeFileSystemReader(str(path))


def snapshot(value: Any) -> Any:
    """A CPU copy of every tensor in ``value`` (DTensor shards stay DTensors)."""

    if isinstance(value, DTensor):
        local = value.to_local().detach().to("cpu", copy=True)
        return DTensor.from_local(local, value.device_mesh, value.placements, run_check=False,
                                  shape=value.size(), stride=value.stride())
    if torch.is_tensor(value):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: snapshot(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(snapshot(v) for v in value)
    return value


def model_fingerprint(model: torch.nn.Module) -> dict[str, list]:
    """Parameter and buffer names → [shape, dtype], as DCP names them (wrappers removed)."""

    return {k: [list(v.shape), str(v.dtype).removeprefix("torch.")]
            for k, v in get_model_state_dict(model).items() if torch.is_tensor(v)}


def save_model_state(model, optimizer, folder: str | Path, *, asynchronous: bool = False,
                     process_group=None) -> Future:
    """Write model and optimizer to ``folder`` (all ranks call); a future of the write."""

    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    if asynchronous:
        # DCP's stager may alias CPU tensors; a copy made now is what this step holds.
        result = dcp.async_save(snapshot(state), checkpoint_id=str(folder), process_group=process_group)
        return getattr(result, "upload_completion", result)  # 2.13 may return a response object
    dcp.save(state, checkpoint_id=str(folder), process_group=process_group)
    done: Future = Future()
    done.set_result(None)
    return done


def load_model_state(model, optimizer, folder: str | Path, process_group=None) -> None:
    """Load what :func:`save_model_state` wrote into ``model`` and ``optimizer`` (all ranks call)."""

    # get_state_dict creates the optimizer's state (a zero step) so DCP has slots to fill;
    # every slot is then overwritten by the loaded values.
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=str(folder), storage_reader=_safe_reader(folder),
             process_group=process_group)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
