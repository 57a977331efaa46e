"""Training: the loop, callbacks, mixed precision, memory tools and run directories."""

from hpmodel.train.callbacks import Callback, EarlyStopping, MetricsLogger, ProgressBar
from hpmodel.train.backup import BackupAndRestore
from hpmodel.train.trainer import FitResult, Trainer

__all__ = ["BackupAndRestore", "Callback", "EarlyStopping", "FitResult", "MetricsLogger", "ProgressBar", "Trainer"]
