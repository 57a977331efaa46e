"""Start one process per device through PyTorch's elastic launcher (torchrun's engine).

``torch.distributed.launcher.api.elastic_launch`` does the heavy lifting: it spawns the
workers, runs the c10d rendezvous, restarts the group up to ``max_restarts`` times and
stops every worker within seconds when one fails. This module only chooses robust
defaults (an explicit c10d endpoint on loopback, which reconnects reliably after a
restart where a standalone rendezvous often does not on Gloo) and turns a child's
failure into one readable error in the parent.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from hpmodel.kernel.errors import HpmodelError
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

LAUNCHED_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class WorkerFailedError(HpmodelError):
    """A worker process failed; the message is that worker's error."""


@dataclass
class LaunchSpec:
    """How many processes, on how many nodes, meeting where."""

    nproc_per_node: int
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str = ""  # "host:port"; empty: a free port on loopback
    max_restarts: int = 0
    rdzv_timeout_s: int = 60
    run_id: str = ""
    start_method: str = "spawn"  # "fork" starts faster (no re-import) but only before CUDA is used


def in_launched_process() -> bool:
    """True inside a process started by torchrun or by :func:`launch`."""
    return all(name in os.environ for name in LAUNCHED_ENV)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def default_run_id(spec: LaunchSpec) -> str:
    """A fresh id for one host; for many hosts an id every node derives alike from the endpoint."""
    if spec.nnodes > 1 and spec.rdzv_endpoint:
        return "hpmodel-" + "".join(c if c.isalnum() else "-" for c in spec.rdzv_endpoint)
    return uuid.uuid4().hex[:12]


def launch(spec: LaunchSpec, entrypoint: Callable[..., Any], *args: Any) -> Any:
    """Run ``entrypoint(*args)`` in ``spec.nproc_per_node`` processes; return this node's first rank's result."""

    logging.getLogger("torch.distributed.elastic").setLevel(logging.ERROR)
    endpoint = spec.rdzv_endpoint or f"127.0.0.1:{free_port()}"
    rdzv_configs: dict[str, Any] = {"timeout": spec.rdzv_timeout_s}
    if spec.nnodes == 1 or not spec.rdzv_endpoint:
        rdzv_configs["is_host"] = True
    else:
        rdzv_configs["is_host"] = spec.node_rank == 0
    config = LaunchConfig(
        min_nodes=spec.nnodes, max_nodes=spec.nnodes, nproc_per_node=spec.nproc_per_node,
        run_id=spec.run_id or default_run_id(spec), rdzv_backend="c10d",
        rdzv_endpoint=endpoint, rdzv_configs=rdzv_configs, max_restarts=spec.max_restarts,
        monitor_interval=0.1, start_method=spec.start_method, local_addr="127.0.0.1"
        if endpoint.startswith(("127.", "localhost")) else None,
    )
    try:
        results = elastic_launch(config, entrypoint)(*args)
    except ChildFailedError as error:
        raise WorkerFailedError(describe_failure(error)) from None
    except RuntimeError as error:  # rendezvous could not form: wrong address, peer missing
        raise HpmodelError(f"processes could not meet at rendezvous endpoint {endpoint} "
                           f"({error}): check --rdzv-endpoint and that every node is started") from None
    return results[min(results)] if results else None  # this node's first rank (global rank 0 on node 0)


def describe_failure(error) -> str:
    """One line: which rank failed first and with what message."""
    rank, failure = min(error.failures.items(), key=lambda item: item[1].timestamp)
    message = str(failure.message or "").strip()
    if isinstance(failure.error_file_data, dict) and failure.error_file_data.get("message"):
        data = failure.error_file_data["message"]
        message = data.get("message", message) if isinstance(data, dict) else str(data)
    for prefix in ("HpmodelError: ", "ConfigError: ", "WorkerFailedError: "):
        if message.startswith(prefix):
            return message[len(prefix):]
    if not message or message.startswith("To enable traceback") or message.startswith("Signal"):
        message = f"exit code {failure.exitcode}" + (f" ({message})" if message else "")
    return f"worker rank {rank} failed: {message.splitlines()[0] if message else 'no message'}"
