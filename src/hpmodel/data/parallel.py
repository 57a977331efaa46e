"""Parallel map with ordered reassembly, on threads or processes, and its autotuner.

Threads come from ``concurrent.futures.ThreadPoolExecutor`` (right for functions that
release the GIL: torch ops, numpy, I/O); processes from ``workers.py`` (for
pure-Python functions that hold the GIL). Work is submitted in input order and results
are taken from the head of a bounded window, so the output order is the input order
whatever the number of workers: element i of the output is ``fn(input i)``.

AUTOTUNE: :class:`Tuner` hill-climbs the window (elements in flight) from the measured
consumer wait; it grows while the consumer is starved and growing still raises the
output rate, and backs off when a step did not help. The worker count is bounded by
the pipeline's CPU budget.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any, Callable, Iterator

from .workers import ProcessRunner

clock = time.perf_counter


class Tuner:
    """Hill-climbing controller for one knob (parallelism or buffer size).

    Call :meth:`record` with the seconds the consumer waited for each element; read
    :attr:`value`. Every window of >= 50 ms it raises the value while the consumer
    waited > 5 % of the time, and reverts a raise that did not lift the rate by 5 %.

    Example::

        tuner = Tuner(start=1, low=1, high=8)
        tuner.record(waited=0.002)
        n = tuner.value
    """

    def __init__(self, start: int, low: int, high: int, period: float = 0.05):
        self.value, self.low, self.high, self.period = start, low, high, period
        self._t0, self._n, self._wait = clock(), 0, 0.0
        self._before: tuple[int, float] | None = None  # (value, rate) before last raise
        self._frozen = 0

    def record(self, waited: float) -> None:
        """Account one consumed element that the consumer waited ``waited`` seconds for."""
        self._n += 1
        self._wait += waited
        now = clock()
        elapsed = now - self._t0
        if elapsed < self.period or self._n < 4:
            return
        rate, starved = self._n / elapsed, self._wait / elapsed
        self._t0, self._n, self._wait = now, 0, 0.0
        if self._before is not None:
            old_value, old_rate = self._before
            self._before = None
            if rate < old_rate * 1.05:  # the last raise did not help: undo, pause
                self.value, self._frozen = old_value, 10
                return
        if self._frozen:
            self._frozen -= 1
        elif starved > 0.05 and self.value < self.high:
            self._before = (self.value, rate)
            self.value = min(self.high, self.value + max(1, self.value // 2))


class ApplyEach:
    """Chunk function: ``fn`` on every element of the chunk.

    Example::

        ApplyEach(abs)([-1, 2])  # [1, 2]
    """

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, chunk: list) -> list:
        fn = self.fn
        return [fn(x) for x in chunk]


class ApplyCollate:
    """Chunk function of a fused ``map().batch()``: map each element, collate the chunk.

    A worker then returns one batch (a few arrays) instead of many small elements,
    which is what makes process workers as cheap to talk to as DataLoader's.

    Example::

        ApplyCollate(abs, default_collate)([torch.tensor(-1), torch.tensor(2)])
    """

    def __init__(self, fn: Callable, collate: Callable, drop_short: int = 0):
        self.fn, self.collate, self.drop_short = fn, collate, drop_short

    def __call__(self, chunk: list) -> list:
        if len(chunk) < self.drop_short:
            return []
        fn = self.fn
        return [self.collate([fn(x) for x in chunk])]


def parallel_map(inputs: Iterator, fn: Callable, workers: int, tuner: Tuner | None,
                 deterministic: bool, stage, processes: bool = False,
                 chunk_size: int = 1, chunk_fn: Callable | None = None,
                 runner: Callable[[], Any] | None = None) -> Iterator:
    """Yield ``fn(x)`` for x in ``inputs`` using ``workers`` threads or processes.

    With ``tuner`` the window of chunks in flight follows ``tuner.value``; without it
    the window is ``2 * workers``. ``deterministic=False`` yields whichever result is
    ready first. ``chunk_fn`` (default ``ApplyEach(fn)``) maps a list of up to
    ``chunk_size`` inputs to a list of outputs. ``runner``, a factory of persistent
    process workers, is called at the first ``next`` (never by a mere ``iter``), and
    the workers are released, not closed, at the end.

    Example::

        list(parallel_map(iter(range(4)), abs, 2, None, True, StageStats("map")))
    """
    chunk_fn = chunk_fn or ApplyEach(fn)
    if runner is not None:
        runner = runner()
    elif processes:
        runner = ProcessRunner(chunk_fn, workers)
    else:
        runner = _ThreadRunner(chunk_fn, workers, stage)
    pending: deque = deque()
    exhausted = False
    try:
        while True:
            window = tuner.value if tuner is not None else 2 * workers
            while not exhausted and len(pending) < window:
                chunk = _take(inputs, chunk_size)
                if not chunk:
                    exhausted = True
                    break
                pending.append(runner.submit(chunk))
            if not pending:
                return
            t0 = clock()
            handle = pending.popleft() if deterministic else _pop_ready(pending, runner)
            results, seconds, n_in = runner.result(handle)
            waited = clock() - t0
            if processes:
                stage.add(seconds, n_in)
            if tuner is not None:
                tuner.record(waited)
                stage.extra["window"] = tuner.value
            yield from results
    finally:
        if hasattr(runner, "release"):
            runner.release(pending)
        else:
            runner.close()


def _take(inputs: Iterator, n: int) -> list:
    chunk = []
    for item in inputs:
        chunk.append(item)
        if len(chunk) == n:
            break
    return chunk


def _pop_ready(pending: deque, runner) -> Any:
    while True:
        for handle in pending:
            if runner.ready(handle):
                pending.remove(handle)
                return handle
        runner.wait_any(pending)


class _ThreadRunner:
    def __init__(self, fn: Callable, workers: int, stage):
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hpmodel-map")
        self.fn, self.stage = fn, stage

    def _work(self, chunk: list) -> tuple[list, float, int]:
        t0 = clock()
        out = self.fn(chunk)
        self.stage.add(clock() - t0, len(chunk))
        return out, 0.0, len(chunk)

    def submit(self, chunk: list):
        return self.pool.submit(self._work, chunk)

    def result(self, future) -> tuple[list, float, int]:
        return future.result()

    def ready(self, future) -> bool:
        return future.done()

    def wait_any(self, pending) -> None:
        wait(list(pending), return_when=FIRST_COMPLETED)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
