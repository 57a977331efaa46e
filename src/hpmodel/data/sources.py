"""Sources: where elements enter a pipeline.

:class:`IndexSource` wraps anything indexable (tensors, a map-style torch ``Dataset``,
a list of shard paths). Its order is a pure function of ``(seed, epoch)``: a seeded
numpy permutation of the indices, then this rank's slice of it. Skipping to a resume
position is therefore free (no element before it is read). :class:`IterableSource`
wraps a stream (an iterable torch ``Dataset``, a generator factory); skipping replays.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from .core import UNKNOWN, Context, Node, drain, seeded_rng, timed_iter


def select_shard(n: int, num_shards: int, index: int, block: int | None) -> np.ndarray:
    """Positions ``0..n-1`` that belong to shard ``index``.

    ``block=None`` deals positions round-robin (position j goes to ``j % num_shards``);
    ``block=b`` deals runs of ``b`` (position j goes to ``(j // b) % num_shards``), so each
    global batch of ``b * num_shards`` is split into contiguous per-rank slices.

    Example::

        select_shard(8, 2, 1, None)  # array([1, 3, 5, 7])
        select_shard(8, 2, 1, 2)     # array([2, 3, 6, 7])
        select_shard(6, 2, 1, 2)     # array([2, 3, 5]): the partial batch [4, 5] splits evenly
    """
    pos = np.arange(n)
    if block is None:
        return pos[index::num_shards]
    full = n - n % (block * num_shards)  # the last, partial global batch is split evenly
    mine = pos[:full][(pos[:full] // block) % num_shards == index]
    return np.concatenate([mine, np.array_split(pos[full:], num_shards)[index]])


def shard_position(k: int, num_shards: int, index: int, block: int | None) -> int:
    """Upstream position of this shard's ``k``-th element (inverse of :func:`select_shard`).

    Example::

        shard_position(1, 2, 1, 2)  # 3
    """
    if block is None:
        return k * num_shards + index
    return (k // block) * block * num_shards + index * block + k % block


def shard_count(n: int, num_shards: int, index: int, block: int | None) -> int:
    """How many of ``n`` upstream positions belong to shard ``index``.

    Example::

        shard_count(10, 3, 0, None)  # 4
    """
    if n < 0:
        return n
    if block is None:
        return max(0, (n - index + num_shards - 1) // num_shards)
    full, rest = divmod(n, block * num_shards)
    return full * block + len(np.array_split(np.arange(rest), num_shards)[index])


class IndexSource(Node):
    """Elements ``getter(i)`` for ``i`` in a seeded permutation of ``range(length)``.

    Example::

        src = IndexSource(lambda i: i * i, 4, "squares")
        list(src.iterate(Context()))  # [0, 1, 4, 9]
    """

    kind = "source"
    cheap_skip = True

    def __init__(self, getter: Callable[[int], Any], length: int, name: str):
        super().__init__(None)
        self.getter = getter
        self.length = int(length)
        self.name = name
        self.shuffle_seed: int | None = None
        self.reshuffle = True
        self.shard: tuple[int, int, int | None] | None = None  # (num_shards, index, block)

    def order(self, ctx: Context) -> np.ndarray:
        """The indices this epoch visits, in order."""
        if self.shuffle_seed is None:
            idx = np.arange(self.length)
        else:
            keys = ctx.rng_keys() if self.reshuffle else ()
            idx = seeded_rng(self.shuffle_seed, *keys).permutation(self.length)
        if self.shard is not None:
            idx = idx[select_shard(len(idx), *self.shard)]
        return idx

    def iterate(self, ctx: Context, skip: int = 0) -> Iterator:
        stage = self.stage(ctx)
        getter = self.getter
        return _timed_get(getter, self.order(ctx)[skip:], stage)

    def cardinality(self) -> int:
        if self.shard is None:
            return self.length
        return shard_count(self.length, *self.shard)


def _timed_get(getter, indices: np.ndarray, stage) -> Iterator:
    clock = time.perf_counter
    for i in indices.tolist():
        t0 = clock()
        item = getter(i)
        stage.add(clock() - t0)
        yield item


class IterableSource(Node):
    """Elements of a fresh ``iter(make())`` each epoch; skipping replays the stream.

    Example::

        src = IterableSource(lambda: range(3), "range")
        list(src.iterate(Context(), skip=1))  # [1, 2]
    """

    kind = "source"

    def __init__(self, make: Callable[[], Iterable], name: str, length: int = UNKNOWN):
        super().__init__(None)
        self.make = make
        self.name = name
        self.length = length

    def iterate(self, ctx: Context, skip: int = 0) -> Iterator:
        stage = self.stage(ctx)
        source = self.make()
        if hasattr(source, "set_epoch"):
            source.set_epoch(ctx.epoch)  # lets a user stream reshuffle per epoch
        return drain(timed_iter(iter(source), stage), skip)

    def cardinality(self) -> int:
        return self.length


class TensorSlicer:
    """Getter returning the i-th slice of every tensor, like ``from_tensor_slices``.

    A class rather than a closure so that pipelines pickle (spawned processes).

    Example::

        TensorSlicer((x, y))(0)  # (x[0], y[0]); with keys=("x", "y"): {"x": x[0], "y": y[0]}
    """

    def __init__(self, tensors: tuple, keys: tuple | None = None, single: bool = False):
        self.tensors, self.keys, self.single = tensors, keys, single

    def __call__(self, i: int) -> Any:
        if self.single:
            return self.tensors[0][i]
        row = tuple(t[i] for t in self.tensors)
        return dict(zip(self.keys, row)) if self.keys is not None else row

    def gather(self, index: torch.Tensor) -> Any:
        """Rows ``index`` of every tensor at once: what collating ``self(i)`` would give
        (``index_select``: on the CPU several times faster than ``t[index]``)."""
        rows = tuple(t.index_select(0, index.to(t.device)) for t in self.tensors)
        if self.single:
            return rows[0]
        return dict(zip(self.keys, rows)) if self.keys is not None else rows

    def place(self, order: torch.Tensor) -> torch.Tensor:
        """``order`` (an epoch's indices) on the tensors' device when they share one: a host
        index into CUDA tensors is a blocking copy at every batch, which drains the stream."""
        devices = {t.device for t in self.tensors}
        return order.to(devices.pop()) if len(devices) == 1 else order


class _Returns:
    """A picklable ``lambda: value``."""

    def __init__(self, value: Any):
        self.value = value

    def __call__(self) -> Any:
        return self.value


def _as_tensor(t: Any, what: str) -> torch.Tensor:
    if isinstance(t, torch.Tensor):
        return t
    if isinstance(t, np.ndarray):
        return torch.from_numpy(t)
    try:
        return torch.as_tensor(t)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"from_tensors could not convert {what} to a tensor ({err}): "
                         "pass tensors, numpy arrays or nested lists of numbers") from None
