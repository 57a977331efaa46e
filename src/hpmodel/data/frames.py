"""Pickled messages over a pipe with their large buffers out of band, read without copies.

A map worker's batch is mostly a few big arrays. Pickled in band and read through
``multiprocessing.Connection``, each array is copied three times in the consumer
(chunks joined, ``BytesIO``, ``pickle.loads``) and the device copy then pins it once
more — all while holding the GIL the training loop needs. Here the worker pickles with
protocol 5 and a ``buffer_callback`` (PEP 574), so arrays travel as raw bytes after a
small header, and the consumer reads each one straight into memory it allocated itself
(``io.FileIO.readinto``, which releases the GIL during the read): when a CUDA copy
follows, that memory is page-locked (``torch.empty(pin_memory=True)``, from torch's
caching host allocator), so the batch arrives pinned and its device copy is a true
asynchronous one. ``pickle.loads(head, buffers=...)`` then wraps the buffers without
copying them.

Frame: ``<Q head bytes><I buffer count><Q size>...`` then the head, then the buffers.
Trust: the reader unpickles the head, so it must come from a pipe only trusted processes
write (``workers.py``: anonymous pipes to its own forked workers); never a file or socket.

Example::

    r, w = os.pipe()
    send_message(io.FileIO(w, "w", closefd=False), ("ok", np.zeros(4)))
    head, buffers = read_message(io.FileIO(r, "r", closefd=False), pinned=False)
    pickle.loads(head, buffers=buffers)  # ('ok', array([0., 0., 0., 0.]))
"""

from __future__ import annotations

import io
import pickle
import struct
from typing import Any

import torch

try:
    import fcntl
except ImportError:  # not POSIX: pipes keep their default size
    fcntl = None

_PREFIX = struct.Struct("<QI")
PIPE_BYTES = 1 << 20  # ask Linux for 1 MiB pipes: fewer reads (and GIL hand-offs) per batch
PIPES_BUDGET = 32 << 20  # but at most this much for all of one runner's result pipes: an
# unprivileged user's pipes share a 64 MiB soft limit (pipe-user-pages-soft), past which
# every new pipe of that user, other programs' too, shrinks to one page


def widen(fd: int, pipes: int = 1) -> None:
    """Grow the pipe behind ``fd`` toward :data:`PIPE_BYTES` (less when ``pipes`` share
    :data:`PIPES_BUDGET`), where the OS allows it."""
    size = max(1 << 16, min(PIPE_BYTES, PIPES_BUDGET // max(1, pipes)))
    if fcntl is None:
        return
    try:
        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), size)
    except OSError:
        pass  # a lower /proc/sys/fs/pipe-max-size, or not Linux: the default size works


def encode(message: Any) -> list:
    """``message`` as the parts of one frame (raises if it cannot be pickled)."""
    buffers: list = []
    head = pickle.dumps(message, protocol=5, buffer_callback=buffers.append)
    views = [b.raw() for b in buffers]
    sizes = [v.nbytes for v in views]
    prefix = _PREFIX.pack(len(head), len(sizes)) + struct.pack(f"<{len(sizes)}Q", *sizes)
    return [prefix + head, *views]


def send_message(out: io.FileIO, message: Any) -> None:
    """Write ``message`` (pickled, large buffers out of band) to ``out``."""
    send_parts(out, encode(message))


def send_parts(out: io.FileIO, parts: list) -> None:
    """Write the parts made by :func:`encode`."""
    for part in parts:
        _write_all(out, part)


def read_message(source: io.FileIO, pinned: bool) -> tuple[bytearray, list]:
    """The next message's pickle head and its buffers (page-locked if ``pinned``)."""
    head_size, count = _PREFIX.unpack(_read_exact(source, _PREFIX.size))
    sizes = struct.unpack(f"<{count}Q", _read_exact(source, 8 * count)) if count else ()
    head = _read_exact(source, head_size)
    buffers = []
    for size in sizes:
        block = torch.empty(size, dtype=torch.uint8, pin_memory=pinned)
        view = memoryview(block.numpy())
        _read_into(source, view)
        buffers.append(view)  # the arrays built on it keep ``block`` alive
    return head, buffers


def _write_all(out: io.FileIO, data) -> None:
    view = memoryview(data).cast("B")
    while view.nbytes:
        written = out.write(view)
        view = view[written:]


def _read_exact(source: io.FileIO, size: int) -> bytearray:
    data = bytearray(size)
    _read_into(source, memoryview(data))
    return data


def _read_into(source: io.FileIO, view: memoryview) -> None:
    view = view.cast("B")
    while view.nbytes:
        got = source.readinto(view)
        if not got:
            raise EOFError("the worker's pipe closed mid-message")
        view = view[got:]
