"""What every run builds from a config: the strategy, the Trainer and a picklable model
factory.

Example::

    cfg = load_config("examples/digits.toml")
    trainer = build_trainer(cfg, build_strategy(cfg))
"""

from __future__ import annotations

from hpmodel.config import RunConfig
from hpmodel.kernel.errors import HpmodelError
from hpmodel.models import build_model
from hpmodel.strategies import strategy_class
from hpmodel.train.memory import recompute_transform
from hpmodel.train.optim import schedule_factory
from hpmodel.train.trainer import Trainer


def build_strategy(cfg: RunConfig):
    """The strategy ``cfg.strategy`` names, built from its already validated Config."""
    if cfg.strategy.is_parameter_server:
        raise HpmodelError("strategy 'parameter-server' has its own runner, not a Strategy: "
                           "train it with 'hpmodel train' or hpmodel.runs.train_from_config")
    return strategy_class(cfg.strategy.name)(config=cfg.strategy.options)


def build_trainer(cfg: RunConfig, strategy, callbacks=()) -> Trainer:
    return Trainer(strategy=strategy, precision=cfg.train.precision, grad_accum=cfg.train.grad_accum,
                   clip_grad_norm=cfg.train.clip_grad_norm, callbacks=callbacks, seed=cfg.seed,
                   batch_size=cfg.data.batch_size, hold_global_batch=cfg.train.hold_global_batch,
                   drop_remainder=cfg.data.drop_remainder, task=cfg.train.task,
                   compile=cfg.train.compile, compile_mode=cfg.train.compile_mode,
                   log_every_steps=cfg.train.log_every_steps,
                   progress=cfg.train.progress, max_steps=cfg.train.max_steps,
                   early_stopping_patience=cfg.train.early_stopping_patience,
                   schedule=schedule_factory(cfg.schedule),
                   model_transform=recompute_transform(cfg.train.recompute),
                   offload_activations=cfg.train.offload_activations)


class ModelFactory:
    """A picklable ``() -> nn.Module`` for a config, so processes can build the model."""

    def __init__(self, cfg: RunConfig, input_shape, num_classes: int):
        self.cfg, self.input_shape, self.num_classes = cfg, tuple(input_shape), num_classes

    def __call__(self):
        return build_model(self.cfg.model, self.input_shape, self.num_classes)
