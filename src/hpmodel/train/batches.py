"""Batches over in-memory tensors: shuffled per epoch, shardable, resumable.

The order of epoch ``e`` is a pure function of ``(seed, e)``, and the position is the
number of batches handed out, so resuming is exact. :mod:`hpmodel.data` pipelines follow
the same protocol (``__len__``, ``set_epoch``, ``shard``, ``state_dict``), so the Trainer
takes either.

Example::

    batches = TensorBatches((x, y), batch_size=64, seed=0)
    batches.set_epoch(3)
    for xb, yb in batches: ...
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch


class TensorBatches:
    """Mini-batches of ``tensors`` (equal first dimension), optionally shuffled."""

    def __init__(self, tensors: Sequence[torch.Tensor], batch_size: int, *, shuffle: bool = True,
                 seed: int = 0, drop_remainder: bool = False):
        self.tensors = tuple(tensors)
        if not self.tensors or any(len(t) != len(self.tensors[0]) for t in self.tensors):
            raise ValueError("TensorBatches needs tensors with the same first dimension")
        if batch_size < 1:
            raise ValueError(f"batch_size = {batch_size} must be at least 1")
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_remainder = drop_remainder
        self.epoch = 0
        self.position = 0  # batches already handed out in this epoch
        self.num_shards, self.shard_index = 1, 0

    def __len__(self) -> int:
        n = len(self.tensors[0])
        return n // self.batch_size if self.drop_remainder else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Select epoch ``epoch``'s order and start it from the beginning."""
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def order(self) -> torch.Tensor:
        n = len(self.tensors[0])
        if not self.shuffle:
            return torch.arange(n)
        return torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 100003 + self.epoch))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        order = self.order()
        while self.position < len(self):
            start = self.position * self.batch_size
            index = order[start:start + self.batch_size]
            index = torch.tensor_split(index, self.num_shards)[self.shard_index]
            self.position += 1
            yield tuple(t[index] for t in self.tensors)
        self.epoch, self.position = self.epoch + 1, 0

    def shard(self, num_shards: int, index: int, mode: str = "batch") -> "TensorBatches":
        """This rank's contiguous slice of every global batch (``mode="batch"``)."""
        if mode != "batch":
            raise ValueError("TensorBatches shards by batch only: use mode='batch'")
        if not 0 <= index < num_shards:
            raise ValueError(f"shard index {index} is outside [0, {num_shards})")
        copy = TensorBatches(self.tensors, self.batch_size, shuffle=self.shuffle, seed=self.seed,
                             drop_remainder=self.drop_remainder)
        copy.epoch, copy.position = self.epoch, self.position
        copy.num_shards, copy.shard_index = num_shards, index
        return copy

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.seed = int(state.get("seed", self.seed))
