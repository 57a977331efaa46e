"""The shared base of every multi-process strategy: process group, devices, collectives.

``torch.distributed`` (NCCL on GPUs, Gloo on CPUs) does the work; processes start through
:mod:`hpmodel.strategies.launch` (PyTorch's elastic launcher) or through ``torchrun``, in
which case a script using the strategy runs unchanged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable

import torch
import torch.distributed as dist

from hpmodel.kernel.errors import ConfigError, HpmodelError
from hpmodel.kernel.network import is_loopback, store_server
from hpmodel.strategies.base import Strategy
from hpmodel.strategies.devices import accelerator_count
from hpmodel.strategies.launch import LaunchSpec, in_launched_process, launch
from torch.distributed.elastic.multiprocessing.errors import record

CPU_PROCESSES_PER_CORE = 4  # beyond this, CPU processes only wait on each other
SINGLE_HOST_INTERFACES = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")  # where Gloo / NCCL listen

REDUCE_OPS = {"sum": dist.ReduceOp.SUM, "mean": dist.ReduceOp.SUM,
              "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}


@dataclass
class ProcessGroupConfig:
    """Options every multi-process strategy shares."""

    devices: int = 0  # processes per node; 0: every GPU, or 2 CPU processes without GPUs
    device: str = "auto"  # auto | cpu | cuda
    backend: str = "auto"  # auto | nccl | gloo
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str = ""  # "host:port" of node 0 when nnodes > 1
    max_restarts: int = 0
    rdzv_timeout_s: int = 60  # how long the processes wait for each other at the rendezvous
    timeout_s: int = 300  # collective timeout: a dead peer surfaces as an error, not a hang

    def validate(self) -> None:
        if self.devices < 0:
            raise ConfigError(f"strategy.devices = {self.devices} must be 0 (all) or more")
        if self.backend not in ("auto", "nccl", "gloo"):
            raise ConfigError(f"strategy.backend = '{self.backend}' is unknown: use auto, nccl or gloo")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"strategy.device = '{self.device}' is unknown: use auto, cpu or cuda")
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ConfigError("strategy.nnodes > 1 needs strategy.rdzv_endpoint = 'host:port' "
                              "(the address of node 0), or --rdzv-endpoint")
        if self.rdzv_timeout_s < 1 or self.timeout_s < 1:
            raise ConfigError(f"strategy.rdzv_timeout_s = {self.rdzv_timeout_s} and strategy.timeout_s = "
                              f"{self.timeout_s} must be at least 1 second")
        if not 0 <= self.node_rank < self.nnodes:
            raise ConfigError(f"strategy.node_rank = {self.node_rank} must be in [0, {self.nnodes})")


class ProcessGroupStrategy(Strategy):
    """A strategy with one process per device, joined in a ``torch.distributed`` group."""

    Config = ProcessGroupConfig

    # -- topology -------------------------------------------------------------------------
    @property
    def uses_cuda(self) -> bool:
        if self.config.device == "cpu" or self.config.backend == "gloo":
            return False
        return self.config.device == "cuda" or accelerator_count() > 0

    @property
    def backend(self) -> str:
        if self.config.backend != "auto":
            return self.config.backend
        return "nccl" if self.uses_cuda else "gloo"

    @property
    def local_world_size(self) -> int:
        if self.config.devices:
            return self.config.devices
        return accelerator_count() if self.uses_cuda else 2

    @property
    def rank(self) -> int:
        return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", 0))

    @property
    def world_size(self) -> int:
        if dist.is_initialized():
            return dist.get_world_size()
        return int(os.environ.get("WORLD_SIZE", self.local_world_size * self.config.nnodes))

    @property
    def local_rank(self) -> int:
        return int(os.environ.get("LOCAL_RANK", 0))

    @property
    def device(self) -> torch.device:
        if self.uses_cuda:
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    # -- processes ------------------------------------------------------------------------
    def check_devices(self) -> None:
        """Stop before any process starts when the devices asked for do not exist.

        Example::

            Mirrored(devices=64, device="cpu").check_devices()   # HpmodelError on a 2-core host
        """
        gpus = accelerator_count()
        cores = os.cpu_count() or 1
        if not self.uses_cuda and self.local_world_size > cores * CPU_PROCESSES_PER_CORE:
            raise HpmodelError(f"strategy.devices = {self.local_world_size} CPU processes on a host with "
                               f"{cores} core(s) would only wait on each other: ask for at most "
                               f"{cores * CPU_PROCESSES_PER_CORE} (--devices), or run on GPUs")
        if gpus == 0 and (self.backend == "nccl" or self.uses_cuda):
            asked = ("strategy.backend = 'nccl'" if self.config.backend == "nccl"
                     else f"strategy.device = '{self.config.device}'")
            raise HpmodelError(f"{asked} needs CUDA GPUs and this machine has none: use "
                               "strategy.device = 'cpu' and backend = 'auto' to run CPU processes (Gloo)")
        if self.uses_cuda and self.local_world_size > gpus:
            raise HpmodelError(f"strategy.devices = {self.local_world_size} but this machine has "
                               f"{gpus} GPU(s): ask for at most {gpus}, or set strategy.device = 'cpu'")

    def launch(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` in every process: spawned here, or in place under torchrun."""
        if dist.is_initialized():
            return fn(*args)
        if in_launched_process():
            return run_in_worker(self, fn, args)
        self.check_devices()
        spec = LaunchSpec(nproc_per_node=self.local_world_size, nnodes=self.config.nnodes,
                          node_rank=self.config.node_rank, rdzv_endpoint=self.config.rdzv_endpoint,
                          max_restarts=self.config.max_restarts, rdzv_timeout_s=self.config.rdzv_timeout_s)
        return launch(spec, run_in_worker, self, fn, args)

    def init_process_group(self) -> None:
        if dist.is_initialized():
            return
        if self.uses_cuda:
            torch.cuda.set_device(self.local_rank)
        else:  # share the cores between the processes of this host, as torchrun does
            local = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
        if is_loopback(os.environ["MASTER_ADDR"]):  # every peer is on this host: listen on lo only
            for name in SINGLE_HOST_INTERFACES:
                os.environ.setdefault(name, "lo")
        timeout = timedelta(seconds=self.config.timeout_s)
        self._store = attempt_store(timeout)  # kept until the group is destroyed (teardown)
        dist.init_process_group(self.backend, store=self._store, rank=int(os.environ["RANK"]),
                                world_size=int(os.environ["WORLD_SIZE"]), timeout=timeout,
                                device_id=self.device if self.uses_cuda else None)

    def ensure_process_group(self) -> None:
        """Join a process group before wrapping a model: one of a single process, in place,
        when ``setup`` is called without ``launch`` (a custom loop, one GPU), as
        tf.distribute's MirroredStrategy runs on one device.

        Example::

            model, opt = get_strategy("mirrored", devices=1, device="cuda").setup(model, opt)
        """
        if dist.is_initialized():
            return
        if self.world_size != 1:
            raise HpmodelError(f"strategy '{self.names[0]}' with {self.world_size} processes must "
                               "start them first: call strategy.launch(fn), or use Trainer.fit")
        if self.uses_cuda:
            torch.cuda.set_device(self.local_rank)
        dist.init_process_group(self.backend, store=dist.HashStore(), rank=0, world_size=1,
                                timeout=timedelta(seconds=self.config.timeout_s),
                                device_id=self.device if self.uses_cuda else None)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_store", None)  # a live store connection belongs to its process
        return state

    def teardown(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
        self._store = None  # the store client goes after the group that used it

    # -- collectives ----------------------------------------------------------------------
    def reduce(self, value: Any, op: str = "mean") -> torch.Tensor:
        if op not in REDUCE_OPS:
            raise ValueError(f"reduce op '{op}' is unknown: use mean, sum, max or min")
        comm_device = self.device if self.backend == "nccl" else torch.device("cpu")
        tensor = torch.as_tensor(value, dtype=torch.float64).detach().to(comm_device).clone()
        if dist.is_initialized():
            dist.all_reduce(tensor, op=REDUCE_OPS[op])
            if op == "mean":
                tensor /= dist.get_world_size()
        return tensor.cpu()

    def barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier()

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Send a picklable object from ``src`` to every process."""
        if not dist.is_initialized():
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]


def attempt_store(timeout: timedelta) -> dist.Store:
    """The launcher's key-value store, seen under a prefix unique to this restart attempt.

    The elastic agent keeps one store across restarts; without the prefix, a restarted
    Gloo group reads the addresses its dead predecessors published and waits forever for
    peers that no longer exist.
    """
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    hosts = rank == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
    if hosts and is_loopback(host):  # c10d's server alone would listen on every interface
        store = store_server(host, port, timeout=timeout, world_size=world_size, wait_for_workers=True)
    else:
        store = dist.TCPStore(host, port, world_size, is_master=hosts, timeout=timeout)
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"hpmodel/attempt-{attempt}", store)


def run_in_worker(strategy: ProcessGroupStrategy, fn: Callable[..., Any], args: tuple) -> Any:
    """The body of every launched process: join the group, run ``fn``, leave the group."""

    @record
    def body():
        strategy.init_process_group()
        # No teardown on an exception: it would drop the peers' connections before @record
        # has written this error, and a peer's "connection closed" would look like the cause.
        result = fn(*args)
        strategy.teardown()
        return result

    return body()
