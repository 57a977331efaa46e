"""hpmodel: high-performance modeling on PyTorch.

Pick a distribution strategy with one word, feed the devices with a fast input pipeline,
survive dying workers, train models too large for one device, then shrink the trained
model for deployment — measuring every step.

Example::

    import hpmodel as hm
    strategy = hm.get_strategy("mirrored", devices=2)
    trainer = hm.Trainer(strategy=strategy, precision="bf16")
"""

from hpmodel import data
from hpmodel.data import AUTOTUNE
from hpmodel.kernel.errors import ConfigError, HpmodelError
from hpmodel.strategies import available_strategies, get_strategy
from hpmodel.train import BackupAndRestore, Callback, EarlyStopping, Trainer

__version__ = "0.1.0"

__all__ = ["AUTOTUNE", "BackupAndRestore", "Callback", "ConfigError", "EarlyStopping", "HpmodelError",
           "Trainer", "data",
           "__version__", "available_strategies", "get_strategy"]
