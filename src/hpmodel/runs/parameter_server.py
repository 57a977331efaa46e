"""One parameter-server run from a config: start the cluster, set up servers and workers,
let the coordinator run the steps, then score and save the final variables.

The pieces doing the work are :mod:`.cluster` (processes + RPC), :mod:`.server`,
:mod:`.worker` and :mod:`.coordinator`; this module wires them to a config and writes
the run directory through the toolkit's run-directory helpers (imported lazily, since
``strategies/`` does not import ``train/`` at module level).

Example::

    summary = train(load_config("digits.toml"), "runs/ps", ParameterServerConfig(workers=2))
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed.rpc as rpc

from hpmodel.parameter_server import cluster, server, worker
from hpmodel.parameter_server.config import ParameterServerConfig
from hpmodel.parameter_server.coordinator import Coordinator
from hpmodel.train.batches import to_batches
from torch.distributed.rpc.api import _is_current_rpc_agent_set
from hpmodel.datasets import load_splits
from hpmodel.runs.common import ModelFactory
from hpmodel.train.backup import config_fingerprint
from hpmodel.train.optim import optimizer_factory, schedule_factory
from hpmodel.kernel.errors import HpmodelError
from hpmodel.reporting.console import print_rows
from hpmodel.kernel.files import save_weights, write_json
from hpmodel.kernel.network import free_port, is_loopback, split_endpoint

DEFAULT_BIND = ParameterServerConfig.bind_address  # the dataclass field's default
FINGERPRINTED = ("model", "data", "optimizer", "schedule", "seed")  # config sections a backup must match


class TrainData:
    """A picklable ``() -> (x, y)``: the training split, loaded inside the worker process."""

    def __init__(self, data_config, seed: int):
        self.data_config, self.seed = data_config, seed

    def __call__(self):
        train = load_splits(self.data_config, self.seed).train
        return train.x, train.y


def place_variables(sizes: dict[str, int], servers: list[str]) -> dict[str, list[str]]:
    """Greedy bin packing: largest variable first, onto the server holding the fewest elements.

    Example::

        place_variables({"w": 100, "b": 10, "v": 90}, ["server0", "server1"])
        # {"server0": ["w"], "server1": ["v", "b"]}
    """
    load = {name: 0 for name in servers}
    placement: dict[str, list[str]] = {name: [] for name in servers}
    for key, size in sorted(sizes.items(), key=lambda item: (-item[1], item[0])):
        target = min(servers, key=lambda name: (load[name], servers.index(name)))
        placement[target].append(key)
        load[target] += size
    return placement


def plan_steps(num_examples: int, batch_size: int, epochs: int, seed: int,
               max_steps: int = 0) -> list[tuple[int, torch.Tensor]]:
    """Every step of the run as (step id, example indices): a fresh shuffle per epoch, the
    same order the Trainer's batches have (one engine, :func:`hpmodel.train.batches.to_batches`)."""
    batches = to_batches(torch.arange(num_examples), batch_size, shuffle=True, seed=seed)
    steps = []
    for epoch in range(epochs):
        batches.set_epoch(epoch)
        steps += [(len(steps) + i, index) for i, index in enumerate(batches)]
        if max_steps and len(steps) >= max_steps:
            break
    return steps[:max_steps] if max_steps else steps


def cluster_spec(config) -> cluster.ClusterSpec:
    """Where the cluster meets: ``bind_address`` (loopback by default) and a free port, or the
    explicit ``coordinator_address``; the coordinator's store listens on loopback unless an
    address beyond it is named (a non-loopback coordinator_address, or bind_address)."""
    if config.coordinator_address:
        host, port = split_endpoint(config.coordinator_address)
        explicit_bind = config.bind_address != DEFAULT_BIND
        listen = host if is_loopback(host) else (config.bind_address if explicit_bind else "")
    else:
        host, port = config.bind_address, free_port(config.bind_address)
        listen = config.bind_address
    return cluster.ClusterSpec(servers=config.servers, workers=config.workers, host=host, port=port,
                               interface=config.interface, connect_timeout_s=config.connect_timeout_s,
                               listen=listen)


