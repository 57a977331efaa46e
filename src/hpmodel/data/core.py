"""The node protocol, iteration context, statistics and errors of the input pipeline.

A :class:`~hpmodel.data.Pipeline` is a chain of nodes; iterating it asks the last node
for an iterator, which asks its upstream node, and so on down to the source. Each node
implements ``iterate(ctx, skip)``: yield its own output elements starting at index
``skip`` of the current epoch. Nodes that can translate ``skip`` into a cheaper skip
upstream (map, batch, take, prefetch, an indexable source) do so; the others replay
and discard, which is still exact because element order is a pure function of
``(seed, epoch)``.

Plain Python does the work here (``threading``, ``itertools``); numpy supplies the
seeded random generators.
"""

from __future__ import annotations

import copy
import itertools
import os
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Iterator

import numpy as np

AUTOTUNE = -1
"""Let the pipeline choose parallelism or buffer size at run time (like ``tf.data.AUTOTUNE``).

Example::

    pipe = from_tensors((x, y)).map(augment, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)
"""

INFINITE = -1
"""Cardinality of a pipeline that never ends (``repeat()`` without a count)."""

UNKNOWN = -2
"""Cardinality of a pipeline whose length cannot be known without iterating it."""


class CorruptRecordError(ValueError):
    """A record failed its checksum or could not be parsed; the message names shard and offset.

    Example::

        try:
            list(from_shards("data/*.shard"))
        except CorruptRecordError as err:
            print(err)   # corrupt record in shard 'data/a.shard' at byte offset 4096: ...
    """


def seeded_rng(seed: int, *keys: int) -> np.random.Generator:
    """A numpy generator that is a pure function of ``(seed, *keys)``.

    Example::

        perm = seeded_rng(0, epoch).permutation(10)
    """
    return np.random.default_rng(np.random.SeedSequence([int(seed), *map(int, keys)]))


def random_seed() -> int:
    """A fresh 63-bit seed from the OS, used when the user passes ``seed=None``.

    Example::

        seed = random_seed()
    """
    return int.from_bytes(os.urandom(8), "little") >> 1


class StageStats:
    """Counters of one pipeline stage: elements produced and seconds of work done.

    Example::

        st = StageStats("map"); st.add(0.001); st.report()["elements"]  # 1
    """

    def __init__(self, name: str):
        self.name = name
        self.elements = 0
        self.busy_seconds = 0.0
        self.extra: dict[str, Any] = {}
        self._lock = threading.Lock()

    def add(self, seconds: float, elements: int = 1) -> None:
        """Record ``elements`` produced using ``seconds`` of work (thread-safe)."""
        with self._lock:
            self.busy_seconds += seconds
            self.elements += elements

    def report(self) -> dict:
        """The counters as a plain dict."""
        return {"stage": self.name, "elements": self.elements,
                "busy_seconds": round(self.busy_seconds, 6), **self.extra}


class Stats:
    """Time per stage plus the consumer's wait time (the input-bound fraction).

    Example::

        stats = Stats(); stats.stage(0, "source").add(0.5); stats.report()["stages"][0]["stage"]
    """

    def __init__(self):
        self.stages: dict[int, StageStats] = {}
        self.wait_seconds = 0.0
        self.wall_seconds = 0.0
        self.elements = 0
        self.skipped_records = 0
        self._lock = threading.Lock()

    def stage(self, key: int, name: str) -> StageStats:
        """The counters of stage ``key`` (its index in the chain), created on first use."""
        with self._lock:
            if key not in self.stages:
                self.stages[key] = StageStats(name)
            return self.stages[key]

    def count_skipped(self, n: int = 1) -> None:
        """Count records skipped because of ``ignore_errors=True``."""
        with self._lock:
            self.skipped_records += n

    def report(self) -> dict:
        """A JSON-ready summary: stages in pipeline order, wait and wall time, fraction."""
        wall = self.wall_seconds
        return {
            "stages": [self.stages[k].report() for k in sorted(self.stages)],
            "elements": self.elements,
            "wall_seconds": round(wall, 6),
            "wait_seconds": round(self.wait_seconds, 6),
            "input_bound_fraction": round(self.wait_seconds / wall, 6) if wall > 0 else 0.0,
            "skipped_records": self.skipped_records,
        }


