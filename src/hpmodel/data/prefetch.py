"""Prefetch to host memory and to the accelerator.

:class:`PrefetchNode` runs everything upstream in a background ``threading.Thread`` and
hands elements over through a bounded buffer, so producing element i+1 overlaps the
consumer's work on element i. With AUTOTUNE the buffer starts at one element and grows
each time the consumer finds it empty (up to 64).

:class:`DeviceNode` does the same and additionally copies each batch to a CUDA device
from pinned memory on a side CUDA stream (``torch.cuda.Stream``); the consumer's stream
waits on an event recorded after the copy, so the copy overlaps the previous step's
compute. On a CPU device it passes elements through unchanged.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Callable, Iterator

import torch

from .core import AUTOTUNE, Context, Node

clock = time.perf_counter
_END = object()
MAX_AUTOTUNE_BUFFER = 64


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


def background(make: Callable[[], Iterator], capacity: int, stage,
               transform: Callable[[Any], Any] | None = None) -> Iterator:
    """Yield the items of ``make()`` produced in a background thread.

    ``capacity=AUTOTUNE`` starts the buffer at 1 and grows it whenever the consumer
    waits. ``transform`` runs in the background thread on each item (the device copy).

    Example::

        list(background(lambda: iter(range(3)), 2, StageStats("prefetch")))  # [0, 1, 2]
    """
    autotune = capacity == AUTOTUNE
    limit = [1 if autotune else capacity]
    buffer: deque = deque()
    cond = threading.Condition()
    stop = threading.Event()

    def produce() -> None:
        iterator = None
        try:
            iterator = make()
            while not stop.is_set():
                t0 = clock()
                try:
                    item = next(iterator)
                except StopIteration:
                    item = _END
                if item is not _END and transform is not None:
                    item = transform(item)
                stage.add(clock() - t0, int(item is not _END))
                with cond:
                    while len(buffer) >= limit[0] and not stop.is_set():
                        cond.wait(0.1)
                    buffer.append(item)
                    cond.notify_all()
                if item is _END:
                    return
        except BaseException as error:  # noqa: BLE001 - re-raised in the consumer
            with cond:
                buffer.append(_Failure(error))
                cond.notify_all()
        finally:
            if iterator is not None and hasattr(iterator, "close"):
                iterator.close()  # stops nested threads and pools

    thread = threading.Thread(target=produce, name="hpmodel-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            with cond:
                if not buffer:
                    if autotune and limit[0] < MAX_AUTOTUNE_BUFFER:
                        limit[0] += 1  # the consumer starved: deepen the buffer
                        stage.extra["buffer_size"] = limit[0]
                    while not buffer:
                        cond.wait()
                item = buffer.popleft()
                cond.notify_all()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        with cond:
            cond.notify_all()
        thread.join(timeout=5)


class PrefetchNode(Node):
    """Produce up to ``buffer_size`` elements ahead in a background thread."""

    kind = "prefetch"
    one_to_one = True

    def __init__(self, upstream: Node, buffer_size: int):
        super().__init__(upstream)
        self.buffer_size = buffer_size

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
    """Batches copied to ``device`` through pinned memory on a side CUDA stream."""

    kind = "to_device"
    one_to_one = True

    def __init__(self, upstream: Node, device: torch.device, buffer_size: int):
        super().__init__(upstream)
        self.device = device
        self.buffer_size = buffer_size

    def iterate(self, ctx: Context, skip: int = 0) -> Iterator:
        if self.device.type != "cuda":  # CPU: nothing to overlap, pass through
            if self.device.type == "cpu":
                return self.upstream.iterate(ctx, skip)
            return (to_device(b, self.device, False) for b in self.upstream.iterate(ctx, skip))
        return self._cuda(ctx, skip)

    def _cuda(self, ctx: Context, skip: int) -> Iterator:
        device = self.device
        side = torch.cuda.Stream(device=device)

        def copy(batch: Any) -> tuple:
            with torch.cuda.device(device), torch.cuda.stream(side):
                moved = to_device(batch, device, non_blocking=True)
                event = torch.cuda.Event()
                event.record(side)
            return moved, event

        make = lambda: iter(self.upstream.iterate(ctx, skip))  # noqa: E731
        for moved, event in background(make, self.buffer_size, self.stage(ctx), copy):
            current = torch.cuda.current_stream(device)
            current.wait_event(event)
            for tensor in _tensors(moved):
                tensor.record_stream(current)  # memory stays valid for the consumer's stream
            yield moved

    def cardinality(self) -> int:
        return self.upstream.cardinality()
