"""The parameter server: servers hold the variables, workers push gradients
asynchronously, a coordinator schedules steps and survives dying workers
(``torch.distributed.rpc`` does the transport). Its own runner, not a Strategy: see
:mod:`.config` for the options and :mod:`hpmodel.runs.parameter_server` for the run.

Example::

    hpmodel train digits.toml --strategy parameter-server --workers 2 --servers 1 --out runs/ps
"""

from hpmodel.parameter_server.config import NAMES, ParameterServerConfig

__all__ = ["NAMES", "ParameterServerConfig"]
