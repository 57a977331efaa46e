"""Interleave: read several inputs (shard files) at once, and ``from_shards``.

Readers run in ``threading`` threads that fill bounded queues; the consumer takes
``block_length`` elements from each of ``cycle_length`` open readers in a fixed
round-robin order, so the output order does not depend on thread timing. Readers for
the next inputs are opened ahead of time (``lookahead``) to hide each file's
time-to-first-byte; with AUTOTUNE the lookahead grows while the consumer waits for a
freshly opened reader. File listing and reading go through ``fsspec``.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from typing import Any, Callable, Iterable, Iterator

import fsspec

from .core import AUTOTUNE, UNKNOWN, Context, Node, drain

clock = time.perf_counter
_END = object()
MAX_LOOKAHEAD = 64


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


class _Reader:
    """Iterate ``open_fn()`` in a daemon thread into a bounded queue.

    Items cross the queue in lists of up to ``CHUNK`` (or whatever arrived within
    ``FLUSH_SECONDS``): one lock round-trip per list instead of per record, which
    matters when dozens of reader threads share the GIL.
    """

    CHUNK = 64
    FLUSH_SECONDS = 0.005

    def __init__(self, open_fn: Callable[[], Iterable], stage, capacity: int = 2):
        self.queue: queue.Queue = queue.Queue(capacity)
        self.local: deque = deque()
        self.stop = threading.Event()
        self.opened_at = clock()
        self.thread = threading.Thread(target=self._run, args=(open_fn, stage), daemon=True,
                                       name="hpmodel-interleave")
        self.thread.start()

    def _run(self, open_fn, stage) -> None:
        pending: list = []
        try:
            iterator = iter(open_fn())
            first = clock()
            while not self.stop.is_set():
                t0 = clock()
                item = next(iterator, _END)
                stage.add(clock() - t0, 0)  # I/O time; elements are counted by the consumer
                if not pending:
                    first = t0
                pending.append(item)
                if item is _END or len(pending) >= self.CHUNK or \
                        clock() - first > self.FLUSH_SECONDS:
                    self._put(pending)
                    pending = []
                if item is _END:
                    return
        except BaseException as error:  # noqa: BLE001 - re-raised in the consumer
            self._put(pending + [_Failure(error)])

    def _put(self, item) -> None:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __next__(self) -> Any:
        if not self.local:
            self.local.extend(self.queue.get())
        item = self.local.popleft()
        if isinstance(item, _Failure):
            raise item.error
        if item is _END:
            raise StopIteration
        return item

    def ready(self) -> bool:
        """Whether an item can be taken without waiting."""
        return bool(self.local) or not self.queue.empty()

    def __iter__(self) -> "_Reader":
        return self

    def close(self) -> None:
        self.stop.set()


def _timed_io(make: Callable[[], Iterable], stage) -> Iterator:
    """``make()``'s items, charging the time to fetch them to ``stage`` (no threads)."""
    t0 = clock()
    iterator = iter(make())
    while True:
        item = next(iterator, _END)
        stage.add(clock() - t0, 0)
        if item is _END:
            return
        yield item
        t0 = clock()


class _Slot:
    """One open input: the element iterator plus the reader thread feeding it, if any."""

    def __init__(self, iterator: Iterator, reader: _Reader | None):
        self.iterator, self.reader = iterator, reader

    def __next__(self) -> Any:
        return next(self.iterator)

    def __iter__(self) -> "_Slot":
        return self

    def ready(self) -> bool:
        """Whether the reader has data buffered (always true without a thread)."""
        return self.reader is None or self.reader.ready()

    def close(self) -> None:
        """Stop the reader thread and release the parser."""
        if self.reader is not None:
            self.reader.close()
        if hasattr(self.iterator, "close"):
            self.iterator.close()


def plan_resume(inputs: list, sizes: list[int], cycle: int, block: int, skip: int) -> tuple:
    """The round-robin state after ``skip`` elements, computed from input sizes only.

    Mirrors ``InterleaveNode._cycle`` step by step without reading anything. Returns
    ``(slots, cur, taken, next_input)``: per slot ``(input index, records read)`` or
    None, the slot being read, elements taken from it in this block, and the first
    input not yet opened.

    Example::

        plan_resume(["a", "b"], [3, 3], cycle=2, block=1, skip=3)  # ([(0, 2), (1, 1)], 1, 0, 2)
    """
    nxt = 0

    def refill():
        nonlocal nxt
        if nxt < len(inputs):
            nxt += 1
            return [nxt - 1, 0]
        return None

    slots = [refill() for _ in range(cycle)]
    cur = taken = 0
    while skip > 0 and any(s is not None for s in slots):
        slot = slots[cur]
        while slot is not None and taken < block and skip > 0:
            if slot[1] >= sizes[slot[0]]:  # the reader ends: refill the slot, move on
                slots[cur] = refill()
                break
            n = min(block - taken, sizes[slot[0]] - slot[1], skip)
            slot[1] += n
            taken += n
            skip -= n
        if skip == 0:
            break
        cur, taken = (cur + 1) % cycle, 0
    return [tuple(s) if s else None for s in slots], cur, taken, nxt


