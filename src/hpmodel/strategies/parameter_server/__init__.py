"""The parameter-server strategy: servers hold the variables, workers push gradients
asynchronously, a coordinator schedules steps and survives dying workers
(``torch.distributed.rpc`` does the transport). See :mod:`.strategy`.

Example::

    strategy = hm.get_strategy("parameter-server", workers=2, servers=1)
"""

from hpmodel.strategies.parameter_server.strategy import ParameterServer, ParameterServerConfig

__all__ = ["ParameterServer", "ParameterServerConfig"]
