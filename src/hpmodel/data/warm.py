"""Warm start: the next epoch's first elements prepared while this epoch's last are consumed.

At the epoch boundary an input pipeline normally stalls: every stage starts empty, so
the consumer waits for the first batch to travel the whole chain (DataLoader with
``persistent_workers`` pays this too; tf.data avoids it only inside ``repeat()``). A
:class:`Pipeline` with a background stage (``prefetch``, ``prefetch_to_device`` or a
parallel ``map`` or ``interleave``) and ``with_options(warm_start=True)`` therefore starts iterating epoch
e + 1 in a thread once the consumer is ``lookahead(n)`` elements from the end of epoch e,
and hands it over when the consumer asks for epoch e + 1. Process workers are shared
between the two epochs (``workers.ProcessRunner`` keeps each task's answer with its
task), so nothing is forked again. Order and resume are those of a cold start: the
prepared epoch is exactly ``iterate(ctx, 0)`` of the same chain, and it is dropped when
the next iteration asks for anything else (another epoch, a resumed position, a restored
chain). A cache that is still filling is never read twice at once: no epoch is prepared
until it is complete. Off unless chosen (after a pipeline's last epoch the prepared one
is wasted work, which ``close()`` drops); the Trainer turns it on for runs of more than one
epoch, off for their last, unless the pipeline says ``warm_start = False``. The epoch's
iterator is built in the background thread too, so eager work (an index permutation) and
its errors belong to the epoch that needs them. Plain ``threading``; the overlapping work
itself is the stages' own.

Example::

    pipe = (from_tensors((x, y)).map(f, num_parallel_calls=4, use_processes=True).batch(64)
            .with_options(warm_start=True))
    for epoch in range(3):           # epochs 1 and 2 start from prepared batches
        for xb, yb in pipe:
            ...
    pipe.stats()["warm_start"]       # True: this epoch's first batch was prepared
"""

from __future__ import annotations

import threading
from typing import Iterator

from .core import Context, Node

LOOKAHEAD = 8  # elements before the end of an epoch at which the next one is started


def lookahead(n: int) -> int:
    """How many elements before the end of an ``n``-element epoch to start the next.

    Example::

        lookahead(100)  # 8
    """
    return max(1, min(LOOKAHEAD, n // 4))


def _nodes(node: Node | None) -> Iterator[Node]:
    while node is not None:
        yield node
        for sub in getattr(node, "inputs", ()):  # sample_from's pipelines
            yield from _nodes(sub)
        node = node.upstream


def worth_preparing(node: Node) -> bool:
    """Whether preparing the next epoch in the background pays and is safe now.

    It pays when some stage works ahead of its consumer (``Node.works_ahead``: prefetch,
    device copy, parallel map or interleave); it is safe when no stage is still filling a
    cache.

    Example::

        worth_preparing(from_tensors(x).batch(4).prefetch(2)._node)  # True
    """
    nodes = list(_nodes(node))
    if not all(n.warm_ready() for n in nodes):
        return False
    return any(n.works_ahead() for n in nodes)


class PreparedEpoch:
    """Epoch ``epoch`` of ``node`` started in a thread: its first element is pulled there.

    Example::

        prepared = PreparedEpoch(1, node, ctx)
        if prepared.matches(1, node, skip=0):
            iterator = prepared.take()
    """

    def __init__(self, epoch: int, node: Node, ctx: Context):
        self.epoch, self.node, self.ctx = epoch, node, ctx
        self.iterator: Iterator | None = None  # built in the thread: no eager work here
        self.first: tuple | None = None
        self._lock = threading.Lock()
        self._dropped = False
        self.thread = threading.Thread(target=self._pull, name="hpmodel-next-epoch", daemon=True)
        self.thread.start()

    def _pull(self) -> None:
        try:
            self.iterator = iter(self.node.iterate(self.ctx, 0))
            first = ("item", next(self.iterator))
        except StopIteration:
            first = ("end", None)
        except BaseException as error:  # noqa: BLE001 - raised where the epoch is consumed
            first = ("error", error)
        with self._lock:
            self.first = first
            dropped = self._dropped
        if dropped:
            self._close()

    def matches(self, epoch: int, node: Node, skip: int) -> bool:
        """Whether an iteration of ``epoch`` from ``skip`` over ``node`` is this one."""
        return skip == 0 and epoch == self.epoch and node is self.node

    def take(self) -> Iterator:
        """The prepared epoch's elements, the first one included."""
        self.thread.join()
        return self._replay()

    def _replay(self) -> Iterator:
        kind, value = self.first
        try:
            if kind == "error":
                raise value
            if kind == "item":
                yield value
                yield from self.iterator
        finally:
            self._close()

    def drop(self, wait: bool = False) -> None:
        """Stop the prepared epoch: now, or as soon as its first element arrives (``wait``:
        return only once it has stopped, its in-flight work drained)."""
        if wait:
            self.thread.join()
        with self._lock:
            self._dropped = True
            ready = self.first is not None
        if ready:
            self._close()

    def _close(self) -> None:
        if self.iterator is not None and hasattr(self.iterator, "close"):
            self.iterator.close()
