"""Staging for asynchronous backups: a copy of the training state in host buffers that
are allocated once and reused, so a backup blocks the loop for the copy alone.

PyTorch does the heavy lifting: pinned host memory (``pin_memory=True``), a side CUDA
stream for the device→host copy and an event the training stream waits on, so later
in-place updates of the parameters run only after the copy has read them. On CPU the
copy is a plain ``copy_`` into the reused buffers. DTensor shards are staged shard by
shard and stay DTensors, so DCP still writes each shard by its owner.

Example::

    stager = Stager()
    staged, ready = stager.stage(tensors)   # returns once the copy is queued
    ready()                                 # in the writer thread: the copy is complete
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.distributed.tensor import DTensor


class Stager:
    """Host buffers keyed by name, reused while shape and dtype stay the same."""

    def __init__(self):
        self.buffers: dict[str, torch.Tensor] = {}
        self.streams: dict[torch.device, torch.cuda.Stream] = {}

    def _buffer(self, key: str, source: torch.Tensor) -> torch.Tensor:
        buffer = self.buffers.get(key)
        if buffer is None or buffer.shape != source.shape or buffer.dtype != source.dtype:
            pinned = source.is_cuda  # page-locked memory lets the copy run at full link speed
            buffer = torch.empty(source.shape, dtype=source.dtype, device="cpu", pin_memory=pinned)
            self.buffers[key] = buffer
        return buffer

    def _copy(self, key: str, source: torch.Tensor, events: list) -> torch.Tensor:
        source = source.detach()
        buffer = self._buffer(key, source)
        if not source.is_cuda:
            buffer.copy_(source)
            return buffer
        device = source.device
        stream = self.streams.get(device)
        if stream is None:
            stream = self.streams[device] = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))  # the step that made `source` is done
        with torch.cuda.stream(stream):
            buffer.copy_(source, non_blocking=True)
        source.record_stream(stream)  # a temporary `source` is not reused before the copy ends
        event = torch.cuda.Event()
        event.record(stream)
        torch.cuda.current_stream(device).wait_event(event)  # next in-place update waits, not the host
        events.append(event)
        return buffer

    def stage(self, tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], Callable[[], None]]:
        """Copy ``tensors`` into the reused host buffers; returns the staged dict and a
        function that blocks until every copy is complete (call it before reading them).

        Example::

            staged, ready = Stager().stage({"w": torch.ones(3)}); ready()
        """
        events: list = []
        staged: dict[str, torch.Tensor] = {}
        for key, value in tensors.items():
            if isinstance(value, DTensor):
                local = self._copy(key, value.to_local(), events)
                staged[key] = DTensor.from_local(local, value.device_mesh, value.placements,
                                                 run_check=False, shape=value.size(), stride=value.stride())
            else:
                staged[key] = self._copy(key, value, events)

        def ready() -> None:
            for event in events:
                event.synchronize()

        return staged, ready


def all_finite(tensors) -> torch.Tensor:
    """One boolean tensor on the tensors' device: every element of every tensor is finite
    (reading it is the one device sync a backup needs).

    Example::

        assert bool(all_finite([torch.ones(2), torch.zeros(3)]))
    """
    flags = [torch.isfinite(t.to_local() if isinstance(t, DTensor) else t).all()
             for t in tensors if t.is_floating_point() or t.is_complex()]
    if not flags:
        return torch.tensor(True)
    device = flags[0].device
    return torch.stack([f.to(device) for f in flags]).all()
