"""Transformation stages: map, filter, batch, unbatch, repeat, take, skip, shuffle, shard.

Each stage is a :class:`~hpmodel.data.core.Node`. Parallel map runs on
``concurrent.futures`` threads or a ``multiprocessing`` pool (see ``parallel.py``);
batching uses ``torch.utils.data.default_collate``; the shuffle buffer draws from a
numpy generator seeded by ``(seed, epoch)``.
"""

from __future__ import annotations

import functools
import itertools
import time
import weakref
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import default_collate

from .core import AUTOTUNE, INFINITE, Context, Node, drain, seeded_rng, timed_iter
from .parallel import ApplyEach, Tuner, parallel_map
from .sources import IndexSource, shard_count, shard_position

clock = time.perf_counter


class MapNode(Node):
    """``fn`` applied to every element; parallel on threads or processes, order kept.

    Example::

        from_tensors(x).map(fn, num_parallel_calls=4)
    """

    kind = "map"
    one_to_one = True

    def __init__(self, upstream: Node, fn: Callable, num_parallel_calls: int | None,
                 deterministic: bool, use_processes: bool, chunk_size: int | None):
        super().__init__(upstream)
        self.fn = fn
        self.num_parallel_calls = num_parallel_calls
        self.deterministic = deterministic
        self.use_processes = use_processes
        self.chunk_size = chunk_size

    def _inputs(self, ctx: Context, skip: int) -> tuple[Iterator, Callable]:
        """Upstream elements and the function to apply to them.

        Process workers right above an indexable source receive indices and read the
        source themselves (inherited through fork), like DataLoader workers: the
        consumer then only dispatches integers instead of pickling elements.
        """
        up = self.upstream
        if self.use_processes and isinstance(up, IndexSource):
            self.stage(ctx).extra["reads_source_in_workers"] = True
            return iter(up.order(ctx)[skip:].tolist()), GetThenApply(up.getter, self.fn)
        return up.iterate(ctx, skip), self.fn  # map is 1:1, so skip passes down

    def iterate(self, ctx: Context, skip: int = 0) -> Iterator:
        inputs, fn = self._inputs(ctx, skip)
        stage = self.stage(ctx)
        calls = self.num_parallel_calls
        if calls in (None, 0, 1) and not self.use_processes:
            return self._sequential(inputs, stage)
        tuner = None
        if calls == AUTOTUNE:
            workers = max(1, ctx.cpu_share)
            tuner = Tuner(start=min(2, 2 * workers), low=1, high=4 * workers)
        else:
            workers = max(1, calls or 1)
        stage.extra["workers"] = workers
        chunk = self.chunk_size or (16 if self.use_processes else 1)
        runner = None
        if self.use_processes:
            runner = functools.partial(self._runner, ("each", chunk, workers), ApplyEach(fn),
                                       workers)
        return parallel_map(inputs, fn, workers, tuner, self.deterministic, stage,
                            processes=self.use_processes, chunk_size=chunk, runner=runner)

    def iterate_batched(self, ctx: Context, skip: int, batch: "BatchNode") -> Iterator:
        """Fused ``map().batch()`` for process workers: each worker maps and collates."""
        from .parallel import ApplyCollate

        inputs, fn = self._inputs(ctx, skip)
        stage = self.stage(ctx)
        workers = ctx.cpu_share if self.num_parallel_calls == AUTOTUNE else self.num_parallel_calls
        stage.extra.update(workers=workers, fused_with_batch=True)
        drop = batch.batch_size if batch.drop_remainder else 0
        workers = max(1, workers or 1)
        chunk_fn = ApplyCollate(fn, batch.collate, drop)
        runner = functools.partial(self._runner, ("batch", batch.batch_size, drop, workers),
                                   chunk_fn, workers)
        return parallel_map(inputs, fn, workers, None, self.deterministic, stage,
                            processes=True, chunk_size=batch.batch_size, runner=runner)

    def _runner(self, key: tuple, chunk_fn: Callable, workers: int):
        """Process workers kept across epochs (like DataLoader's persistent_workers).

        They are forked once, at the first epoch, and stopped when this stage is
        garbage-collected or the program exits (they are daemon processes).
        """
        from .workers import ProcessRunner

        cached = self.__dict__.get("_workers")
        if cached is not None and cached.key == key and cached.claim():
            return cached
        runner = ProcessRunner(chunk_fn, workers)
        runner.key = key
        runner.claim()
        if cached is None or not cached.busy:
            if cached is not None:
                cached.persistent = False
                cached.close()
            runner.persistent = True
            self._workers = runner
            weakref.finalize(self, runner.close)
        return runner

    def clone(self, upstream: Node | None) -> Node:
        new = super().clone(upstream)
        new._workers = None  # worker processes are never shared between stages
        return new

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_workers", None)  # processes do not travel with a pickled pipeline
        return state

    def _sequential(self, inputs: Iterator, stage) -> Iterator:
        fn = self.fn
        for item in inputs:
            t0 = clock()
            out = fn(item)
            stage.add(clock() - t0)
            yield out

    def cardinality(self) -> int:
        return self.upstream.cardinality()


class GetThenApply:
    """``fn(getter(i))``: what a process worker runs when it reads the source itself.

    Example::

        GetThenApply([10, 20].__getitem__, str)(1)  # '20'
    """

    def __init__(self, getter: Callable[[int], Any], fn: Callable):
        self.getter, self.fn = getter, fn

    def __call__(self, index: int) -> Any:
        return self.fn(self.getter(index))


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
    """At most the first ``count`` elements.

    Example::

        from_tensors(x).take(10)
    """

    kind = "take"

    def __init__(self, upstream: Node, count: int):
        super().__init__(upstream)
        self.count = count

    def iterate(self, ctx: Context, skip: int = 0) -> Iterator:
        start = min(skip, self.count)
        return itertools.islice(self.upstream.iterate(ctx, start), self.count - start)

    def cardinality(self) -> int:
        n = self.upstream.cardinality()
        if n == INFINITE:
            return self.count
        return min(n, self.count) if n >= 0 else n


class SkipNode(Node):
    """All but the first ``count`` elements.

    Example::

        from_tensors(x).skip(10)
    """

    kind = "skip"

    def __init__(self, upstream: Node, count: int):
        super().__init__(upstream)
        self.count = count

    def iterate(self, ctx: Context, skip: int = 0) -> Iterator:
        return self.upstream.iterate(ctx, self.count + skip)

    def cardinality(self) -> int:
        n = self.upstream.cardinality()
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
        return shard_count(self.upstream.cardinality(), *self.spec)