class InterleaveNode(Node):
    """Round-robin over ``cycle_length`` readers ``fn(element)``, read in threads.

    Example::

        from_shards("data/*.shard").interleave(cycle_length=4, num_parallel_calls=AUTOTUNE)
    """

    kind = "interleave"

    def __init__(self, upstream: Node, fn: Callable, cycle_length: int, block_length: int,
                 num_parallel_calls: int | None, deterministic: bool,
                 opener: Callable[[Any, int], Iterable] | None = None,
                 finisher: Callable | None = None,
                 sizer: Callable[[Any], int | None] | None = None):
        super().__init__(upstream)
        # opener(element, start) runs in the reader thread (I/O); finisher(element, raw,
        # start, on_skip) turns its output into elements in the consumer thread (CPU).
        self.fn, self.opener, self.finisher, self.sizer = fn, opener, finisher, sizer
        self.cycle_length, self.block_length = cycle_length, block_length
        self.num_parallel_calls, self.deterministic = num_parallel_calls, deterministic
        self._sizes: dict = {}

    def _size(self, element) -> int | None:
        if element not in self._sizes:
            self._sizes[element] = self.sizer(element)
        return self._sizes[element]

    def works_ahead(self) -> bool:
        return self.num_parallel_calls not in (None, 0, 1)  # one reader thread per slot

    def iterate(self, ctx: Context, skip: int = 0) -> Iterator:
        inputs = list(self.upstream.iterate(ctx, 0))
        cycle = max(1, min(self.cycle_length, len(inputs) or 1))
        state = None
        if skip and self.opener is not None and self.sizer is not None:
            sizes = [self._size(e) for e in inputs]
            if all(s is not None for s in sizes):
                state = plan_resume(inputs, sizes, cycle, self.block_length, skip)
                skip = 0
        return drain(self._run(ctx, inputs, cycle, state), skip)

    def _open(self, element, start: int, ctx: Context, threaded: bool) -> "_Slot":
        if self.opener is not None:
            make = lambda: self.opener(element, start)  # noqa: E731
        else:
            make = lambda: self.fn(element)  # noqa: E731
        stage = self.stage(ctx)
        reader = _Reader(make, stage) if threaded else None
        raw = reader if reader is not None else _timed_io(make, stage)
        if self.finisher is not None:
            raw = self.finisher(element, raw, start, ctx.stats.count_skipped)
        return _Slot(raw, reader)

    def _run(self, ctx: Context, inputs: list, cycle: int, state) -> Iterator:
        stage = self.stage(ctx)
        calls = self.num_parallel_calls
        threaded = self.works_ahead()
        lookahead = [max(2 * cycle, 8) if calls == AUTOTUNE else max(0, (calls or 0) - cycle)]
        ahead: deque = deque()  # readers opened early for upcoming inputs
        nxt = [0]

        def open_next():
            while threaded and len(ahead) < lookahead[0] + 1 and nxt[0] < len(inputs):
                ahead.append(self._open(inputs[nxt[0]], 0, ctx, True))
                nxt[0] += 1
            if ahead:
                return ahead.popleft()
            if nxt[0] < len(inputs):
                nxt[0] += 1
                return self._open(inputs[nxt[0] - 1], 0, ctx, threaded)
            return None

        if state is None:
            slots, cur, taken = [open_next() for _ in range(cycle)], 0, 0
        else:
            planned, cur, taken, nxt[0] = state
            slots = [None if s is None else self._open(inputs[s[0]], s[1], ctx, threaded)
                     for s in planned]
        stage.extra.update(cycle_length=cycle, lookahead=lookahead[0])
        try:
            for item in self._cycle(slots, cur, taken, open_next, stage, lookahead, calls):
                stage.add(0.0, 1)
                yield item
        finally:
            for r in list(slots) + list(ahead):
                if r is not None:
                    r.close()

    def _cycle(self, slots, cur, taken, open_next, stage, lookahead, calls) -> Iterator:
        block, cycle = self.block_length, len(slots)
        while any(s is not None for s in slots):
            reader = slots[cur]
            if reader is not None and not self.deterministic and not reader.ready():
                ready = [i for i, s in enumerate(slots) if s is not None and s.ready()]
                if ready:  # sloppy mode: serve a reader that has data
                    cur, taken = ready[0], 0
                    reader = slots[cur]
            while reader is not None and taken < block:
                t0 = clock()
                item = next(reader, _END)
                if calls == AUTOTUNE and reader.reader is not None and clock() - t0 > 1e-3 \
                        and lookahead[0] < MAX_LOOKAHEAD:
                    # waited on a reader: open more inputs ahead (threads waiting on I/O
                    # cost no CPU; memory is bounded by 2 blocks per reader)
                    lookahead[0] = min(MAX_LOOKAHEAD, 2 * lookahead[0])
                    stage.extra["lookahead"] = lookahead[0]
                if item is _END:
                    slots[cur] = open_next()
                    break
                taken += 1
                yield item
            cur, taken = (cur + 1) % cycle, 0

    def cardinality(self) -> int:
        if self.sizer is None or self.upstream.cardinality() < 0:
            return UNKNOWN
        sizes = [self._size(e) for e in self.upstream.iterate(Context(), 0)]
        return UNKNOWN if any(s is None for s in sizes) else sum(sizes)


def list_shards(source: Any) -> list[str]:
    """Shard URLs from a glob, a directory, a single file, or a list (kept in order).

    Example::

        list_shards("memory://data/*.shard")  # ['memory://data/a.shard', ...]
    """
    if isinstance(source, (list, tuple)):
        urls = [str(s) for s in source]
        if not urls:
            raise FileNotFoundError("from_shards got an empty list: pass shard paths or a glob")
        return urls
    source = str(source)
    fs, path = fsspec.core.url_to_fs(source)
    if any(c in path for c in "*?["):
        found = sorted(fs.glob(path))
    elif fs.isdir(path):
        found = sorted(p for p in fs.find(path)
                       if p.endswith((".shard", ".tar", ".tar.gz", ".tgz")))
    else:
        found = [path] if fs.exists(path) else []
    if not found:
        raise FileNotFoundError(f"no shards match '{source}': check data.shards (write shards "
                                "with 'hpmodel data write')")
    if "://" not in source:
        return found
    return [fs.unstrip_protocol(p) for p in found]
