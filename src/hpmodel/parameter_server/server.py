"""A parameter server: holds one shard of the variables and applies updates as they arrive.

``torch.optim`` does the update (the configured optimizer and LR schedule run on the
server, per shard); ``torch.distributed.rpc`` delivers the calls, each on one of the
agent's threads, so one lock orders them. Every pushed gradient carries its step id:
a step that is run again after its worker died is applied once (duplicates are
ignored). The shard is backed up with ``safetensors`` + JSON, written atomically, so a
restarted server resumes where its backup left off.

Example (inside a server process, called by the coordinator over RPC)::

    rpc.rpc_sync("server0", setup_server, args=(ServerSpec(index=0, tensors=shard, ...),))
    version, params = rpc.rpc_sync("server0", pull)
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from hpmodel.kernel.errors import HpmodelError
from hpmodel.kernel.files import atomic_write_bytes
from safetensors.torch import load_file, save


@dataclass
class ServerSpec:
    """What one server needs: its shard, how to update it, where to back it up."""

    index: int
    tensors: dict[str, torch.Tensor]
    optimizer_factory: Callable  # f(parameters) -> torch.optim.Optimizer
    schedule_factory: Callable | None = None  # f(optimizer, total_steps) -> LR scheduler
    total_steps: int = 1
    mode: str = "async"  # async | bounded | sync
    backup_dir: str = ""
    backup_every_steps: int = 0  # 0: only when asked
    extra: dict[str, Any] = field(default_factory=dict)
    # what the variables were trained from (model, data, optimizer...): a backup of another must not resume
    fingerprint: dict[str, Any] = field(default_factory=dict)


class ShardServer:
    """One shard of the model's variables plus its optimizer, behind a lock."""

    def __init__(self, spec: ServerSpec):
        self.spec = spec
        self.params = {k: nn.Parameter(v.detach().clone().float()) for k, v in spec.tensors.items()}
        self.optimizer = spec.optimizer_factory(list(self.params.values()))
        self.scheduler = (spec.schedule_factory(self.optimizer, spec.total_steps)
                          if spec.schedule_factory else None)
        self.version = 0  # updates applied so far
        self.applied: set[int] = set()  # step ids already in the variables
        self.pending: dict[int, dict[str, torch.Tensor]] = {}  # sync mode: gradients of this round
        self.lock = threading.Lock()
        self.restore()

    @property
    def name(self) -> str:
        return f"server{self.spec.index}"

    def pull(self) -> tuple[int, dict[str, torch.Tensor]]:
        with self.lock:
            return self.version, {k: p.detach().clone() for k, p in self.params.items()}

    def push(self, step_id: int, grads: dict[str, torch.Tensor], read_version: int) -> int | None:
        """Apply (async) or hold (sync) one step's gradients; returns the version lag, None if a duplicate."""
        with self.lock:
            if step_id in self.applied or step_id in self.pending:
                return None
            if self.spec.mode == "sync":
                self.pending[step_id] = grads
                return 0
            lag = self.version - read_version
            self.apply([grads], [step_id])
            return lag

    def apply_round(self, step_ids: list[int]) -> int:
        """Sync mode: average the held gradients of ``step_ids`` into one update."""
        with self.lock:
            grads = [self.pending.pop(s) for s in step_ids if s in self.pending]
            if grads:
                self.apply(grads, step_ids)
            self.pending.clear()
            return self.version

    def apply(self, grads: list[dict[str, torch.Tensor]], step_ids: list[int]) -> None:
        for key, param in self.params.items():
            param.grad = torch.stack([g[key] for g in grads]).mean(0) if len(grads) > 1 else grads[0][key]
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scheduler is not None:
            self.scheduler.step()
        self.version += 1
        self.applied.update(step_ids)
        every = self.spec.backup_every_steps
        if every and self.spec.backup_dir and self.version % every == 0:
            self.write_backup()

    # -- backups ----------------------------------------------------------------------------
    def backup_paths(self) -> tuple[Path, Path]:
        root = Path(self.spec.backup_dir)
        return root / f"{self.name}.safetensors", root / f"{self.name}.json"

    def write_backup(self) -> None:
        """Variables and optimizer tensors as safetensors, the rest as JSON (no pickle)."""
        tensors_path, json_path = self.backup_paths()
        state = self.optimizer.state_dict()
        tensors = {f"param/{k}": p.detach().contiguous() for k, p in self.params.items()}
        scalars: dict[str, Any] = {}
        for index, slots in state["state"].items():
            for slot, value in slots.items():
                if torch.is_tensor(value):
                    tensors[f"optimizer/{index}/{slot}"] = value.detach().contiguous()
                else:
                    scalars[f"{index}/{slot}"] = value
        meta = {"version": self.version, "applied": sorted(self.applied), "optimizer_scalars": scalars,
                "param_groups": state["param_groups"], "names": list(self.params),
                "fingerprint": self.spec.fingerprint}
        atomic_write_bytes(tensors_path, save(tensors))
        atomic_write_bytes(json_path, json.dumps(meta).encode())  # written last: marks the pair done

    def restore(self) -> None:
        """Resume from this server's backup when one exists."""
        if not self.spec.backup_dir:
            return
        tensors_path, json_path = self.backup_paths()
        if not json_path.is_file() or not tensors_path.is_file():
            return

        meta = json.loads(json_path.read_text())
        stale = fingerprint_differences(meta.get("fingerprint"), self.spec.fingerprint)
        if stale:
            raise HpmodelError(f"backup '{json_path}' was written by another configuration (differs in "
                               f"{stale}): delete {json_path.parent} or point strategy.backup_dir "
                               "elsewhere to start fresh, or restore the configuration it was written with")
        if meta["names"] != list(self.params):
            raise HpmodelError(f"backup '{json_path}' holds other variables than this model: "
                               "delete the backup directory or use the model it was written for")
        tensors = load_file(str(tensors_path))
        with torch.no_grad():
            for key, param in self.params.items():
                param.copy_(tensors[f"param/{key}"])
        slots: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith("optimizer/"):
                _, index, slot = key.split("/", 2)
                slots.setdefault(int(index), {})[slot] = value
        for key, value in meta["optimizer_scalars"].items():
            index, slot = key.split("/", 1)
            slots.setdefault(int(index), {})[slot] = value
        self.optimizer.load_state_dict({"state": slots, "param_groups": meta["param_groups"]})
        for _ in range(meta["version"]):  # the schedule is a pure function of the version
            if self.scheduler is not None:
                self.scheduler.step()
        self.version, self.applied = meta["version"], set(meta["applied"])


