"""The parameter server's options: asynchronous data parallelism that keeps training when a worker dies.

tf.distribute's ParameterServerStrategy on PyTorch's own engine, ``torch.distributed.rpc``
(TensorPipe): M servers hold the variables (spread by size), N workers pull them, compute
gradients on their own batches and push them back, and a coordinator schedules the steps
and re-runs those of a dead worker. See :mod:`.coordinator` for the modes (async,
bounded staleness, sync) and :mod:`.cluster` for how processes meet.

The Trainer's synchronous step does not fit asynchronous updates, so the parameter server
is not a :class:`~hpmodel.strategies.Strategy` but its own runner with its own loop: the
application layer (:mod:`hpmodel.runs.parameter_server`) runs it when
``strategy.name = "parameter-server"``. This module holds its options.

Example::

    hpmodel train digits.toml --strategy parameter-server --workers 2 --servers 1 --out runs/ps

    cfg = load_config("digits.toml", ["strategy.name='parameter-server'", "strategy.workers=2"])
    summary = hm.runs.train_from_config(cfg, "runs/ps")
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hpmodel.kernel.errors import ConfigError

NAMES = ("parameter-server", "parameter_server", "ps")  # strategy.name values that select it
MODES = ("async", "bounded", "sync")
ROLES = ("all", "coordinator", "server", "worker")


@dataclass
class ParameterServerConfig:
    """Options of the parameter-server run (the ``[strategy]`` table).

    Example::

        ParameterServerConfig(workers=2, servers=1, mode="bounded").validate()
    """

    workers: int = 2
    servers: int = 1
    mode: str = "async"  # async | bounded | sync
    staleness_bound: int = 2  # bounded: most steps a worker may run ahead of the slowest
    role: str = "all"  # all: whole cluster on this host; coordinator | server | worker: one part
    index: int = 0  # which server / worker this process is (role server or worker)
    coordinator_address: str = ""  # "host:port" of the coordinator; "" = bind_address + a free port
    bind_address: str = "127.0.0.1"  # where the coordinator listens (loopback unless told)
    interface: str = ""  # network interface for TensorPipe; "" = lo on loopback
    connect_timeout_s: float = 20.0  # a missing process or wrong address fails within this
    rpc_timeout_s: float = 30.0  # a step with no answer after this counts its worker as dead
    worker_slowdown: list = field(default_factory=list)  # per worker, e.g. [1, 3]: worker1 3× slower
    backup_dir: str = ""  # "" = backup.dir, else OUT/ps-backup
    backup_every_steps: int = 100  # server versions between backups (0: only at the end)
    device: str = "cpu"  # workers compute on the CPU; RPC moves CPU tensors

    def validate(self) -> None:
        if self.workers < 1 or self.servers < 1:
            raise ConfigError(f"strategy.workers = {self.workers} and strategy.servers = {self.servers} "
                              "must both be at least 1")
        if self.mode not in MODES:
            raise ConfigError(f"strategy.mode = '{self.mode}' is unknown: use {', '.join(MODES)}")
        if self.role not in ROLES:
            raise ConfigError(f"strategy.role = '{self.role}' is unknown: use {', '.join(ROLES)}")
        if self.staleness_bound < 0:
            raise ConfigError(f"strategy.staleness_bound = {self.staleness_bound} must be 0 or more")
        if self.role in ("server", "worker") and not self.coordinator_address:
            raise ConfigError(f"strategy.role = '{self.role}' needs strategy.coordinator_address = "
                              "'host:port' (where the coordinator listens)")
        limit = self.servers if self.role == "server" else self.workers
        if self.role in ("server", "worker") and not 0 <= self.index < limit:
            raise ConfigError(f"strategy.index = {self.index} must be in [0, {limit}) for role {self.role}")
        if self.device != "cpu":
            raise ConfigError("strategy.device for parameter-server must be 'cpu' (RPC moves CPU "
                              "tensors); use 'mirrored' or 'sharded' to train on GPUs")
        if self.connect_timeout_s <= 0 or self.rpc_timeout_s <= 0:
            raise ConfigError("strategy.connect_timeout_s and strategy.rpc_timeout_s must be positive")
        if any(not isinstance(s, (int, float)) or s < 1 for s in self.worker_slowdown):
            raise ConfigError("strategy.worker_slowdown must list numbers ≥ 1, one per worker")
        if self.coordinator_address and ":" not in self.coordinator_address:
            raise ConfigError(f"strategy.coordinator_address = '{self.coordinator_address}' must be "
                              "'host:port'")
