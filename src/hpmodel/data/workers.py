"""Process workers for ``map(use_processes=True)``, built on ``multiprocessing`` pipes.

Like DataLoader's workers: chunks of work are dealt round-robin to W forked processes
and their results read back in the same order, so output order never depends on
timing. Unlike ``multiprocessing.Pool`` there are no helper threads in the consumer's
process: the consumer sends tasks and receives results itself, so the training loop's
thread does not fight extra threads for the GIL. Each worker drains its task pipe in a
small thread of its own, which keeps either side from blocking on a full pipe.

Tensors cross the pipe as numpy arrays, out of band (``frames.py``): the consumer reads
each straight into its own — page-locked, when a CUDA copy follows — memory.

Trust: both sides ``pickle.loads`` what the other sent, as ``multiprocessing`` itself does.
The pipes are anonymous ``os.pipe`` pairs made here and inherited by the forked worker
only: no path, no port, no listener, so no other process can write a byte into them
(``tests/data/test_data_parallel.py`` checks that every end is a FIFO and that the run
opens no socket). Nothing read from disk or the network is ever unpickled here.
"""

from __future__ import annotations

import io
import multiprocessing
import pickle
import queue
import random
import threading
import time
import traceback
from collections import deque
from multiprocessing.connection import wait as wait_connections
from typing import Any, Callable

import numpy as np
import torch

from .frames import encode, read_message, send_parts, widen

clock = time.perf_counter