def fingerprint_differences(stored: dict | None, current: dict) -> str:
    """The keys two fingerprints disagree on, as text ("" when equal; None = written without one).

    Example::

        fingerprint_differences({"model.width": 64}, {"model.width": 32})   # "model.width"
    """
    if stored is None:
        return "everything: it has no fingerprint" if current else ""
    differ = sorted(key for key in set(stored) | set(current)
                    if json.dumps(stored.get(key), sort_keys=True, default=str)
                    != json.dumps(current.get(key), sort_keys=True, default=str))
    return ", ".join(differ[:5]) + (f" and {len(differ) - 5} more" if len(differ) > 5 else "")


# -- RPC targets: one server per process ------------------------------------------------------
_SERVER: list[ShardServer] = []


def setup_server(spec: ServerSpec) -> tuple[int, list[int], str]:
    """Create this process's shard server; returns its version, the step ids already applied
    and "" — or the one-line reason it cannot start (a stale backup), for the coordinator to raise."""
    try:
        _SERVER[:] = [ShardServer(spec)]
    except HpmodelError as error:  # an RPC error would carry the remote traceback: send the line
        return -1, [], str(error)
    return _SERVER[0].version, sorted(_SERVER[0].applied), ""


def _server() -> ShardServer:
    if not _SERVER:
        raise RuntimeError("this parameter server has not been set up by the coordinator")
    return _SERVER[0]


def pull() -> tuple[int, dict[str, torch.Tensor]]:
    """The shard's version and a copy of its variables."""
    return _server().pull()


def push(step_id: int, grads: dict[str, torch.Tensor], read_version: int) -> int | None:
    """Hand one step's gradients to the shard (see :meth:`ShardServer.push`)."""
    return _server().push(step_id, grads, read_version)


def apply_round(step_ids: list[int]) -> int:
    return _server().apply_round(step_ids)


def backup() -> int:
    """Write the backup now; returns the version written."""
    server = _server()
    with server.lock:
        if server.spec.backup_dir:
            server.write_backup()
        return server.version
