"""The chainable :class:`Pipeline` and its sources ``from_tensors`` / ``from_dataset``.

Pure Python orchestration over the stages in ``stages.py``, ``interleave.py``,
``prefetch.py`` and ``cache.py``. A Pipeline is immutable: every method returns a new
one. Iterating it once is one epoch. Its resumable position is ``(epoch, number of
elements handed to the consumer)``; because order is a pure function of the seeds and
the epoch, restoring that pair (``load_state_dict``) and skipping reproduces the rest of
the epoch exactly, whatever the thread counts. With ``with_options(warm_start=True)`` the
next epoch is started in the background near an epoch's end (``warm.py``).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch

from .map_stage import MapNode
from .stages import (BatchNode, FilterNode, RepeatNode, ShuffleBufferNode, SkipNode, TakeNode,
                     UnbatchNode)
from .core import (AUTOTUNE, Node, Stats, chain_of, check_count, check_positive,
                   random_seed)
from .cache import FileCacheNode, MemoryCacheNode
from .position import position_state, rebuild, restored_chain
from .prefetch import DeviceNode, PrefetchNode
from .interleave import InterleaveNode
from .sharding import shard_pipeline
from .sources import IndexSource
from .interop import PipelineLoader
from .epochs import EpochIteration
from .warm import PreparedEpoch

class Pipeline(EpochIteration):
    """A chain of input stages; iterate it once per epoch.

    Example::

        pipe = from_tensors((x, y)).shuffle(1000, seed=0).batch(32).prefetch(AUTOTUNE)
        for epoch in range(3):
            pipe.set_epoch(epoch)
            for xb, yb in pipe:
                ...
    """

    def __init__(self, node: Node, cpu_budget: int | None = None,
                 warm_start: bool | None = None):
        self._node = node
        self._cpu_budget = cpu_budget
        self._warm_start = warm_start  # None: unset (off; the Trainer may turn it on)
        self._prepared: PreparedEpoch | None = None  # the next epoch, started early
        self._warmed = False  # whether the latest iteration was a prepared one
        for key, n in enumerate(self._chain()):
            n.key = key
        self._epoch = 0
        self._position = 0
        self._resume_at: int | None = None
        self._stats = Stats()
        self._live = 0  # id of the newest iterator; only it moves the position

    # --- building ------------------------------------------------------------------
    def _chain(self) -> list[Node]:
        return chain_of(self._node)

    def _then(self, node: Node) -> "Pipeline":
        return Pipeline(node, self._cpu_budget, self._warm_start)

    def map(self, fn: Callable, num_parallel_calls: int | None = None,
            deterministic: bool = True, use_processes: bool = False,
            chunk_size: int | None = None) -> "Pipeline":
        """Apply ``fn`` to every element, in ``num_parallel_calls`` threads (or processes).

        Output order equals input order when ``deterministic`` (the default). Use
        ``use_processes=True`` for pure-Python functions that hold the GIL; they then run
        in a ``multiprocessing`` pool in chunks of ``chunk_size`` elements.

        Example::

            pipe = from_tensors((x, y)).map(lambda e: (e[0] * 2, e[1]), num_parallel_calls=4)
        """
        if num_parallel_calls is not None:
            check_positive("num_parallel_calls", num_parallel_calls, allow_autotune=True)
        return self._then(MapNode(self._node, fn, num_parallel_calls, deterministic,
                                         use_processes, chunk_size))

    def filter(self, predicate: Callable[[Any], bool]) -> "Pipeline":
        """Keep the elements for which ``predicate(element)`` is true.

        Example::

            evens = from_tensors(torch.arange(10)).filter(lambda v: int(v) % 2 == 0)
        """
        return self._then(FilterNode(self._node, predicate))

    def interleave(self, fn: Callable[[Any], Iterable] | None = None, cycle_length: int = 4,
                   block_length: int = 1, num_parallel_calls: int | None = None,
                   deterministic: bool = True) -> "Pipeline":
        """Read ``cycle_length`` inputs at once, taking ``block_length`` elements from each.

        On a ``from_shards`` pipeline, call it without ``fn`` to read shards concurrently;
        otherwise ``fn(element)`` must return an iterable. ``num_parallel_calls`` threads
        read ahead (AUTOTUNE also opens later inputs early to hide time-to-first-byte).

        Example::

            pipe = from_shards("data/*.shard").interleave(cycle_length=4,
                                                          num_parallel_calls=AUTOTUNE)
        """
        check_positive("cycle_length", cycle_length)
        check_positive("block_length", block_length)
        if num_parallel_calls is not None:
            check_positive("num_parallel_calls", num_parallel_calls, allow_autotune=True)
        node = self._node
        if fn is not None:
            return self._then(InterleaveNode(node, fn, cycle_length, block_length,
                                             num_parallel_calls, deterministic))
        if not (isinstance(node, InterleaveNode) and node.opener is not None):
            raise ValueError("interleave() without a function only configures reading of a "
                             "from_shards pipeline: call it right after from_shards, or pass "
                             "fn returning an iterable per element")
        new = node.clone(node.upstream)
        new.cycle_length, new.block_length = cycle_length, block_length
        new.num_parallel_calls, new.deterministic = num_parallel_calls, deterministic
        return self._then(new)

    def cache(self, filename: str | None = None) -> "Pipeline":
        """Keep the elements of the first complete epoch, in memory or in ``filename``.

        A file cache is written atomically at the end of a complete epoch and reused by
        later runs (delete it to rebuild).

        Example::

            pipe = from_tensors(x).map(decode).cache("/tmp/decoded.cache").shuffle(1000, seed=0)
        """
        if filename is None:
            return self._then(MemoryCacheNode(self._node))
        return self._then(FileCacheNode(self._node, str(filename)))

    def shuffle(self, buffer_size: int, seed: int | None = None,
                reshuffle_each_iteration: bool = True) -> "Pipeline":
        """Shuffle; order is a pure function of ``(seed, epoch)``.

        Directly on an indexable source (tensors, a map-style Dataset, possibly followed
        by maps) this is a full seeded permutation of the indices and ``buffer_size``
        does not limit it; on streams it is a ``buffer_size`` shuffle buffer.

        Example::

            pipe = from_tensors((x, y)).shuffle(10_000, seed=0).batch(64)
        """
        check_positive("buffer_size", buffer_size)
        seed = random_seed() if seed is None else int(seed)
        chain = self._chain()
        root = chain[0]
        if (isinstance(root, IndexSource) and root.shuffle_seed is None and root.shard is None
                and all(n.kind in ("map", "prefetch") for n in chain[1:])):
            new_root = root.clone(None)
            new_root.shuffle_seed, new_root.reshuffle = seed, reshuffle_each_iteration
            return self._then(rebuild([new_root] + chain[1:]))
        return self._then(ShuffleBufferNode(self._node, buffer_size, seed,
                                                   reshuffle_each_iteration))

    def batch(self, batch_size: int, drop_remainder: bool = False,
              collate: Callable[[list], Any] | None = None) -> "Pipeline":
        """Group consecutive elements into batches (``default_collate`` unless ``collate``).

        Example::

            for xb, yb in from_tensors((x, y)).batch(32, drop_remainder=True):
                ...
        """
        check_positive("batch_size", batch_size)
        return self._then(BatchNode(self._node, batch_size, drop_remainder, collate))

    def unbatch(self) -> "Pipeline":
        """Split each batch back into elements.

        Example::

            rows = from_tensors(x).batch(8).unbatch()
        """
        return self._then(UnbatchNode(self._node))

    def repeat(self, count: int | None = None) -> "Pipeline":
        """Repeat ``count`` times (forever when None); each pass reshuffles.

        Example::

            stream = from_tensors(x).shuffle(100, seed=0).repeat()
        """
        if count is not None and (not isinstance(count, int) or count < 0):
            raise ValueError(f"repeat count must be None or a non-negative int, got {count!r}")
        return self._then(RepeatNode(self._node, count))

    def take(self, count: int) -> "Pipeline":
        """At most the first ``count`` elements; ``take(-1)`` keeps all (as in tf.data).

        Example::

            calibration = pipe.take(100)
        """
        check_count("take", count)
        return self._then(TakeNode(self._node, count))

    def skip(self, count: int) -> "Pipeline":
        """All elements but the first ``count``; ``skip(-1)`` skips all (as in tf.data).

        Example::

            rest = pipe.skip(100)
        """
        check_count("skip", count)
        return self._then(SkipNode(self._node, count))

    def prefetch(self, buffer_size: int = AUTOTUNE) -> "Pipeline":
        """Produce elements ahead of the consumer in a background thread.

        Example::

            pipe = from_tensors((x, y)).batch(64).prefetch(AUTOTUNE)
        """
        check_positive("buffer_size", buffer_size, allow_autotune=True)
        return self._then(PrefetchNode(self._node, buffer_size))

    def prefetch_to_device(self, device: str | torch.device, buffer_size: int = 2) -> "Pipeline":
        """Copy batches to ``device`` ahead of time (pinned memory, side CUDA stream).

        On a CPU device this passes batches through unchanged.

        Example::

            for xb, yb in from_tensors((x, y)).batch(256).prefetch_to_device("cuda"):
                loss = model(xb).sum()
        """
        check_positive("buffer_size", buffer_size, allow_autotune=True)
        return self._then(DeviceNode(self._node, torch.device(device), buffer_size))

    def as_dataloader(self) -> "PipelineLoader":
        """This pipeline where a torch DataLoader / IterableDataset is expected.

        Each ``iter`` is one epoch (the next one after a complete pass); it has ``len``,
        ``set_epoch``, ``state_dict``/``load_state_dict`` and ``batch_size``.

        Example::

            for xb, yb in pipe.as_dataloader():   # or hand it to Lightning / a plain loop
                ...
        """
        return PipelineLoader(self)

    def with_options(self, cpu_budget: int | None = None,
                     warm_start: bool | None = None) -> "Pipeline":
        """The same pipeline (and position) with AUTOTUNE limited to ``cpu_budget`` worker
        threads/processes, and/or with the next epoch started in the background near each
        epoch's end (``warm_start=True``; the Trainer turns it on for multi-epoch runs:
        the first batch of an epoch then waits on no stage's start-up).

        Example::

            pipe = pipe.with_options(cpu_budget=4, warm_start=True)
        """
        if cpu_budget is not None:
            check_positive("cpu_budget", cpu_budget)
        budget = self._cpu_budget if cpu_budget is None else cpu_budget
        new = Pipeline(self._node, budget,
                       self._warm_start if warm_start is None else bool(warm_start))
        new._epoch, new._position, new._resume_at = self._epoch, self._position, self._resume_at
        return new

    def shard(self, num_shards: int, index: int, mode: str = "element") -> "Pipeline":
        """This rank's disjoint part; over all ranks every element appears once per epoch.

        ``mode="element"``: elements dealt round-robin (as early in the chain as is
        exact, so each rank only maps its own elements). ``mode="batch"``: each global
        batch of B from the last ``batch`` stage is split into contiguous slices, rank r
        getting elements ``[r*B/n, (r+1)*B/n)`` of the same global batch order.
        ``mode="file"``: whole shard files dealt round-robin (``from_shards`` only).

        Example::

            local = pipe.shard(world_size, rank, mode="batch")
        """
        check_positive("num_shards", num_shards)
        if not isinstance(index, int) or not 0 <= index < num_shards:
            raise ValueError(f"shard index must be in [0, {num_shards}), got {index!r}: "
                             "pass the rank of this process")
        sharded = self._then(shard_pipeline(self._chain(), num_shards, index, mode))
        sharded._epoch = self._epoch  # the epoch set before sharding carries over
        return sharded

    # --- iterating: __iter__, stats, close in epochs.EpochIteration -------------

    @property
    def warm_start(self) -> bool | None:
        """Whether the next epoch starts in the background near each epoch's end: True,
        False, or None when nobody chose (off; ``Trainer.fit`` turns it on for runs of
        more than one epoch and back off for the last). An iteration option, so it may be
        set on a pipeline in place (``pipe.warm_start = False`` keeps the Trainer from it).

        Example::

            pipe.warm_start = True
        """
        return self._warm_start

    @warm_start.setter
    def warm_start(self, value: bool | None) -> None:
        self._warm_start = None if value is None else bool(value)

    @property
    def is_batched(self) -> bool:
        """Whether elements are batches: a ``batch`` stage not undone by ``unbatch``.

        Example::

            from_tensors(x).batch(4).is_batched  # True
        """
        kinds = [n.kind for n in self._chain() if n.kind in ("batch", "unbatch")]
        return bool(kinds) and kinds[-1] == "batch"

    def cardinality(self) -> int:
        """Number of elements per epoch; -1 if infinite, -2 if unknown.

        Example::

            from_tensors(torch.zeros(10)).batch(4).cardinality()  # 3
        """
        return self._node.cardinality()

    def __len__(self) -> int:
        n = self.cardinality()
        if n < 0:
            raise TypeError("this pipeline's length is unknown or infinite "
                            "(a filter, a stream source or repeat()): use cardinality()")
        return n

    def set_epoch(self, epoch: int) -> None:
        """Iterate epoch ``epoch`` next (shuffles depend on it); keeps a restored position.

        Example::

            pipe.set_epoch(3); first = next(iter(pipe))
        """
        if epoch != self._epoch:
            self._epoch, self._position, self._resume_at = int(epoch), 0, None

    def state_dict(self) -> dict:
        """Plain-data position: epoch, elements consumed, shuffle seeds, stage kinds.

        Example::

            torch.save({"data": pipe.state_dict()}, "ckpt.pt")  # loads with weights_only=True
        """
        return position_state(self._chain(), self._epoch, self._position)

    def load_state_dict(self, state: dict) -> None:
        """Resume at ``state``: the next iteration yields exactly the rest of that epoch.

        Example::

            pipe.load_state_dict(torch.load("ckpt.pt", weights_only=True)["data"])
        """
        self._node = restored_chain(self._chain(), state)
        self._epoch, self._position = int(state["epoch"]), int(state["position"])
        self._resume_at = self._position

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_stats"] = None  # holds locks; statistics do not travel
        state["_prepared"] = None  # a thread
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._stats = Stats()

    def __repr__(self) -> str:
        return "Pipeline(" + " -> ".join(n.kind for n in self._chain()) + ")"