def train(cfg, out_dir, config) -> dict[str, Any]:
    """The whole run (see the module docstring); returns ``summary.json``'s content."""
    spec = cluster_spec(config)
    if config.role in ("server", "worker"):  # one part of a many-host cluster
        cluster.host_role(spec, f"{config.role}{config.index}")
        return {"role": f"{config.role}{config.index}"}
    # RPC can be started once per process (its store prefix counts up per process, so a
    # second init_rpc never meets fresh peers): the coordinator gets a fresh process per run.
    return cluster.run_in_fresh_process(coordinate, cfg, str(out_dir), config, spec)


def coordinate(cfg, out_dir: str, config, spec) -> dict[str, Any]:
    """The coordinator process: start the local servers and workers, run, write the run directory."""
    torch.set_num_threads(1)
    out_dir = Path(out_dir)
    started = time.perf_counter()
    names = spec.names()
    processes = cluster.start_local(spec, names[1:]) if config.role == "all" else {}
    alive: list[str] = []
    try:
        cluster.join(spec, "coordinator", processes)
        alive = names[1:]
        summary = run_cluster(cfg, out_dir, config, spec, processes)
        alive = [n for n in alive if n not in summary["workers_lost"]]
    finally:
        if alive or rpc_initialized():
            cluster.shutdown(processes, alive)
        for process in processes.values():  # the rendezvous failed: no RPC to stop them with
            if process.exitcode is None:
                process.terminate()
    summary["total_seconds"] = time.perf_counter() - started
    write_outputs(cfg, out_dir, summary)
    return summary


def rpc_initialized() -> bool:
    return _is_current_rpc_agent_set()


def run_cluster(cfg, out_dir: Path, config, spec, processes) -> dict[str, Any]:
    """Set up servers and workers over RPC, run the steps, pull the final variables."""

    splits = load_splits(cfg.data, cfg.seed)
    factory = ModelFactory(cfg, splits.input_shape, splits.num_classes)
    torch.manual_seed(cfg.seed)  # the same initial variables as a OneDevice run with this seed
    initial = {k: v.detach().clone() for k, v in factory().named_parameters()}
    servers, workers = spec.names()[1:1 + spec.servers], spec.names()[1 + spec.servers:]
    placement = place_variables({k: v.numel() for k, v in initial.items()}, servers)
    steps = plan_steps(len(splits.train), cfg.data.batch_size, cfg.train.epochs, cfg.seed,
                       cfg.train.max_steps)
    applied = set_up_roles(cfg, out_dir, config, initial, placement, factory, workers, len(steps))

    pids = {name: process.pid for name, process in processes.items()}
    write_json(out_dir / "ps-cluster.json", {"pids": pids, "address": spec.address,
                                              "placement": placement})
    remaining = [step for step in steps if step[0] not in applied]
    coordinator = Coordinator(workers, servers, mode=config.mode, staleness_bound=config.staleness_bound,
                              rpc_timeout_s=config.rpc_timeout_s, log_every_steps=cfg.train.log_every_steps)
    metrics = MetricsFile(out_dir / "metrics.jsonl")
    report = coordinator.run(remaining, log=metrics)
    coordinator.call_servers(server.backup)
    final = dict(factory().state_dict())  # buffers stay as built: the servers hold parameters only
    for _version, tensors in coordinator.call_servers(server.pull):
        final.update(tensors)
    rows = report.pop("rows")
    metrics.rows(rows)
    return {**report, **evaluate(factory, final, splits.test), "per_worker": rows,
            "resumed_steps": len(steps) - len(remaining), "strategy": f"parameter-server ({config.mode})",
            "mode": config.mode, "workers": config.workers, "servers": config.servers,
            "epochs": cfg.train.epochs,
            "staleness_bound": config.staleness_bound if config.mode == "bounded" else None,
            "parameters": sum(v.numel() for v in initial.values()), "_state_dict": final}


