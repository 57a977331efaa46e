"""Weighted sampling across pipelines (tf.data's ``sample_from_datasets``).

Each output element comes from input ``i`` with probability ``weights[i]`` among the
inputs still running; the draws come from a numpy generator seeded by
``(seed, epoch, repeat passes)``, so the order is a pure function of the seed and the
epoch. ``stop_on="first_exhausted"`` ends the epoch the first time an exhausted input is
drawn (tf.data's ``stop_on_empty_dataset=True``); ``"all_exhausted"`` drops exhausted
inputs, renormalises the others' weights and goes on until every input is done.

Resume is exact and cheap when every input's cardinality is known: the draws of the
skipped prefix are replayed without data, which says how many elements to skip in each
input; otherwise the prefix is replayed with data and discarded.

Example::

    mixed = sample_from([web, books], [0.7, 0.3], seed=0)
"""

from __future__ import annotations

import bisect
from dataclasses import replace
from typing import Iterator

import numpy as np

from .core import INFINITE, UNKNOWN, Context, Node, Stats, drain, seeded_rng

STOP_RULES = ("first_exhausted", "all_exhausted")
_END = object()


class _Chooser:
    """Seeded weighted draws among the inputs still live (uniforms drawn in blocks).

    The cumulative weights of the live inputs change only when one is exhausted, so they
    are computed then (with numpy, as floats) and each draw is one ``bisect``.
    """

    def __init__(self, weights: np.ndarray, seed: int, keys: tuple):
        self.weights = weights.astype(np.float64)
        self.live = self.weights > 0
        self.rng = seeded_rng(seed, *keys)
        self.draws: Iterator = iter(())
        self._cumulate()

    def _cumulate(self) -> None:
        self.cum = np.cumsum(np.where(self.live, self.weights, 0.0)).tolist()
        self.total, self.last = self.cum[-1], len(self.cum) - 1

    def next(self) -> int:
        u = next(self.draws, None)
        if u is None:
            self.draws = iter(self.rng.random(1024).tolist())
            u = next(self.draws)
        return min(bisect.bisect_right(self.cum, u * self.total), self.last)

    def exhausted(self, i: int) -> bool:
        """Mark input ``i`` exhausted; True when no input is left."""
        self.live[i] = False
        self._cumulate()
        return not self.live.any()


class SampleNode(Node):
    """Elements drawn from several input chains by weight; a root node (no upstream).

    Example::

        SampleNode([a._node, b._node], [0.5, 0.5], seed=0, stop_on="all_exhausted")
    """

    kind = "sample_from"

    def __init__(self, inputs: list[Node], weights, seed: int, stop_on: str):
        super().__init__(None)
        self.inputs, self.seed, self.stop_on = list(inputs), int(seed), stop_on
        self.weights = np.asarray(weights, dtype=np.float64)

    def _sizes(self) -> list[int] | None:
        sizes = [n.cardinality() for n in self.inputs]
        return sizes if all(s >= 0 for s in sizes) else None

    def iterate(self, ctx: Context, skip: int = 0) -> Iterator:
        chooser = _Chooser(self.weights, self.seed, ctx.rng_keys())
        sizes = self._sizes() if skip else None
        starts = [0] * len(self.inputs)
        if sizes is not None:
            if not self._plan(chooser, sizes, starts, skip):
                return iter(())
            skip = 0
        return drain(self._mix(ctx, chooser, starts), skip)

    def _plan(self, chooser: _Chooser, sizes: list[int], counts: list[int], skip: int) -> bool:
        """Replay ``skip`` draws on sizes alone; False if the epoch ends inside them."""
        done = 0
        while done < skip:
            i = chooser.next()
            if counts[i] >= sizes[i]:
                if self.stop_on == "first_exhausted" or chooser.exhausted(i):
                    return False
                continue
            counts[i] += 1
            done += 1
        return True

    def _mix(self, ctx: Context, chooser: _Chooser, starts: list[int]) -> Iterator:
        stage = self.stage(ctx)
        child_stats = [Stats() for _ in self.inputs]
        iterators = [None] * len(self.inputs)
        if not chooser.live.any():
            return
        try:
            while True:
                i = chooser.next()
                if iterators[i] is None:
                    iterators[i] = iter(self.inputs[i].iterate(
                        replace(ctx, stats=child_stats[i]), starts[i]))
                item = next(iterators[i], _END)
                if item is _END:
                    if self.stop_on == "first_exhausted" or chooser.exhausted(i):
                        return
                    continue
                stage.add(0.0)
                yield item
        finally:
            stage.extra["inputs"] = [s.report()["stages"] for s in child_stats]
            for it in iterators:
                if it is not None and hasattr(it, "close"):
                    it.close()

    def cardinality(self) -> int:
        sizes = [n.cardinality() for n in self.inputs]
        if self.stop_on == "all_exhausted" and all(s >= 0 for s in sizes):
            return sum(s for s, w in zip(sizes, self.weights) if w > 0)
        if all(s == INFINITE for s, w in zip(sizes, self.weights) if w > 0):
            return INFINITE
        return UNKNOWN


def check_weights(n_inputs: int, weights, stop_on: str) -> np.ndarray:
    """Validated weights as an array (ValueError naming the fix otherwise).

    Example::

        check_weights(2, [1, 3], "all_exhausted")  # array([1., 3.])
    """
    if n_inputs < 1:
        raise ValueError("sample_from needs at least one pipeline: pass a list of pipelines")
    w = np.full(n_inputs, 1.0 / n_inputs) if weights is None else np.asarray(weights, float)
    if w.shape != (n_inputs,) or not np.all(np.isfinite(w)) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"sample_from weights must be {n_inputs} non-negative numbers with a "
                         f"positive sum, got {weights!r}: pass one weight per pipeline")
    if stop_on not in STOP_RULES:
        raise ValueError(f"sample_from stop_on must be one of {STOP_RULES}, got {stop_on!r}")
    return w / w.sum()
