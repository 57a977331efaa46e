"""The Strategy seam: how one training step is spread over devices.

A strategy answers seven questions for the training loop: where this process runs
(``device``, ``rank``, ``world_size``), how to start its processes (``launch``), how to
wrap the model and optimizer (``setup``), which slice of the data this process reads
(``distribute``), how to combine numbers across processes (``reduce``, ``barrier``) and
how to get the full weights for saving (``model_state_dict``). Optional abilities are
mixins or overridable hooks (``no_sync`` for gradient accumulation, ``backward``,
``optimizer_step``).

Example (a custom loop)::

    strategy = hm.get_strategy("one-device")
    model, optimizer = strategy.setup(model, optimizer)
    for x, y in strategy.distribute(batches):
        loss = loss_fn(model(x.to(strategy.device)), y.to(strategy.device))
        strategy.backward(loss)
        strategy.optimizer_step(optimizer)
        optimizer.zero_grad()
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from hpmodel.data import Batches
from hpmodel.kernel.errors import HpmodelError
from hpmodel.kernel.schema import make_config


class Strategy(abc.ABC):
    """Base class: subclasses set ``names`` and a ``Config`` dataclass and register themselves."""

    names: ClassVar[tuple[str, ...]] = ()

    @dataclasses.dataclass
    class Config:
        pass

    def __init__(self, config: Any = None, **options: Any):
        self.config = config if config is not None else strategy_options(type(self), options)

    # -- where this process runs --------------------------------------------------------
    @property
    @abc.abstractmethod
    def device(self) -> torch.device:
        """The device this process computes on."""

    @property
    def rank(self) -> int:
        return 0

    @property
    def world_size(self) -> int:
        return 1

    @property
    def num_replicas(self) -> int:
        """How many model replicas share a global batch (global batch = per-replica × this)."""
        return self.world_size

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and logs."""
        return self.rank == 0

    # -- processes ----------------------------------------------------------------------
    def launch(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on every process of this strategy; return the main process's result."""
        return fn(*args)

    # -- the step -----------------------------------------------------------------------
    @abc.abstractmethod
    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None):
        """Place and wrap ``model`` (and ``optimizer``) for this strategy; returns both."""

    def distribute(self, data: Any) -> Any:
        """The part of ``data`` this process reads: ``data.shard(world_size, rank)`` when split."""
        check_batches(data)
        if self.world_size == 1:
            return data
        return data.shard(self.world_size, self.rank, mode="batch")

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def optimizer_step(self, optimizer: torch.optim.Optimizer, scaler=None) -> None:
        """Apply the accumulated gradients (through ``scaler`` when fp16 loss scaling is on)."""
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)

    @contextlib.contextmanager
    def no_sync(self, model: nn.Module):
        """Skip gradient synchronisation for micro-batches that are not the last of a step."""
        yield

    # -- collectives --------------------------------------------------------------------
    def reduce(self, value: Any, op: str = "mean") -> torch.Tensor:
        """Combine ``value`` over all processes with ``op`` in {"mean", "sum", "max", "min"}."""
        if op not in ("mean", "sum", "max", "min"):
            raise ValueError(f"reduce op '{op}' is unknown: use mean, sum, max or min")
        return torch.as_tensor(value, dtype=torch.float64).clone()

    def barrier(self) -> None:
        pass

    # -- weights ------------------------------------------------------------------------
    def unwrap(self, model: nn.Module) -> nn.Module:
        """The user's module inside any wrapper this strategy added."""
        return getattr(model, "module", model)

    def model_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Full weights on the CPU (gathered if sharded); every process must call it."""
        return {k: v.detach().cpu().clone() for k, v in self.unwrap(model).state_dict().items()}

    def teardown(self) -> None:
        """Release process groups and other resources."""

    def describe(self) -> str:
        return f"{self.names[0]} ({self.world_size} process{'es' if self.world_size > 1 else ''})"


class OwnsForwardBackward(abc.ABC):
    """Capability: the strategy runs forward and backward itself (pipeline parallelism).

    The Trainer checks ``isinstance(strategy, OwnsForwardBackward)`` and hands it each
    step's micro-batches instead of calling the model.
    """

    @abc.abstractmethod
    def run_micro_batches(self, model: nn.Module, group: list, loss_fn: Callable, *,
                          train: bool = True, scaler=None,
                          context: Callable[[], Any] | None = None) -> torch.Tensor:
        """Forward (and backward when ``train``) over ``group``; returns the classification
        task's sums (loss·n, correct, n, n: see :mod:`hpmodel.models.tasks`)."""


class ProfilesBatches(abc.ABC):
    """Capability: the strategy wants one sample batch before ``setup`` (to time its blocks)."""

    @abc.abstractmethod
    def set_sample_batch(self, batch: Any) -> None:
        """Receive one global batch to profile the model on."""


def check_batches(data: Any) -> None:
    """Refuse, in one line, data that ``distribute`` cannot split (e.g. a torch DataLoader)."""
    if not isinstance(data, Batches):
        raise HpmodelError(f"strategy.distribute needs hpmodel.data batches, not a "
                           f"{type(data).__name__}: wrap a torch Dataset as "
                           "hm.data.from_dataset(dataset).batch(global_batch) (for a DataLoader: "
                           "its .dataset), or pass tensors to Trainer.fit")


def strategy_options(cls: type[Strategy], options: dict[str, Any]):
    """``cls.Config`` built from keyword ``options``, naming any bad key and the allowed ones."""
    return make_config(cls.Config, options, cls.names[0] if cls.names else cls.__name__)


def build_optimizer(optimizer: Any, model: nn.Module):
    """``optimizer`` as given, or built now from a factory ``f(parameters)``.

    Strategies that replace parameters (sharding) need the factory form, so that the
    optimizer sees the parameters the strategy made.
    """
    if optimizer is None or isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    if callable(optimizer):
        return optimizer(model.parameters())
    raise TypeError(f"optimizer must be a torch.optim.Optimizer or a factory f(parameters), "
                    f"not {type(optimizer).__name__}")