@dataclass
class Context:
    """What one iteration of a pipeline needs to know: epoch, statistics, CPU budget.

    ``repeat_pass`` holds the pass numbers of enclosing ``repeat`` nodes so a shuffle
    inside a repeat reshuffles on every pass while staying a pure function of the seed.

    Example::

        ctx = Context(epoch=3); ctx.for_pass(1).rng_keys()  # (3, 1)
    """

    epoch: int = 0
    stats: Stats = field(default_factory=Stats)
    cpu_budget: int = field(default_factory=lambda: max(1, os.cpu_count() or 1))
    cpu_share: int = 0  # workers an AUTOTUNE stage may use; 0 = the whole budget
    repeat_pass: tuple = ()
    pin_memory: bool = False  # a CUDA copy follows: stages may produce page-locked tensors

    def __post_init__(self):
        if self.cpu_share <= 0:
            self.cpu_share = self.cpu_budget

    def rng_keys(self) -> tuple:
        """Keys that, with a seed, define this iteration's random order."""
        return (self.epoch, *self.repeat_pass)

    def for_pass(self, k: int) -> "Context":
        """The context of pass ``k`` of a repeat node."""
        return replace(self, repeat_pass=self.repeat_pass + (k,))


class Node:
    """One stage of a pipeline. Subclasses implement :meth:`iterate`.

    ``cheap_skip`` says whether ``iterate(ctx, skip)`` skips without doing the work of
    the skipped elements; ``one_to_one`` says the stage maps element i to element i
    (so shards and skips may be pushed below it).

    Example::

        class Identity(Node):
            def iterate(self, ctx, skip=0):
                return self.upstream.iterate(ctx, skip)
    """

    kind = "node"
    one_to_one = False
    cheap_skip = False

    def __init__(self, upstream: "Node | None" = None):
        self.upstream = upstream
        self.key = 0  # index in the chain, set by Pipeline; names the stage in stats

    def iterate(self, ctx: Context, skip: int = 0) -> Iterator:
        """Yield this node's elements of epoch ``ctx.epoch``, starting at index ``skip``."""
        raise NotImplementedError

    def warm_ready(self) -> bool:
        """Whether another iteration may start while one runs (False: a cache filling)."""
        return True

    def works_ahead(self) -> bool:
        """Whether this stage produces in threads or processes of its own, ahead of its
        consumer (prefetch, device copy, parallel map or interleave)."""
        return False

    def cardinality(self) -> int:
        """Number of elements, or INFINITE (-1) / UNKNOWN (-2)."""
        return UNKNOWN

    def clone(self, upstream: "Node | None") -> "Node":
        """A shallow copy of this node on top of ``upstream``."""
        new = copy.copy(self)
        new.upstream = upstream
        return new

    def stage(self, ctx: Context) -> StageStats:
        """This node's statistics in ``ctx``."""
        return ctx.stats.stage(self.key, self.kind)


def chain_of(node: Node | None) -> list[Node]:
    """The nodes from the source up to ``node`` (root first), following ``upstream``.

    Example::

        [n.kind for n in chain_of(pipe._node)]  # e.g. ['source', 'map', 'batch']
    """
    chain = []
    while node is not None:
        chain.append(node)
        node = node.upstream
    return chain[::-1]


def drain(iterator: Iterator, skip: int) -> Iterator:
    """Drop the first ``skip`` elements of ``iterator`` (the replay path of a resume).

    Example::

        list(drain(iter(range(5)), 2))  # [2, 3, 4]
    """
    return itertools.islice(iterator, skip, None) if skip else iterator


def timed_iter(iterator: Iterator, stage: StageStats) -> Iterator:
    """Yield from ``iterator``, charging the time spent in ``next`` to ``stage``.

    Example::

        list(timed_iter(iter([1, 2]), StageStats("source")))  # [1, 2]
    """
    clock = time.perf_counter
    while True:
        t0 = clock()
        try:
            item = next(iterator)
        except StopIteration:
            return
        stage.add(clock() - t0)
        yield item


def check_positive(name: str, value: Any, allow_autotune: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is a positive int (or AUTOTUNE if allowed).

    Example::

        check_positive("batch_size", 32)
    """
    if allow_autotune and value == AUTOTUNE:
        return
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        extra = " or hpmodel.data.AUTOTUNE" if allow_autotune else ""
        raise ValueError(f"{name} must be a positive integer{extra}, got {value!r}: "
                         f"pass e.g. {name}=4")

def check_count(name: str, count: int) -> None:
    """``take`` / ``skip`` counts: a non-negative int, or -1 for all (as in tf.data).

    Example::

        check_count("take", -1)  # fine
    """
    if not isinstance(count, int) or isinstance(count, bool) or count < -1:
        raise ValueError(f"{name} count must be a non-negative int or -1 (all), got {count!r}")
