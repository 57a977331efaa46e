"""Start one process per device through PyTorch's elastic launcher (torchrun's engine).

``torch.distributed.launcher.api.elastic_launch`` does the heavy lifting: it spawns the
workers, runs the c10d rendezvous, restarts the group up to ``max_restarts`` times and
stops every worker within seconds when one fails. This module chooses robust defaults
and keeps a single-host run on loopback:

- the rendezvous store is served here on a socket bound to ``127.0.0.1`` (c10d's own
  store would listen on every interface); the launcher joins it as a client;
- workers host their own store on the loopback ``MASTER_ADDR`` (instead of the agent's
  shared one, which also listens everywhere), see :func:`.process_group.attempt_store`;
- an explicit non-loopback ``rdzv_endpoint`` (many hosts) is served by torch as before.

Failures become one readable line in the parent: the failing rank's own message, or the
signal that killed it. Expected events (a restart) print one ``hpmodel:`` line each
while torch elastic's loggers are kept quiet for the duration of the launch.

Example::

    spec = LaunchSpec(nproc_per_node=2, max_restarts=1)
    result = launch(spec, work, "argument")      # work("argument") in 2 processes
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator

from hpmodel.kernel.errors import HpmodelError
from hpmodel.kernel.network import bound_listener, free_port, is_loopback, split_endpoint, store_server
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.elastic.rendezvous.api import RendezvousError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

LAUNCHED_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
ELASTIC_LOGGERS = ("torch.distributed.elastic", "torch.multiprocessing.spawn")  # the launcher's own
RESTART_LOGGER = "torch.distributed.elastic.agent.server.api"  # logs a restart at INFO
NO_SHARED_STORE = "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"  # torch's switch: workers host the store
PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "remote worker crashing",
             "NCCL communicator was aborted")  # errors of a rank whose peer died first
EMPTY_MESSAGES = ("", "<NONE>")  # torch elastic's text when a worker left no error file

__all__ = ["LaunchSpec", "WorkerFailedError", "launch", "in_launched_process", "free_port",
           "describe_failure"]


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


def default_run_id(spec: LaunchSpec) -> str:
    """A fresh id for one host; for many hosts an id every node derives alike from the endpoint."""
    if spec.nnodes > 1 and spec.rdzv_endpoint:
        return "hpmodel-" + "".join(c if c.isalnum() else "-" for c in spec.rdzv_endpoint)
    return uuid.uuid4().hex[:12]


def launch(spec: LaunchSpec, entrypoint: Callable[..., Any], *args: Any) -> Any:
    """Run ``entrypoint(*args)`` in ``spec.nproc_per_node`` processes; return this node's first rank's result.

    Example::

        launch(LaunchSpec(nproc_per_node=2), print, "hello")   # prints twice
    """
    endpoint = spec.rdzv_endpoint or f"127.0.0.1:{free_port()}"
    host, port = split_endpoint(endpoint)
    hosts_store = spec.nnodes == 1 or not spec.rdzv_endpoint or spec.node_rank == 0
    loopback = is_loopback(host)
    if hosts_store and not loopback:
        check_own_address(host, endpoint)
    if not hosts_store:  # torch's client would log a C++ stack per failed attempt
        wait_for_endpoint(host, port, spec.rdzv_timeout_s)
    with contextlib.ExitStack() as stack:
        stack.enter_context(elastic_events(spec.max_restarts))
        if loopback:
            stack.enter_context(environment(NO_SHARED_STORE, "1"))
        # Served (on loopback) until launch returns: the agents meet in it.
        rendezvous_store = store_server(host, port, timeout=timedelta(seconds=max(spec.rdzv_timeout_s, 60)),
                                        multi_tenant=True) if loopback and hosts_store else None
        config = LaunchConfig(
            min_nodes=spec.nnodes, max_nodes=spec.nnodes, nproc_per_node=spec.nproc_per_node,
            run_id=spec.run_id or default_run_id(spec), rdzv_backend="c10d", rdzv_endpoint=endpoint,
            rdzv_configs={"timeout": spec.rdzv_timeout_s, "read_timeout": spec.rdzv_timeout_s,
                          "is_host": hosts_store and not loopback},
            max_restarts=spec.max_restarts, monitor_interval=0.1, start_method=spec.start_method,
            local_addr=host if loopback else None)
        try:
            results = elastic_launch(config, entrypoint)(*args)
        except ChildFailedError as error:
            raise WorkerFailedError(describe_failure(error, spec.max_restarts)) from None
        except (RuntimeError, RendezvousError) as error:  # wrong address, peer missing
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise HpmodelError(f"processes could not meet at rendezvous endpoint {endpoint} ({reason}): "
                               "check --rdzv-endpoint and that every node is started") from None
        del rendezvous_store  # stops serving here, after every agent has left
    return results[min(results)] if results else None  # this node's first rank (global rank 0 on node 0)


def check_own_address(host: str, endpoint: str) -> None:
    """Node 0 serves the rendezvous: its endpoint must name this machine (else a 60 s wait, then a stack)."""
    try:
        bound_listener(host, 0).close()
    except HpmodelError:
        raise HpmodelError(f"--rdzv-endpoint {endpoint} does not name this machine, and node rank 0 "
                           "serves the rendezvous there: give node 0's own reachable address (or "
                           "127.0.0.1 when every node runs on this machine)") from None


def wait_for_endpoint(host: str, port: int, timeout_s: float) -> None:
    """Wait until something accepts connections at ``host:port``; one line if nothing does in time."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host, port), timeout=min(5.0, timeout_s)).close()
            return
        except OSError as error:
            if time.monotonic() >= deadline:
                raise HpmodelError(f"nothing answers at rendezvous endpoint {host}:{port} within "
                                   f"{timeout_s:.0f} s ({error.strerror or error}): start node rank 0 "
                                   "(it serves the rendezvous) or fix --rdzv-endpoint") from None
            time.sleep(0.2)