def _pack(obj: Any) -> Any:
    # Tensors travel as numpy arrays: pickling those is a memcpy, while pickling a
    # tensor goes through torch.save or a shared-memory file descriptor per tensor.
    if isinstance(obj, torch.Tensor) and obj.device.type == "cpu" and not obj.requires_grad:
        try:
            return _PackedTensor(obj.numpy())
        except TypeError:  # dtypes numpy lacks (bfloat16)
            return obj
    if isinstance(obj, tuple):
        return tuple(_pack(x) for x in obj)
    if isinstance(obj, list):
        return [_pack(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _pack(v) for k, v in obj.items()}
    return obj


def _unpack(obj: Any) -> Any:
    if isinstance(obj, _PackedTensor):
        return torch.from_numpy(obj.array)
    if isinstance(obj, tuple):
        return tuple(_unpack(x) for x in obj)
    if isinstance(obj, list):
        return [_unpack(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _unpack(v) for k, v in obj.items()}
    return obj


class _PackedTensor:
    __slots__ = ("array",)

    def __init__(self, array: np.ndarray):
        self.array = array

    def __reduce__(self):
        return (_PackedTensor, (self.array,))


def _worker_main(chunk_fn: Callable, tasks, results, seed: int) -> None:
    """Body of one worker process: run ``chunk_fn`` on each task, in order."""
    torch.set_num_threads(1)  # like DataLoader workers: no oversubscription
    # Forked workers inherit the parent's RNG states; without reseeding every worker
    # would draw the same "random" augmentations (DataLoader seeds the same way).
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    inbox: queue.Queue = queue.Queue()

    def receive() -> None:
        while True:
            try:
                inbox.put(tasks.recv_bytes())
            except (EOFError, OSError):
                inbox.put(b"")
                return

    threading.Thread(target=receive, daemon=True).start()
    out = io.FileIO(results.fileno(), "w", closefd=False)
    while True:
        payload = inbox.get()
        if not payload:
            return
        t0 = clock()
        try:
            chunk = _unpack(pickle.loads(payload))
            parts = encode(("ok", _pack(chunk_fn(chunk)), clock() - t0, len(chunk)))
        except BaseException as error:  # noqa: BLE001 - sent to the consumer
            parts = _error_parts(error)
        try:
            send_parts(out, parts)
        except (BrokenPipeError, OSError):
            return


def _error_parts(error: BaseException) -> list:
    text = traceback.format_exc()
    try:
        return encode(("error", error, text))
    except Exception:  # noqa: BLE001 - an unpicklable exception
        return encode(("error", RuntimeError(f"map function failed:\n{text}"), text))


_CLOSE_LOCK = threading.Lock()


class ProcessRunner:
    """W worker processes fed round-robin; the runner interface used by parallel_map.

    Example::

        runner = ProcessRunner(lambda chunk: [x * 2 for x in chunk], workers=2)
        handle = runner.submit([1, 2]); runner.result(handle)[0]  # [2, 4]
    """

    def __init__(self, chunk_fn: Callable, workers: int):
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        self.procs, self.tasks, self.results = [], [], []
        base_seed = int(torch.empty((), dtype=torch.int64).random_().item())
        for worker in range(workers):
            task_out, task_in = ctx.Pipe(duplex=False)
            result_out, result_in = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_worker_main, args=(chunk_fn, task_out, result_in,
                                                              base_seed + worker),
                               daemon=True, name="hpmodel-map-worker")
            proc.start()
            task_out.close()
            result_in.close()
            widen(result_out.fileno(), pipes=workers)
            self.procs.append(proc)
            self.tasks.append(task_in)
            self.results.append(result_out)
        self._reads = [io.FileIO(c.fileno(), "r", closefd=False) for c in self.results]
        self.pinned = False  # read results into page-locked memory (a CUDA copy follows)
        self.broken = False  # a read stopped mid-message: the pipes are out of step
        self.retired = False  # no new iteration may claim them (Pipeline.close)
        self.outstanding = [deque() for _ in range(workers)]
        self.done: dict = {}
        self.count = 0
        self.sessions = 0  # iterations using the workers now (two while an epoch is prepared)
        self.persistent = False
        self.closed = False
        self.key: Any = None
        self._submit_lock = threading.Lock()
        self._receive_locks = [threading.Lock() for _ in range(workers)]

    @property
    def busy(self) -> bool:
        return self.sessions > 0

    def claim(self) -> bool:
        """Take the workers for one epoch; False if they are closed or one died.

        Several iterations may hold them at once (the warm start prepares the next epoch
        while this one drains): each worker answers its tasks in the order it was given
        them, and results are matched to their task, so the epochs never mix.
        """
        with self._submit_lock:
            if self.closed or self.broken or self.retired \
                    or not all(p.is_alive() for p in self.procs):
                return False
            self.sessions += 1
            return True

    def retire(self) -> None:
        """Close the workers now if no iteration holds them, else when the last one ends."""
        with self._submit_lock:
            self.persistent, self.retired = False, True
            idle = self.sessions == 0
        if idle:
            self.close()

    def release(self, handles=()) -> None:
        """End of one iteration: drop its unread results (``handles``); keep the workers
        if persistent, else close them once no iteration holds them."""
        try:
            for handle in handles:
                self._wait(handle)
                self.done.pop(handle[0], None)
        except RuntimeError:
            self.persistent = False  # a worker died: do not reuse these
        with self._submit_lock:
            self.sessions = max(0, self.sessions - 1)
            idle = self.sessions == 0
        if not self.persistent and idle:
            self.close()

    def submit(self, chunk: list) -> tuple[int, int]:
        """Send ``chunk`` to the next worker in turn; returns its handle."""
        payload = pickle.dumps(_pack(chunk), protocol=5)
        with self._submit_lock:
            task, worker = self.count, self.count % len(self.procs)
            self.count += 1
            self.outstanding[worker].append(task)
            self.tasks[worker].send_bytes(payload)
        return task, worker

    def _receive(self, worker: int) -> None:
        """Read worker ``worker``'s next answer (the caller holds its receive lock)."""
        if self.closed or self.broken:  # never read an fd number that may be reused
            raise RuntimeError("the map workers were stopped (an earlier read failed or the "
                               "pipeline was closed): iterate again to start new ones")
        try:
            message = read_message(self._reads[worker], self.pinned)
        except (EOFError, OSError, ValueError):
            self._break()
            proc = self.procs[worker]
            proc.join(timeout=1)
            raise RuntimeError(f"a map worker process exited unexpectedly (exit code "
                               f"{proc.exitcode}): it may have run out of memory or "
                               "crashed in native code; try fewer workers") from None
        except BaseException:  # e.g. KeyboardInterrupt or MemoryError mid-message
            self._break()
            raise
        self.done[self.outstanding[worker].popleft()] = message

    def _break(self) -> None:
        """A read stopped inside a message: these workers cannot be read in step again."""
        self.broken, self.persistent = True, False
        self.close()

    def _wait(self, handle: tuple[int, int]) -> None:
        task, worker = handle
        while task not in self.done:
            with self._receive_locks[worker]:
                if task not in self.done:
                    self._receive(worker)

    def result(self, handle: tuple[int, int]) -> tuple[list, float, int]:
        """Wait for ``handle``'s results (workers answer in the order they were given work)."""
        self._wait(handle)
        head, buffers = self.done.pop(handle[0])
        message = pickle.loads(head, buffers=buffers)
        if message[0] == "error":
            raise message[1]
        _, out, seconds, n_in = message
        return _unpack(out), seconds, n_in

    def ready(self, handle: tuple[int, int]) -> bool:
        """Whether ``handle``'s result can be taken without waiting."""
        task, worker = handle
        with self._receive_locks[worker]:
            while task not in self.done and self.outstanding[worker] \
                    and self.results[worker].poll():
                self._receive(worker)  # answers ahead of ours may be another epoch's
        return task in self.done

    def wait_any(self, pending) -> None:
        """Block until a worker that owes one of ``pending`` has sent something (another
        iteration's answers on other workers' pipes would wake it for nothing)."""
        owing = sorted({worker for _, worker in pending})
        wait_connections([self.results[w] for w in owing] or self.results, timeout=0.1)

    def close(self) -> None:
        """Stop the workers without making the consumer wait for them (idempotent)."""
        with _CLOSE_LOCK:
            if self.closed:
                return
            self.closed = True
        for conn in self.tasks:
            try:
                conn.send_bytes(b"")
            except (BrokenPipeError, OSError):
                pass
        threading.Thread(target=self._reap, daemon=True).start()

    def _reap(self) -> None:
        for proc in self.procs:
            proc.join(timeout=2)
            if proc.is_alive():
                proc.terminate()
        for conn in self.tasks:
            conn.close()
        for lock, conn in zip(self._receive_locks, self.results):
            with lock:  # no reader is inside a read of this fd when it closes
                conn.close()
