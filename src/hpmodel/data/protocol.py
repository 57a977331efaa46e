"""The one data contract between the input pipeline and everything that trains on it.

A :class:`~hpmodel.data.pipeline.Pipeline` satisfies it; the Trainer and
``Strategy.distribute`` accept anything that does (checked with ``isinstance``).

Example::

    isinstance(hm.data.from_tensors(x).batch(8), Batches)  # True
"""

from __future__ import annotations

from typing import Any, Iterator, Protocol, runtime_checkable


@runtime_checkable
class Batches(Protocol):
    """What the Trainer iterates: one pass per epoch, shardable, resumable.

    ``cardinality()`` is the number of batches per epoch, -1 if infinite, -2 if unknown.
    """

    def __iter__(self) -> Iterator[Any]: ...

    def cardinality(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...

    def shard(self, num_shards: int, index: int, mode: str = "element") -> "Batches": ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...
