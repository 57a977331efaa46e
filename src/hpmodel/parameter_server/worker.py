"""A parameter-server worker: pull the variables, compute gradients on a batch, push them.

``torch.autograd`` computes the gradients; ``torch.distributed.rpc`` pulls from and
pushes to every server at once (``rpc_async`` per server, then wait). The coordinator
sends each step as a list of example indices, so any worker can run any step — which is
what lets a dead worker's step be run again elsewhere.

Example (inside a worker process, called by the coordinator over RPC)::

    rpc.rpc_sync("worker0", setup_worker, args=(WorkerSpec(...),))
    stats = rpc.rpc_sync("worker0", run_step, args=(7, indices))
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed.rpc as rpc
from torch import nn

from hpmodel.parameter_server import server
import os


@dataclass
class WorkerSpec:
    """What one worker needs: the model, its data and which server holds which variable."""

    name: str
    model_factory: Callable[[], nn.Module]
    data_factory: Callable[[], tuple[torch.Tensor, torch.Tensor]]  # -> (x, y) of the training split
    placement: dict[str, list[str]]  # server name -> variable names it holds
    rpc_timeout_s: float = 30.0
    slowdown: float = 1.0  # >1 makes this worker a straggler (benchmarks, tests)


class Worker:
    """Runs steps for the coordinator; keeps no state between steps but the model's shape."""

    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        self.model = spec.model_factory()
        self.x, self.y = spec.data_factory()
        self.params = dict(self.model.named_parameters())

    def run_step(self, step_id: int, indices: torch.Tensor) -> dict:
        """One step; returns loss, correct, examples, the version lag per server and seconds."""
        started = time.perf_counter()
        try:
            versions = self.pull()
        except RuntimeError as error:
            return {"error": f"pull failed: {error}"}
        x, y = self.x[indices], self.y[indices]
        self.model.zero_grad(set_to_none=True)
        logits = self.model(x)
        loss = nn.functional.cross_entropy(logits, y)
        loss.backward()
        if self.spec.slowdown > 1:  # a straggler: its compute takes `slowdown` times as long
            time.sleep((self.spec.slowdown - 1) * (time.perf_counter() - started))
        try:
            lags = self.push(step_id, versions)
        except RuntimeError as error:
            return {"error": f"push failed: {error}"}
        return {"loss": float(loss.detach()) * len(y), "correct": int((logits.argmax(-1) == y).sum()),
                "examples": len(y), "lag": max((lag for lag in lags if lag is not None), default=0),
                "duplicate": all(lag is None for lag in lags),
                "seconds": time.perf_counter() - started}

    def pull(self) -> dict[str, int]:
        futures = {name: rpc.rpc_async(name, server.pull, timeout=self.spec.rpc_timeout_s)
                   for name in self.spec.placement}
        versions = {}
        with torch.no_grad():
            for name, future in futures.items():
                versions[name], tensors = future.wait()
                for key, value in tensors.items():
                    self.params[key].copy_(value)
        return versions

    def push(self, step_id: int, versions: dict[str, int]) -> list[int | None]:
        futures = []
        for name, keys in self.spec.placement.items():
            grads = {k: self.params[k].grad.detach() if self.params[k].grad is not None
                     else torch.zeros_like(self.params[k]) for k in keys}
            futures.append(rpc.rpc_async(name, server.push, args=(step_id, grads, versions[name]),
                                         timeout=self.spec.rpc_timeout_s))
        return [future.wait() for future in futures]


_WORKER: list[Worker] = []


def setup_worker(spec: WorkerSpec) -> int:
    """RPC target: build this process's worker (model + data); returns the process id."""

    _WORKER[:] = [Worker(spec)]
    return os.getpid()


def run_step(step_id: int, indices: torch.Tensor) -> dict:
    """RPC target: run one step on this process's worker."""
    return _WORKER[0].run_step(step_id, indices)
