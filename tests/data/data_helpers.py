"""Shared helpers for the data tests: turn pipeline output into comparable Python data."""

from __future__ import annotations

import torch


def plain(item):
    """Tensors -> nested lists, tuples -> lists, so outputs compare with ==."""
    if isinstance(item, torch.Tensor):
        return item.tolist()
    if isinstance(item, (tuple, list)):
        return [plain(x) for x in item]
    if isinstance(item, dict):
        return {k: plain(v) for k, v in item.items()}
    if isinstance(item, bytes):
        return item
    return item


def run_epoch(pipe, epoch=None):
    """All elements of one epoch as plain data."""
    if epoch is not None:
        pipe.set_epoch(epoch)
    return [plain(x) for x in pipe]


def consume(pipe, n):
    """The first ``n`` elements of the next epoch of ``pipe``; leaves the iterator open."""
    it = iter(pipe)
    out = [plain(next(it)) for _ in range(n)]
    return out, it
