"""Where a run listens: loopback for one host, an address only when the user names one.

c10d's ``TCPStore`` does the serving. Its server listens on every interface (``*:PORT``)
whatever host it is given, unless it is handed a socket that is already bound
(``master_listen_fd``): this module binds that socket to the address asked for, so a
single-host run's store accepts connections from this machine only.

Example::

    store = store_server("127.0.0.1", 0, timeout=timedelta(seconds=30))
    store.port            # a free port, listening on 127.0.0.1 only
"""

from __future__ import annotations

import ipaddress
import socket
from datetime import timedelta

import torch.distributed as dist

from hpmodel.kernel.errors import HpmodelError

LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost: addresses no other machine can reach.

    Example::

        is_loopback("127.0.0.1"), is_loopback("10.0.0.5")   # (True, False)
    """
    host = host.strip("[]")
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_endpoint(endpoint: str, default_port: int = 29400) -> tuple[str, int]:
    """``"host:port"`` → (host, port); ``"[::1]:80"`` works too.

    Example::

        split_endpoint("127.0.0.1:29500")   # ("127.0.0.1", 29500)
    """
    host, sep, port = endpoint.rpartition(":")
    if not sep or not port.isdigit():
        return endpoint.strip("[]"), default_port
    return host.strip("[]"), int(port)


def bound_listener(host: str, port: int = 0, backlog: int = 512) -> socket.socket:
    """A TCP socket listening on ``host:port`` only; one line if this machine lacks the address.

    Example::

        with bound_listener("127.0.0.1") as sock:
            sock.getsockname()[1]   # the port the kernel chose
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, UnicodeError) as error:
        raise HpmodelError(f"cannot resolve the address '{host}' to listen on ({error}): use an "
                           "address of this machine, or 127.0.0.1 for a single-host run") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError as error:
        sock.close()
        raise HpmodelError(f"cannot listen on {host}:{port} ({error.strerror or error}): use an "
                           "address of this machine and a free port, or 127.0.0.1 for a single-host "
                           "run") from None
    return sock


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now on ``host`` (the kernel picks it)."""
    with bound_listener(host) as sock:
        return sock.getsockname()[1]


def store_server(host: str, port: int, *, timeout: timedelta, world_size: int | None = None,
                 wait_for_workers: bool = False, multi_tenant: bool = False) -> dist.TCPStore:
    """A ``TCPStore`` server listening on ``host:port`` only (port 0: a free one).

    Example::

        store = store_server("127.0.0.1", 0, timeout=timedelta(seconds=30))
        dist.TCPStore("127.0.0.1", store.port, is_master=False).set("key", "value")
    """
    sock = bound_listener(host, port)
    port = sock.getsockname()[1]
    # The store owns the descriptor from here on (libuv closes it with the store).
    return dist.TCPStore(host, port, world_size, is_master=True, timeout=timeout,
                         wait_for_workers=wait_for_workers, multi_tenant=multi_tenant,
                         master_listen_fd=sock.detach())