@contextlib.contextmanager
def environment(name: str, value: str) -> Iterator[None]:
    """``os.environ[name] = value`` while the block runs (torch elastic reads it there)."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


class ElasticEvents(logging.Handler):
    """Turns torch elastic's log records into one ``hpmodel:`` line per expected event."""

    def __init__(self, max_restarts: int):
        super().__init__(logging.INFO)
        self.max_restarts, self.last_failure = max_restarts, ""

    def emit(self, record: logging.LogRecord) -> None:
        message, args = str(record.msg), record.args if isinstance(record.args, tuple) else ()
        if message.startswith("failed (exitcode") and len(args) >= 2:
            self.last_failure = exit_text(int(args[0]), f"local rank {args[1]}")
        elif "will restart worker group" in message and len(args) >= 4:
            left = int(args[2])
            print(f"hpmodel: {self.last_failure or 'a worker failed'}; restarting the group "
                  f"(restart {self.max_restarts - left + 1} of {self.max_restarts})",
                  file=sys.stderr, flush=True)
            self.last_failure = ""


@contextlib.contextmanager
def elastic_events(max_restarts: int) -> Iterator[None]:
    """While the block runs, the launcher's loggers speak through :class:`ElasticEvents` only."""
    loggers = [logging.getLogger(name) for name in (*ELASTIC_LOGGERS, RESTART_LOGGER)]
    saved = [(logger.level, logger.propagate, list(logger.handlers)) for logger in loggers]
    handler = ElasticEvents(max_restarts)
    for logger in loggers[:-1]:
        logger.setLevel(logging.INFO)
        logger.propagate = False
        logger.handlers = [handler]
    loggers[-1].setLevel(logging.INFO)  # its records reach the handler through its parent
    try:
        yield
    finally:
        for logger, (level, propagate, handlers) in zip(loggers, saved):
            logger.level, logger.propagate, logger.handlers = level, propagate, handlers


def exit_text(exitcode: int, who: str) -> str:
    """``who`` and how it ended: ``worker rank 1 was killed by SIGKILL (exit -9)``."""
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"worker {who} was killed by {name} (exit {exitcode})"
    return f"worker {who} exited with code {exitcode}"


def describe_failure(error: ChildFailedError, max_restarts: int = 0) -> str:
    """One line: which rank failed first and why (its own message, or the signal that killed it)."""
    # The first to fail is the cause, unless it only saw a peer vanish (a rank that died first).
    rank, failure = min(error.failures.items(), key=lambda item: (
        any(sign in worker_message(item[1]) for sign in PEER_LOST), item[1].timestamp))
    message = worker_message(failure)
    for prefix in ("HpmodelError: ", "ConfigError: ", "WorkerFailedError: "):
        if message.startswith(prefix):
            return message[len(prefix):]
    if failure.exitcode < 0 or not message:
        restarts = (f" and --max-restarts {max_restarts} are used up: raise --max-restarts or find "
                    "why it died" if failure.exitcode < 0 else ": see its output above")
        return exit_text(failure.exitcode, f"rank {rank}") + restarts
    return f"worker rank {rank} failed: {message}{where(failure)}"


def worker_message(failure) -> str:
    """The first line of the exception a worker recorded, or "" when it left none."""
    data = failure.error_file_data if isinstance(failure.error_file_data, dict) else {}
    message = data.get("message", "")
    if isinstance(message, dict):
        message = message.get("message", "")
    message = str(message or "").strip()
    if message in EMPTY_MESSAGES or message.startswith(("To enable traceback", "Signal ")):
        return ""
    return message.splitlines()[0]


def where(failure) -> str:
    """`` (at file.py:LINE)``: the innermost frame of a worker's unexpected exception."""
    data = failure.error_file_data if isinstance(failure.error_file_data, dict) else {}
    message = data.get("message")
    trace = message.get("extraInfo", {}).get("py_callstack", "") if isinstance(message, dict) else ""
    frames = [line.strip() for line in str(trace).splitlines() if line.strip().startswith('File "')]
    if not frames:
        return ""
    path, _, rest = frames[-1][6:].partition('", line ')
    return f" (at {os.path.basename(path)}:{rest.split(',')[0]})"
