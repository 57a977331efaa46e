"""Iterating a Pipeline: one pass is one epoch, its position, statistics and warm start.

:class:`EpochIteration` is the part of :class:`~hpmodel.data.pipeline.Pipeline` that runs
it: each ``iter()`` builds a :class:`~.core.Context` for the epoch (or takes the epoch
prepared in the background by ``warm.py``), counts the elements handed to the consumer
(the resumable position) and the time it waited for them (the input-bound fraction).

Example::

    for xb, yb in pipe:          # Pipeline inherits EpochIteration
        ...
    pipe.stats()["input_bound_fraction"]
"""

from __future__ import annotations

import time
from typing import Iterator

from .core import AUTOTUNE, Context, Node, Stats
from .warm import PreparedEpoch, lookahead, worth_preparing

clock = time.perf_counter


class EpochIteration:
    """Iteration state of a pipeline (mixed into Pipeline, which sets the attributes).

    Example::

        it = iter(pipe); next(it); pipe.stats()["elements"]  # 1
    """

    _node: Node
    _cpu_budget: int | None
    _warm_start: bool | None
    _prepared: PreparedEpoch | None
    _warmed: bool
    _epoch: int
    _position: int
    _resume_at: int | None
    _stats: Stats
    _live: int

    def __iter__(self) -> Iterator:
        skip = self._resume_at or 0
        self._resume_at = None
        prepared, self._prepared = self._prepared, None
        self._warmed = prepared is not None and prepared.matches(self._epoch, self._node, skip)
        if self._warmed:
            ctx, iterator = prepared.ctx, prepared.take()
        else:
            if prepared is not None:
                prepared.drop()
            ctx = self._context(self._epoch)
            iterator = self._node.iterate(ctx, skip)
        self._stats = ctx.stats
        self._live += 1
        return self._consume(iterator, ctx, skip, self._live)

    def _context(self, epoch: int) -> Context:
        budget = self._cpu_budget or Context().cpu_budget
        autotuned = sum(1 for n in self._chain()
                        if n.kind == "map" and n.num_parallel_calls == AUTOTUNE)
        return Context(epoch=epoch, stats=Stats(), cpu_budget=budget,
                       cpu_share=max(1, budget // max(1, autotuned)))

    def _prepare_at(self) -> int:
        """The element count after which the next epoch is started (-1: never)."""
        n = self.cardinality() if self._warm_start else -1
        return n - lookahead(n) if n > 0 else -1

    def _prepare(self, epoch: int) -> None:
        if worth_preparing(self._node):
            self._prepared = PreparedEpoch(epoch, self._node, self._context(epoch))

    def _consume(self, iterator: Iterator, ctx: Context, skip: int, token: int) -> Iterator:
        stats, start = ctx.stats, clock()
        prepare_at = self._prepare_at()  # -1: never; a resume past it prepares at once
        prepared = False
        if token == self._live:
            self._position = skip
        try:
            while True:
                t0 = clock()
                try:
                    item = next(iterator)
                except StopIteration:
                    break
                t1 = clock()
                stats.wait_seconds += t1 - t0
                stats.elements += 1
                stats.wall_seconds = t1 - start
                if token == self._live:
                    self._position += 1
                    if not prepared and 0 <= prepare_at <= self._position:
                        prepared = True
                        self._prepare(ctx.epoch + 1)
                yield item
            stats.wall_seconds = clock() - start
            if token == self._live and self._epoch == ctx.epoch:
                self._epoch, self._position = ctx.epoch + 1, 0  # the epoch is complete
        finally:
            if hasattr(iterator, "close"):
                iterator.close()

    def stats(self) -> dict:
        """Latest iteration's time per stage and input-bound fraction (consumer wait / wall).

        Example::

            print(pipe.stats()["input_bound_fraction"])
        """
        report = self._stats.report()
        report.update(epoch=self._epoch, position=self._position, warm_start=self._warmed)
        return report

    def close(self, keep_workers: bool = False) -> None:
        """Stop background work: the next epoch started early and (unless
        ``keep_workers``) the process workers; a later iteration starts afresh.

        Example::

            pipe.close()
        """
        prepared, self._prepared = self._prepared, None
        if prepared is not None:
            prepared.drop(wait=True)
        for node in [] if keep_workers else self._chain():
            workers = node.__dict__.pop("_workers", None)
            if workers is not None:
                workers.retire()  # closes now, or when the iteration holding them ends
