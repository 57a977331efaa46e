"""Model and optimizer state through ``torch.distributed.checkpoint`` (DCP), with nothing
that can execute code on load.

DCP does the heavy lifting: ``get_state_dict`` / ``set_state_dict`` give one view of the
state of a plain module, a DDP module and an FSDP2 (``fully_shard``) module; ``dcp.save``
writes each replicated tensor once and each shard by its owner, and ``dcp.load`` reshards.

DCP would store every non-tensor leaf (optimizer ``param_groups``: lr, betas …) as a
pickled byte item and load it with ``torch.load(weights_only=False)``, i.e. run whatever
code the bytes name. Here DCP sees tensors only: :func:`split_state` moves every other
leaf into a JSON skeleton (``state.json``) that :func:`join_state` puts back on load.
Before a load, :func:`check_dcp_folder` reads ``.metadata`` with an unpickler that knows
DCP's metadata classes and nothing else, and refuses any byte item, any path outside the
folder and any stream transform; :class:`TensorOnlyLoadPlanner` refuses byte items again.

Example::

    tensors, skeleton = split_state({"model": model_state, "optim": optim_state})
    save_model_state(tensors, skeleton, "ckpt/step-000000012")
    load_model_state(model, optimizer, "ckpt/step-000000012")
"""

from __future__ import annotations

import io
import json
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import StorageMeta, TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict, set_state_dict

from hpmodel.kernel.errors import HpmodelError
from hpmodel.kernel.quiet import DCP_SINGLE_PROCESS

# Without a process group DCP warns on every call that it assumes one process: intended
# here. Filtered for the process, this one message only: async backups call DCP from a
# writer thread, and ``warnings.catch_warnings`` (kernel.quiet's scoped filter) is not
# thread-safe.
warnings.filterwarnings("ignore", message=DCP_SINGLE_PROCESS.pattern, category=DCP_SINGLE_PROCESS.category)

ALLOWED_TORCH_NAMES = {"Size", "layout", "memory_format"}
SKELETON = "state.json"  # the non-tensor leaves of model + optimizer state, as JSON
LARGE_STATE_BYTES = 256 << 20  # from this size on, DCP writes with WRITER_THREADS threads
WRITER_THREADS = 4


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


def read_metadata(folder: str | Path, name: str = ".metadata"):
    """DCP's index of ``folder``, unpickled with :class:`_MetadataUnpickler`."""
    with open(Path(folder) / name, "rb") as handle:
        return _MetadataUnpickler(handle).load()


class _SafeReader(FileSystemReader):
    """DCP's file reader whose metadata is read with a restricted unpickler."""

    def read_metadata(self, *args: Any, **kwargs: Any):
        rank = kwargs.get("rank")
        metadata = read_metadata(self.path, ".metadata" if rank is None else f"__{rank}.metadata")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class TensorOnlyLoadPlanner(DefaultLoadPlanner):
    """DCP's load planner minus byte items, which DCP would read with ``weights_only=False``."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        raise ValueError(f"'{read_item.dest_index.fqn}' is stored as pickled bytes, which a backup "
                         "never holds; refusing to unpickle it")


def check_dcp_folder(folder: Path, manifest: dict) -> None:
    """Raise ValueError(reason) unless ``folder``'s DCP index holds tensors only, read from
    files of the manifest, with no stream transform (called before anything is loaded)."""
    if not (folder / SKELETON).is_file():
        raise ValueError(f"{SKELETON} is missing (written by an older hpmodel whose optimizer "
                         "settings are pickled; it is not loaded)")
    try:
        metadata = read_metadata(folder)
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError) as error:
        raise ValueError(f".metadata cannot be read safely ({error})") from None
    for fqn, entry in getattr(metadata, "state_dict_metadata", {}).items():
        if not isinstance(entry, TensorStorageMetadata):
            raise ValueError(f".metadata stores '{fqn}' as {type(entry).__name__}, not a tensor; "
                             "refusing a byte item that would be unpickled")
    files = set(manifest.get("files", {}))
    for info in (getattr(metadata, "storage_data", None) or {}).values():
        path = str(getattr(info, "relative_path", ""))
        if path not in files or "/" in path or "\\" in path:
            raise ValueError(f".metadata points at '{path}', which is not a file of this backup")
        if getattr(info, "transform_descriptors", None):
            raise ValueError(f".metadata asks for stream transforms {info.transform_descriptors}")


# -- tensors for DCP, everything else as JSON -------------------------------------------------
def split_state(state: Any) -> tuple[dict[str, torch.Tensor], Any]:
    """``state`` → (flat ``{dotted.path: tensor}`` for DCP, JSON skeleton of the rest).

    Example::

        tensors, skeleton = split_state({"optim": {"param_groups": [{"lr": 0.1}]}})
    """
    tensors: dict[str, torch.Tensor] = {}

    def strip(value: Any, path: str) -> Any:
        if torch.is_tensor(value):
            tensors[path] = value
            return {"__tensor__": path}
        if isinstance(value, dict):
            for key in value:
                if not (key is None or isinstance(key, (bool, int, float, str))):
                    raise HpmodelError(f"the training state has a key of type {type(key).__name__} "
                                       f"under '{path}': a backup stores only JSON keys")
            return {"__dict__": [[k, strip(v, f"{path}.{k}" if path else str(k))]
                                 for k, v in value.items()]}
        if isinstance(value, (list, tuple)):
            return {"__list__": [strip(v, f"{path}.{i}") for i, v in enumerate(value)],
                    "tuple": isinstance(value, tuple)}
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise HpmodelError(f"the training state holds a {type(value).__name__} at '{path}': a backup "
                           "stores tensors and JSON values (numbers, strings, lists) only")

    return tensors, strip(state, "")


def join_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of :func:`split_state`."""
    if isinstance(skeleton, dict) and "__tensor__" in skeleton:
        if skeleton["__tensor__"] not in tensors:
            raise ValueError(f"{SKELETON} names a tensor '{skeleton['__tensor__']}' the checkpoint lacks")
        return tensors[skeleton["__tensor__"]]
    if isinstance(skeleton, dict) and "__dict__" in skeleton:
        return {k: join_state(v, tensors) for k, v in skeleton["__dict__"]}
    if isinstance(skeleton, dict) and "__list__" in skeleton:
        items = [join_state(v, tensors) for v in skeleton["__list__"]]
        return tuple(items) if skeleton.get("tuple") else items
    if isinstance(skeleton, (dict, list)):
        raise ValueError(f"{SKELETON} holds an unexpected {type(skeleton).__name__}")
    return skeleton


