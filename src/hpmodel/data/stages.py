"""Transformation stages: filter, batch, unbatch, repeat, take, skip, shuffle, shard
(map lives in ``map_stage.py``).

Each stage is a :class:`~hpmodel.data.core.Node`; batching uses
``torch.utils.data.default_collate``; the shuffle buffer draws from a numpy generator
seeded by ``(seed, epoch)``.
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import default_collate

from .core import INFINITE, Context, Node, drain, seeded_rng, timed_iter
from .map_stage import MapNode
from .sources import IndexSource, TensorSlicer, shard_count, shard_position

clock = time.perf_counter


class FilterNode(Node):
    """Elements for which ``predicate`` is true; resuming replays the predicate.

    Example::

        from_tensors(x).filter(lambda v: v.sum() > 0)
    """

    kind = "filter"

    def __init__(self, upstream: Node, predicate: Callable[[Any], bool]):
        super().__init__(upstream)
        self.predicate = predicate

    def iterate(self, ctx: Context, skip: int = 0) -> Iterator:
        return drain(self._filter(ctx), skip)

    def _filter(self, ctx: Context) -> Iterator:
        stage, predicate = self.stage(ctx), self.predicate
        for item in self.upstream.iterate(ctx, 0):
            t0 = clock()
            keep = predicate(item)
            stage.add(clock() - t0, int(bool(keep)))
            if keep:
                yield item


class BatchNode(Node):
    """Groups of ``batch_size`` consecutive elements collated into one batch.

    Example::

        from_tensors((x, y)).batch(32, drop_remainder=True)
    """

    kind = "batch"

    def __init__(self, upstream: Node, batch_size: int, drop_remainder: bool,
                 collate: Callable | None):
        super().__init__(upstream)
        self.batch_size = int(batch_size)
        self.drop_remainder = drop_remainder
        self.collate = collate or default_collate

    def iterate(self, ctx: Context, skip: int = 0) -> Iterator:
        # Every batch before the last is full, so k batches are exactly k * size elements.
        up = self.upstream
        if isinstance(up, MapNode) and up.use_processes and up.chunk_size is None:
            return up.iterate_batched(ctx, skip * self.batch_size, self)
        if (isinstance(up, IndexSource) and isinstance(up.getter, TensorSlicer)
                and self.collate is default_collate):
            return self._gather(up, ctx, skip)
        inputs = self.upstream.iterate(ctx, skip * self.batch_size)
        return self._batch(inputs, self.stage(ctx))

    def _batch(self, inputs: Iterator, stage) -> Iterator:
        size, collate = self.batch_size, self.collate
        while True:
            group = list(itertools.islice(inputs, size))
            if not group or (self.drop_remainder and len(group) < size):
                return
            t0 = clock()
            batch = collate(group)
            stage.add(clock() - t0)
            yield batch

    def _gather(self, source: IndexSource, ctx: Context, skip: int) -> Iterator:
        """Fused ``from_tensors().batch()``: one indexed gather per batch instead of a
        Python call per element and a collate (the same tensors, far fewer hops)."""
        reads, stage = source.stage(ctx), self.stage(ctx)  # the gather is the source's read
        size, getter = self.batch_size, source.getter
        order = torch.from_numpy(source.order(ctx)[skip * size:])
        order = getter.place(order)  # one copy per epoch, not one per batch
        for start in range(0, len(order), size):
            index = order[start:start + size]
            if self.drop_remainder and len(index) < size:
                return
            t0 = clock()
            batch = getter.gather(index)
            reads.add(clock() - t0, len(index))
            stage.add(0.0)
            yield batch

    def cardinality(self) -> int:
        n = self.upstream.cardinality()
        if n < 0:
            return n
        return n // self.batch_size if self.drop_remainder else -(-n // self.batch_size)


def split_batch(batch: Any) -> Iterator:
    """The elements of a collated batch (tensor, tuple/list of tensors, or dict).

    Example::

        list(split_batch((torch.zeros(2, 3), torch.ones(2))))  # 2 tuples
    """
    if isinstance(batch, torch.Tensor):
        yield from batch.unbind(0)
    elif isinstance(batch, (tuple, list)):
        parts = [list(split_batch(b)) for b in batch]
        for row in zip(*parts):
            yield tuple(row)
    elif isinstance(batch, dict):
        keys = list(batch)
        parts = [list(split_batch(batch[k])) for k in keys]
        for row in zip(*parts):
            yield dict(zip(keys, row))
    elif isinstance(batch, np.ndarray):
        yield from batch
    else:
        raise ValueError(f"unbatch cannot split a {type(batch).__name__}: "
                         "elements must be tensors, arrays, or tuples/dicts of them")


class UnbatchNode(Node):
    """The rows of each batch as separate elements.

    Example::

        from_tensors(x).batch(8).unbatch()
    """

    kind = "unbatch"

    def iterate(self, ctx: Context, skip: int = 0) -> Iterator:
        rows = itertools.chain.from_iterable(
            map(split_batch, timed_iter(self.upstream.iterate(ctx, 0), self.stage(ctx))))
        return drain(rows, skip)


class RepeatNode(Node):
    """The upstream ``count`` times (forever when None); each pass reshuffles.

    Example::

        from_tensors(x).repeat(2)
    """

    kind = "repeat"

    def __init__(self, upstream: Node, count: int | None):
        super().__init__(upstream)
        self.count = count

    def iterate(self, ctx: Context, skip: int = 0) -> Iterator:
        per_pass = self.upstream.cardinality()
        if per_pass == 0:
            return iter(())
        if per_pass > 0:
            first, inner = divmod(skip, per_pass)
            return self._passes(ctx, first, inner)
        return drain(self._passes(ctx, 0, 0), skip)

    def _passes(self, ctx: Context, first: int, inner: int) -> Iterator:
        passes = itertools.count(first) if self.count is None else range(first, self.count)
        for k in passes:
            yielded = False
            for item in self.upstream.iterate(ctx.for_pass(k), inner):
                yielded = True
                yield item
            inner = 0
            if not yielded and self.count is None:
                return  # an empty upstream would otherwise loop forever

    def cardinality(self) -> int:
        n = self.upstream.cardinality()
        if self.count is None:
            return 0 if n == 0 else INFINITE
        return n * self.count if n >= 0 else n


class TakeNode(Node):
    """At most the first ``count`` elements (all of them when ``count`` is -1).

    Example::

        from_tensors(x).take(10)
    """

    kind = "take"

    def __init__(self, upstream: Node, count: int):
        super().__init__(upstream)
        self.count = count

    def iterate(self, ctx: Context, skip: int = 0) -> Iterator:
        if self.count < 0:
            return self.upstream.iterate(ctx, skip)
        start = min(skip, self.count)
        return itertools.islice(self.upstream.iterate(ctx, start), self.count - start)

    def cardinality(self) -> int:
        n = self.upstream.cardinality()
        if self.count < 0:
            return n
        if n == INFINITE:
            return self.count
        return min(n, self.count) if n >= 0 else n


class SkipNode(Node):
    """All but the first ``count`` elements (none when ``count`` is -1).

    Example::

        from_tensors(x).skip(10)
    """

    kind = "skip"

    def __init__(self, upstream: Node, count: int):
        super().__init__(upstream)
        self.count = count

    def iterate(self, ctx: Context, skip: int = 0) -> Iterator:
        if self.count < 0:
            return iter(())
        return self.upstream.iterate(ctx, self.count + skip)

    def cardinality(self) -> int:
        n = self.upstream.cardinality()
        if self.count < 0:
            return 0
        return max(0, n - self.count) if n >= 0 else n


class ShuffleBufferNode(Node):
    """Streaming shuffle through a buffer; the draw sequence is seeded by (seed, epoch).

    Example::

        from_shards("data/*.shard").shuffle(10_000, seed=0)
    """

    kind = "shuffle"

    def __init__(self, upstream: Node, buffer_size: int, seed: int, reshuffle: bool):
        super().__init__(upstream)
        self.buffer_size = int(buffer_size)
        self.seed = seed
        self.reshuffle = reshuffle

    def iterate(self, ctx: Context, skip: int = 0) -> Iterator:
        return drain(self._shuffle(ctx), skip)

    def _shuffle(self, ctx: Context) -> Iterator:
        rng = seeded_rng(self.seed, *(ctx.rng_keys() if self.reshuffle else ()))
        buffer: list = []
        draws = iter(())
        for item in self.upstream.iterate(ctx, 0):
            if len(buffer) < self.buffer_size:
                buffer.append(item)
                continue
            u = next(draws, None)
            if u is None:  # draw uniforms in blocks: one numpy call per 1024 elements
                draws = iter(rng.random(1024).tolist())
                u = next(draws)
            j = int(u * len(buffer))
            out, buffer[j] = buffer[j], item
            yield out
        for j in rng.permutation(len(buffer)).tolist():
            yield buffer[j]

    def cardinality(self) -> int:
        return self.upstream.cardinality()


class ShardNode(Node):
    """This rank's part of a stream: round-robin elements or contiguous blocks.

    Example::

        from_shards("data/*.shard").shard(2, rank)
    """

    kind = "shard"
    one_to_one = False

    def __init__(self, upstream: Node, num_shards: int, index: int, block: int | None):
        super().__init__(upstream)
        self.spec = (num_shards, index, block)

    def iterate(self, ctx: Context, skip: int = 0) -> Iterator:
        start = shard_position(skip, *self.spec)
        return self._select(self.upstream.iterate(ctx, start), start)

    def _select(self, inputs: Iterator, start: int) -> Iterator:
        num, index, block = self.spec
        for j, item in enumerate(inputs, start):
            owner = j % num if block is None else (j // block) % num
            if owner == index:
                yield item

    def cardinality(self) -> int:
        n = self.upstream.cardinality()
        num, index, block = self.spec
        if n < 0 or block is None:
            return shard_count(n, *self.spec)
        full, rest = divmod(n, block * num)  # a stream deals its partial batch in blocks too
        return full * block + min(block, max(0, rest - index * block))
