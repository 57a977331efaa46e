"""Prefetch to host memory and to the accelerator.

:class:`PrefetchNode` runs everything upstream in a background ``threading.Thread`` and
hands elements over through a bounded buffer, so producing element i+1 overlaps the
consumer's work on element i. With AUTOTUNE the buffer starts at one element and grows
each time the consumer finds it empty (up to 64).

:class:`DeviceNode` does the same and additionally copies each batch to a CUDA device
from pinned memory on a side CUDA stream (``torch.cuda.Stream``); the producer thread
waits for each copy to finish and marks the tensors as used by the consumer's stream
(``record_stream``), so the copy overlaps the previous steps' compute and the consumer
takes complete batches without a CUDA call of its own. On a CPU device it passes
elements through unchanged.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import replace
from typing import Any, Callable, Iterator

import torch

from .core import AUTOTUNE, Context, Node

clock = time.perf_counter
_END = object()
MAX_AUTOTUNE_BUFFER = 64


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


class _Handoff:
    """Bounded buffer from a producer thread to the consumer; AUTOTUNE deepens it."""

    def __init__(self, capacity: int, stage):
        self.autotune = capacity == AUTOTUNE
        self.limit = 1 if self.autotune else capacity
        self.buffer: deque = deque()
        self.cond = threading.Condition()
        self.stop = threading.Event()
        self.stage = stage

    def put(self, item: Any) -> None:
        """Producer side: wait for room (or for the consumer to leave), then append."""
        with self.cond:
            while len(self.buffer) >= self.limit and not self.stop.is_set():
                self.cond.wait(0.1)
            self.buffer.append(item)
            self.cond.notify_all()

    def take(self) -> Any:
        """Consumer side: the next item, waiting if the buffer is empty."""
        with self.cond:
            if not self.buffer:
                if self.autotune and self.limit < MAX_AUTOTUNE_BUFFER:
                    self.limit += 1  # the consumer starved: deepen the buffer
                    self.stage.extra["buffer_size"] = self.limit
                while not self.buffer:
                    self.cond.wait()
            item = self.buffer.popleft()
            self.cond.notify_all()
            return item

    def close(self) -> None:
        """Tell the producer to stop."""
        self.stop.set()
        with self.cond:
            self.cond.notify_all()


def _produce(make: Callable[[], Iterator], transform, handoff: _Handoff, stage) -> None:
    iterator = None
    try:
        iterator = make()
        while not handoff.stop.is_set():
            t0 = clock()
            item = next(iterator, _END)
            if item is not _END and transform is not None:
                item = transform(item)
            stage.add(clock() - t0, int(item is not _END))
            handoff.put(item)
            if item is _END:
                return
    except BaseException as error:  # noqa: BLE001 - re-raised in the consumer
        handoff.put(_Failure(error))
    finally:
        if iterator is not None and hasattr(iterator, "close"):
            iterator.close()  # stops nested threads and worker processes


def background(make: Callable[[], Iterator], capacity: int, stage,
               transform: Callable[[Any], Any] | None = None) -> Iterator:
    """Yield the items of ``make()`` produced in a background thread.

    ``capacity=AUTOTUNE`` starts the buffer at 1 and grows it whenever the consumer
    waits. ``transform`` runs in the background thread on each item (the device copy).

    Example::

        list(background(lambda: iter(range(3)), 2, StageStats("prefetch")))  # [0, 1, 2]
    """
    handoff = _Handoff(capacity, stage)
    thread = threading.Thread(target=_produce, args=(make, transform, handoff, stage),
                              name="hpmodel-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = handoff.take()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        handoff.close()
        thread.join(timeout=5)


class PrefetchNode(Node):
    """Produce up to ``buffer_size`` elements ahead in a background thread.

    Example::

        from_tensors(x).batch(64).prefetch(AUTOTUNE)
    """

    kind = "prefetch"
    one_to_one = True

    def __init__(self, upstream: Node, buffer_size: int):
        super().__init__(upstream)
        self.buffer_size = buffer_size

    def works_ahead(self) -> bool:
        return True

    def iterate(self, ctx: Context, skip: int = 0) -> Iterator:
        stage = self.stage(ctx)
        stage.extra["buffer_size"] = 1 if self.buffer_size == AUTOTUNE else self.buffer_size
        return background(lambda: iter(self.upstream.iterate(ctx, skip)), self.buffer_size, stage)

    def cardinality(self) -> int:
        return self.upstream.cardinality()


def to_device(obj: Any, device: torch.device, non_blocking: bool) -> Any:
    """Copy every tensor in ``obj`` (tensor, tuple, list, dict) to ``device``.

    Example::

        x, y = to_device((torch.zeros(2), torch.ones(2)), torch.device("cpu"), False)
    """
    if isinstance(obj, torch.Tensor):
        if non_blocking and not obj.is_pinned():
            obj = obj.pin_memory()
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, tuple):
        return tuple(to_device(x, device, non_blocking) for x in obj)
    if isinstance(obj, list):
        return [to_device(x, device, non_blocking) for x in obj]
    if isinstance(obj, dict):
        return {k: to_device(v, device, non_blocking) for k, v in obj.items()}
    return obj


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for x in obj:
            yield from _tensors(x)
    elif isinstance(obj, dict):
        for x in obj.values():
            yield from _tensors(x)


class DeviceNode(Node):
    """Batches copied to ``device`` through pinned memory on a side CUDA stream.

    Example::

        from_tensors((x, y)).batch(256).prefetch_to_device("cuda")
    """

    kind = "to_device"
    one_to_one = True

    def __init__(self, upstream: Node, device: torch.device, buffer_size: int):
        super().__init__(upstream)
        self.device = device
        self.buffer_size = buffer_size

    def works_ahead(self) -> bool:
        return self.device.type == "cuda"  # elsewhere it copies (or passes) in the consumer

    def iterate(self, ctx: Context, skip: int = 0) -> Iterator:
        if self.device.type != "cuda":  # CPU: nothing to overlap, pass through
            if self.device.type == "cpu":
                return self.upstream.iterate(ctx, skip)
            return (to_device(b, self.device, False) for b in self.upstream.iterate(ctx, skip))
        return self._cuda(ctx, skip)

    def _cuda(self, ctx: Context, skip: int) -> Iterator:
        device = self.device
        side = torch.cuda.Stream(device=device)
        # The stream the consumer computes on, as the thread that starts this generator
        # sees it (a prepared epoch starts in its own thread: the default stream), checked
        # again at every hand-over below, in the consumer's thread.
        consumer = torch.cuda.current_stream(device)

        def copy(batch: Any) -> Any:
            # In the producer's thread: copy on the side stream and wait for it there, so
            # the batch handed over is complete and the consumer makes no CUDA call per
            # batch (each would release the GIL and queue it behind this thread's work).
            with torch.cuda.device(device), torch.cuda.stream(side):
                moved = to_device(batch, device, non_blocking=True)
                event = torch.cuda.Event(blocking=True)  # the wait sleeps, not spins
                event.record(side)
            event.synchronize()
            for tensor in _tensors(moved):
                tensor.record_stream(consumer)  # memory stays valid for the consumer's stream
            return moved

        pinned = replace(ctx, pin_memory=True)  # process workers' batches arrive pinned
        make = lambda: iter(self.upstream.iterate(pinned, skip))  # noqa: E731
        for moved in background(make, self.buffer_size, self.stage(ctx), copy):
            current = torch.cuda.current_stream(device)  # no GIL release, unlike CUDA calls
            if current != consumer:  # the consumer computes on another stream: mark it too
                for tensor in _tensors(moved):
                    tensor.record_stream(current)
            yield moved

    def cardinality(self) -> int:
        return self.upstream.cardinality()