def set_up_roles(cfg, out_dir: Path, config, initial, placement, factory, workers, num_steps) -> set[int]:
    """Build every server's shard and every worker's model and data, all at once (each
    process imports and loads on its own); returns the step ids every server already has."""

    updates = num_steps if config.mode != "sync" else math.ceil(num_steps / config.workers)
    backup_dir = config.backup_dir or cfg.backup.dir or str(out_dir / "ps-backup")
    futures = []
    for index, name in enumerate(placement):
        server_spec = server.ServerSpec(
            index=index, tensors={k: initial[k] for k in placement[name]},
            optimizer_factory=optimizer_factory(cfg.optimizer), schedule_factory=schedule_factory(cfg.schedule),
            total_steps=updates, mode=config.mode, backup_dir=backup_dir,
            backup_every_steps=config.backup_every_steps, fingerprint=backup_fingerprint(cfg, config))
        futures.append(rpc.rpc_async(name, server.setup_server, args=(server_spec,), timeout=120))
    for index, name in enumerate(workers):
        slowdown = float(config.worker_slowdown[index]) if index < len(config.worker_slowdown) else 1.0
        worker_spec = worker.WorkerSpec(name=name, model_factory=factory,
                                        data_factory=TrainData(cfg.data, cfg.seed), placement=placement,
                                        rpc_timeout_s=config.rpc_timeout_s, slowdown=slowdown)
        futures.append(rpc.rpc_async(name, worker.setup_worker, args=(worker_spec,), timeout=120))
    answers = [future.wait() for future in futures]
    for answer in answers[:len(placement)]:
        if answer[2]:
            raise HpmodelError(answer[2])
    # a step counts as done when every server has it (the others drop its second update)
    return set.intersection(*(set(done) for _, done, _ in answers[:len(placement)]))


def backup_fingerprint(cfg, config) -> dict[str, Any]:
    """What a server backup must have been trained from to resume: the run's model, data,
    optimizer, schedule and seed (as BackupAndRestore's fingerprint has them) and the mode.

    Example::

        backup_fingerprint(load_config("digits.toml"), ParameterServerConfig())["model.width"]
    """
    flat = config_fingerprint(cfg)
    kept = {key: value for key, value in flat.items() if key.startswith(FINGERPRINTED)}
    return {**kept, "strategy.mode": config.mode}


def evaluate(factory, state_dict: dict[str, torch.Tensor], split, batch_size: int = 256) -> dict:
    """Test loss and accuracy of the final variables, in this process."""
    model = factory()
    model.load_state_dict(state_dict, strict=False)
    model.eval()
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(split), batch_size):
            x, y = split.x[start:start + batch_size], split.y[start:start + batch_size]
            logits = model(x)
            loss_sum += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(-1) == y).sum())
    count = max(len(split), 1)
    return {"test_accuracy": correct / count, "test_loss": loss_sum / count, "test_examples": len(split)}


class MetricsFile:
    """Appends one JSON object per line to ``metrics.jsonl`` (the coordinator's log)."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self, record: dict) -> None:
        with self.path.open("a") as out:
            out.write(json.dumps(record) + "\n")

    def rows(self, rows: list[dict]) -> None:
        for row in rows:
            self({"kind": "worker", **row})


def write_outputs(cfg, out_dir: Path, summary: dict) -> None:
    """model.safetensors, summary.json, and the per-worker table on the terminal."""

    state_dict = summary.pop("_state_dict")
    save_weights(out_dir / "model.safetensors", state_dict, metadata={"model": cfg.model.name, "hpmodel": "1"})
    write_json(out_dir / "summary.json", summary)
    print_rows(summary["per_worker"], title="parameter-server workers")
