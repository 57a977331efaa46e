"""The one data contract of the Trainer: :class:`Batches`, and how any input becomes one.

Tensors, an in-memory or shard-backed split, a torch ``Dataset`` and an
:mod:`hpmodel.data` pipeline all become an ``hpmodel.data`` pipeline (one engine, one
RNG): an unbatched one is shuffled (a full seeded permutation when it is indexable)
and batched at the global batch size here; a batched one passes through as given.
A ``torch.utils.data.DataLoader`` brings its own batching and sampler, so it is
refused with one line that says what to pass instead.

Example::

    batches = to_batches((x, y), batch_size=64, shuffle=True, seed=0)
    batches.set_epoch(3)
    for xb, yb in batches: ...
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from hpmodel.data import Batches, Pipeline, from_dataset, from_tensors
from hpmodel.datasets import Split
from hpmodel.kernel.errors import HpmodelError

SHUFFLE_BUFFER = 10_000  # for streams of unknown length


def to_batches(data: Any, batch_size: int, *, shuffle: bool, seed: int,
               drop_remainder: bool = False) -> Batches:
    """``data`` as batches of ``batch_size`` (the global batch), shuffled by ``(seed, epoch)``."""
    pipeline = as_pipeline(data)
    if pipeline.is_batched:
        return pipeline
    if shuffle:
        size = pipeline.cardinality()
        pipeline = pipeline.shuffle(size if size > 0 else SHUFFLE_BUFFER, seed=seed)
    return pipeline.batch(batch_size, drop_remainder=drop_remainder)


def as_pipeline(data: Any) -> Pipeline:
    """An ``hpmodel.data`` pipeline over ``data`` (see the module docstring)."""
    if isinstance(data, Pipeline):
        return data
    if isinstance(data, Split):
        return data.elements()
    values = data.values() if isinstance(data, dict) else data
    if torch.is_tensor(data) or (isinstance(data, (dict, tuple, list)) and data
                                 and all(torch.is_tensor(t) for t in values)):
        return from_tensors(data)
    if isinstance(data, DataLoader):
        raise HpmodelError("a torch DataLoader brings its own batching and sampler, which "
                           "would break per-rank sharding and exact resume: pass its dataset "
                           "(loader.dataset) or an hpmodel.data pipeline instead")
    if isinstance(data, Dataset):
        return from_dataset(data)
    raise HpmodelError(f"cannot train on data of type {type(data).__name__}: give tensors "
                       "(x, y) or a dict of tensors, a torch Dataset or an hpmodel.data pipeline")


def warm_start_epochs(data: Any, epochs: int) -> bool:
    """Whether the Trainer runs ``data``'s warm start (next epoch started during this one's
    tail, ``hpmodel.data.warm``): for a pipeline nobody chose for (``warm_start is None``)
    in a run of more than one epoch. A pipeline set to False stays cold."""
    return isinstance(data, Pipeline) and data.warm_start is None and epochs > 1


def set_warm_start(data: Any, owned: bool, epoch: int, epochs: int) -> None:
    """Before epoch ``epoch``: on while another epoch follows, unset for the last one (so
    nothing is prepared after it); untouched when the Trainer does not own it."""
    if owned:
        data.warm_start = True if epoch + 1 < epochs else None


def release_batches(data: Any, owned: bool) -> None:
    """End of fit (also on an error): drop a prepared epoch, keep the workers (another fit
    may follow), leave the pipeline's warm start as the user set it."""
    if isinstance(data, Pipeline):
        if owned:
            data.warm_start = None
        data.close(keep_workers=True)
