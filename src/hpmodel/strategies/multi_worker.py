"""MultiWorker: synchronous all-reduce data parallelism across hosts.

The same DDP step as :class:`~hpmodel.strategies.mirrored.Mirrored`; the processes of
all hosts meet through a c10d rendezvous endpoint (node 0's ``host:port``), which
PyTorch's elastic launcher runs. Started by ``torchrun`` instead, a script using this
strategy runs unchanged: the strategy joins the group torchrun set up.

Example (two hosts, one process per GPU)::

    # host A (node 0, reachable as hostA:29500)
    hpmodel train cfg.toml --strategy multi-worker --nnodes 2 --node-rank 0 --rdzv-endpoint hostA:29500 --out run
    # host B
    hpmodel train cfg.toml --strategy multi-worker --nnodes 2 --node-rank 1 --rdzv-endpoint hostA:29500 --out run
"""

from __future__ import annotations

from hpmodel.strategies.mirrored import Mirrored
from hpmodel.strategies.registry import register


@register
class MultiWorker(Mirrored):
    """Synchronous all-reduce data parallelism across the devices of many hosts.

    Example::

        strategy = hm.get_strategy("multi-worker", nnodes=2, node_rank=0,
                                   rdzv_endpoint="10.0.0.1:29500", devices=8)
    """

    names = ("multi-worker", "multi_worker", "multiworker")
    single_host = False