def model_fingerprint(model: torch.nn.Module) -> dict[str, list]:
    """Parameter and buffer names → [shape, dtype], as DCP names them (wrappers removed)."""
    return {k: [list(v.shape), str(v.dtype).removeprefix("torch.")]
            for k, v in get_model_state_dict(model).items() if torch.is_tensor(v)}


def training_state(model, optimizer) -> tuple[dict[str, torch.Tensor], Any]:
    """Model and optimizer state as DCP sees it, split by :func:`split_state`."""
    model_state, optim_state = get_state_dict(model, optimizer)
    return split_state({"model": model_state, "optim": optim_state})


def write_skeleton(folder: str | Path, skeleton: Any) -> None:
    """Write the JSON half of the state (rank 0; every rank's skeleton is the same)."""
    (Path(folder) / SKELETON).write_text(json.dumps(skeleton))  # fsynced by the manifest writer


def save_tensors(tensors: dict[str, torch.Tensor], folder: str | Path, process_group=None) -> None:
    """``dcp.save`` of a flat tensor dict (all ranks call); fsync is left to the manifest writer.
    A large state is written by several of DCP's writer threads (one file each); their
    gain over one thread was not measured on its own."""
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    threads = min(WRITER_THREADS, os.cpu_count() or 1) if size >= LARGE_STATE_BYTES else 1
    writer = FileSystemWriter(str(folder), sync_files=False, thread_count=threads)
    try:
        dcp.save(tensors, storage_writer=writer, process_group=process_group)
    except CheckpointException as error:
        raise OSError(root_cause(error)) from None


def load_model_state(model, optimizer, folder: str | Path, process_group=None) -> None:
    """Load what :func:`save_tensors` + :func:`write_skeleton` wrote into ``model`` and
    ``optimizer`` (all ranks call), resharded by DCP to this run's layout."""
    # get_state_dict creates the optimizer's state (a zero step) so DCP has slots to fill;
    # every slot is then overwritten by the loaded values.
    tensors, _ = training_state(model, optimizer)
    try:
        dcp.load(tensors, storage_reader=_SafeReader(str(folder)), planner=TensorOnlyLoadPlanner(),
                 process_group=process_group)
    except CheckpointException as error:
        raise ValueError(root_cause(error)) from None
    state = join_state(json.loads((Path(folder) / SKELETON).read_text()), tensors)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def root_cause(error: CheckpointException) -> str:
    """The first rank's failure inside DCP's wrapper, in one line."""
    failures = getattr(error, "failures", None) or {}
    for failure in failures.values():
        cause = getattr(failure, "exc", failure)  # DCP's _WrappedException
        lines = str(cause).strip().splitlines()
        return f"{type(cause).__name__}: {lines[0] if lines else ''}"
    return str(error).strip().splitlines()[0]
