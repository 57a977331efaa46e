"""Start the processes of a parameter-server cluster and join them in one RPC group.

``torch.distributed.rpc`` (TensorPipe) carries every call; c10d's ``TCPStore`` does the
rendezvous first (and RPC's own rendezvous reuses that store, so the coordinator listens
on one port, bound to ``ClusterSpec.listen``: loopback unless the user names another
address; TensorPipe listens on ``lo`` for a loopback cluster), because on torch 2.13 ``rpc.init_rpc`` waits without end for a peer
that never comes or an address nobody listens on (measured), while ``TCPStore`` has a
deadline: a missing process or a wrong address becomes one clear error in seconds.
``multiprocessing`` (spawn) starts the local processes; unlike
``torch.multiprocessing.start_processes`` it does not stop the siblings when one dies,
which is exactly what a parameter-server cluster must survive.

Names and ranks: ``coordinator`` is rank 0, ``server0..M-1`` ranks 1..M,
``worker0..N-1`` ranks M+1..M+N.

Example::

    spec = ClusterSpec(servers=1, workers=2, host="127.0.0.1", port=free_port())
    processes = start_local(spec, spec.names()[1:])
    join(spec, "coordinator", processes)      # every process is now in the RPC group
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
import warnings
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.distributed.rpc as rpc

from hpmodel.kernel.errors import HpmodelError
from hpmodel.kernel.network import free_port, is_loopback, store_server
import traceback
from urllib.parse import urlparse

STOP = threading.Event()  # set by the coordinator's stop call: this process may leave
STORE_SCHEME = "hpmodel-store"  # RPC's init_method: the store this process already joined
_STORES: dict[str, dist.Store] = {}  # address → this process's store (one cluster per process)


@dataclass
class ClusterSpec:
    """Who takes part and where they meet (``host:port`` is the coordinator's store)."""

    servers: int
    workers: int
    host: str = "127.0.0.1"
    port: int = 0
    interface: str = ""  # network interface TensorPipe listens on; "" = lo for loopback hosts
    listen: str = "127.0.0.1"  # address the coordinator's store binds; "" = every interface
    connect_timeout_s: float = 20.0

    def names(self) -> list[str]:
        return (["coordinator"] + [f"server{i}" for i in range(self.servers)]
                + [f"worker{i}" for i in range(self.workers)])

    def rank_of(self, name: str) -> int:
        return self.names().index(name)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def start_local(spec: ClusterSpec, names: list[str]) -> dict[str, multiprocessing.Process]:
    """Start one spawned process per name, each hosting that role until told to stop."""
    context = multiprocessing.get_context("spawn")
    processes = {}
    for name in names:
        process = context.Process(target=host_role, args=(spec, name, os.getpid()), name=name,
                                  daemon=True)
        process.start()
        processes[name] = process
    return processes


def host_role(spec: ClusterSpec, name: str, parent_pid: int | None = None) -> None:
    """The body of a server or worker process: join, serve RPC calls until stopped, leave."""
    torch.set_num_threads(1)  # processes share the host's cores, as torchrun arranges
    join(spec, name)
    # Parent gone (local cluster) means nobody will ever send the stop call.
    while not STOP.wait(0.5):
        if parent_pid is not None and os.getppid() != parent_pid:
            break
    time.sleep(0.1)  # let the reply to the stop call leave before the agent closes
    rpc.shutdown(graceful=False)


def stop() -> bool:
    """RPC target: let this process leave the group."""
    STOP.set()
    return True


def join(spec: ClusterSpec, name: str, processes: dict | None = None) -> None:
    """Meet the others at the coordinator's store (with a deadline), then start RPC."""
    interface = spec.interface or ("lo" if is_loopback(spec.host) else "")
    if interface:
        os.environ.setdefault("TP_SOCKET_IFNAME", interface)
    timeout = timedelta(seconds=spec.connect_timeout_s)
    if name == "coordinator":
        store = coordinator_store(spec, timeout)
        wait_for_members(store, spec, processes or {})
    else:
        try:
            store = dist.TCPStore(spec.host, spec.port, is_master=False, timeout=timeout)
            store.set(f"joined/{name}", "1")
        except (dist.DistError, RuntimeError) as error:
            raise HpmodelError(f"{name} cannot reach the coordinator at {spec.address} within "
                               f"{spec.connect_timeout_s:.0f} s ({str(error).splitlines()[0]}): check "
                               "strategy.coordinator_address and that the coordinator runs") from None
    _STORES[spec.address] = store
    options = rpc.TensorPipeRpcBackendOptions(init_method=f"{STORE_SCHEME}://{spec.address}",
                                              rpc_timeout=spec.connect_timeout_s)
    with warnings.catch_warnings():  # torch's own RPC start-up uses an API it deprecates
        warnings.filterwarnings("ignore", message="You are using a Backend", category=UserWarning)
        rpc.init_rpc(name, rank=spec.rank_of(name), world_size=len(spec.names()),
                     rpc_backend_options=options)


def coordinator_store(spec: ClusterSpec, timeout: timedelta) -> dist.Store:
    """The cluster's store, served on ``spec.listen`` only (c10d alone would listen everywhere)."""
    if spec.listen:
        return store_server(spec.listen, spec.port, timeout=timeout)
    return dist.TCPStore(spec.host, spec.port, is_master=True, wait_for_workers=False, timeout=timeout)


def _store_rendezvous(url: str, **_kwargs):
    """RPC's rendezvous on the store this process joined: no second listening port."""
    parsed = urlparse(url)
    query = dict(pair.split("=", 1) for pair in parsed.query.split("&") if "=" in pair)
    yield _STORES[parsed.netloc], int(query["rank"]), int(query["world_size"])


try:
    dist.register_rendezvous_handler(STORE_SCHEME, _store_rendezvous)
except RuntimeError:  # registered already (this module loaded twice)
    pass


def wait_for_members(store, spec: ClusterSpec, processes: dict) -> None:
    """Wait until every server and worker has joined; a dead or absent one stops the run."""
    deadline = time.monotonic() + spec.connect_timeout_s
    missing = spec.names()[1:]
    while missing:
        for name, process in processes.items():
            if name in missing and process.exitcode is not None:
                raise HpmodelError(f"parameter-server process '{name}' exited with code "
                                   f"{process.exitcode} before joining: see its error above")
        if time.monotonic() > deadline:
            raise HpmodelError(f"{', '.join(missing)} did not join the coordinator at {spec.address} "
                               f"within {spec.connect_timeout_s:.0f} s: start them (strategy.role = "
                               "'server' / 'worker' with this coordinator_address) or check the address")
        if store.check([f"joined/{missing[0]}"]):  # non-blocking: wait() would log every timeout
            missing.pop(0)
        else:
            time.sleep(0.05)


def shutdown(processes: dict[str, multiprocessing.Process], alive: list[str]) -> None:
    """Tell the live processes to stop, leave RPC without the all-peer barrier, reap children.

    ``graceful=False`` because a graceful shutdown waits for every peer, dead ones too.
    """
    futures = []
    for name in alive:
        try:
            futures.append(rpc.rpc_async(name, stop, timeout=5))
        except RuntimeError:
            pass
    for future in futures:
        try:
            future.wait()
        except RuntimeError:
            pass
    rpc.shutdown(graceful=False)
    for process in processes.values():
        process.join(timeout=10)
        if process.exitcode is None:
            process.terminate()
            process.join(timeout=5)


def run_in_fresh_process(fn, *args):
    """``fn(*args)`` in a new spawned process; its result, or its HpmodelError raised here."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_report_to, args=(sender, fn, args), name="coordinator")
    # TensorPipe logs a warning for every peer that leaves, dead or done: keep errors only
    # (the cluster's processes inherit the environment; this process's own is left as it was).
    previous = os.environ.get("TORCH_CPP_LOG_LEVEL")
    os.environ["TORCH_CPP_LOG_LEVEL"] = previous or "ERROR"
    try:
        process.start()
    finally:
        if previous is None:
            del os.environ["TORCH_CPP_LOG_LEVEL"]
    sender.close()
    try:
        kind, value = receiver.recv()
    except EOFError:  # died without a word (killed)
        kind, value = "crash", f"the coordinator process ended with exit code {process.exitcode}"
    finally:
        process.join(timeout=30)
    if kind == "ok":
        return value
    if kind == "user":
        raise HpmodelError(value)
    raise RuntimeError(value)


def _report_to(sender, fn, args) -> None:
    try:
        message = ("ok", fn(*args))
    except HpmodelError as error:
        message = ("user", str(error))
    except BaseException:  # noqa: BLE001 - the parent re-raises it with the traceback text
        message = ("crash", traceback.format_exc())
    sender.send(message)
    sender.close()
