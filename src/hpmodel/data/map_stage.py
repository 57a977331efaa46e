"""The map stage: ``Pipeline.map`` — a function over every element, in order.

Parallel map runs on ``concurrent.futures`` threads or on worker processes (see
``parallel.py`` and ``workers.py``); results are reassembled in input order, so the thread or
process count never changes the order or the resume position.
"""

from __future__ import annotations

import functools
import time
import weakref
from typing import Any, Callable, Iterator


from .core import AUTOTUNE, Context, Node
from .parallel import ApplyCollate, ApplyEach, Tuner, parallel_map
from .workers import ProcessRunner
from .sources import IndexSource


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
        if not self.works_ahead():
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
            # elements are collated later into new tensors: pinning them would be wasted
            runner = functools.partial(self._runner, ("each", chunk, workers), ApplyEach(fn),
                                       workers, False)
        return parallel_map(inputs, fn, workers, tuner, self.deterministic, stage,
                            processes=self.use_processes, chunk_size=chunk, runner=runner)

    def iterate_batched(self, ctx: Context, skip: int, batch: Node) -> Iterator:
        """Fused ``map().batch()`` for process workers: each worker maps and collates."""
        inputs, fn = self._inputs(ctx, skip)
        stage = self.stage(ctx)
        workers = ctx.cpu_share if self.num_parallel_calls == AUTOTUNE else self.num_parallel_calls
        stage.extra.update(workers=workers, fused_with_batch=True)
        drop = batch.batch_size if batch.drop_remainder else 0
        workers = max(1, workers or 1)
        chunk_fn = ApplyCollate(fn, batch.collate, drop)
        runner = functools.partial(self._runner, ("batch", batch.batch_size, drop, workers),
                                   chunk_fn, workers, ctx.pin_memory)
        return parallel_map(inputs, fn, workers, None, self.deterministic, stage,
                            processes=True, chunk_size=batch.batch_size, runner=runner)

    def _runner(self, key: tuple, chunk_fn: Callable, workers: int, pinned: bool):
        """Process workers kept across epochs (like DataLoader's persistent_workers).

        They are forked once, at the first epoch, and stopped when this stage is
        garbage-collected or the program exits (they are daemon processes). ``pinned``:
        a CUDA copy follows, so results are read into page-locked memory.
        """
        cached = self.__dict__.get("_workers")
        if cached is not None and cached.key == key and cached.claim():
            cached.pinned = pinned
            return cached
        runner = ProcessRunner(chunk_fn, workers)
        runner.key, runner.pinned = key, pinned
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

    def works_ahead(self) -> bool:
        return self.use_processes or self.num_parallel_calls not in (None, 0, 1)

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
