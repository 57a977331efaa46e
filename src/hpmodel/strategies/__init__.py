"""Distribution strategies: how a training step is spread over devices.

Each strategy lives in its own module and registers its names; ``get_strategy(name)``
is the one way in from a name.

Example::

    import hpmodel as hm
    strategy = hm.get_strategy("mirrored", devices=2)
"""

from hpmodel.strategies.base import OwnsForwardBackward, ProfilesBatches, Strategy
from hpmodel.strategies.central_storage import CentralStorage
from hpmodel.strategies.mirrored import Mirrored
from hpmodel.strategies.multi_worker import MultiWorker
from hpmodel.strategies.one_device import OneDevice
from hpmodel.strategies.pipeline_parallel import PipelineParallel
from hpmodel.strategies.process_group import ProcessGroupStrategy
from hpmodel.strategies.sharded import Sharded
from hpmodel.strategies.registry import (available_strategies, get_strategy, register,
                                         registered_names, strategy_class)

__all__ = ["CentralStorage", "Mirrored", "MultiWorker", "OneDevice", "OwnsForwardBackward",
           "PipelineParallel", "ProfilesBatches",
           "ProcessGroupStrategy",
           "Sharded", "Strategy", "available_strategies", "get_strategy", "register",
           "registered_names", "strategy_class"]
