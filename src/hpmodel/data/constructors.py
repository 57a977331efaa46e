"""Where pipelines start: ``from_tensors``, ``from_dataset``, ``from_shards``, ``sample_from``.

Each returns a :class:`~hpmodel.data.pipeline.Pipeline` over a source node
(:mod:`.sources` for tensors and Datasets, :mod:`.interleave` for shard files).

Example::

    pipe = from_tensors((x, y)).shuffle(len(x), seed=0).batch(64)
    stream = from_shards("data/train-*.shard").interleave(cycle_length=4)
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

from torch.utils.data import IterableDataset

from .core import random_seed
from .interleave import InterleaveNode, list_shards
from .mixing import SampleNode, check_weights
from .pipeline import Pipeline
from .shards import count_records, fetch_blocks, is_tar, parse_blocks
from .tar_stream import MAX_MEMBER_BYTES
from .sources import IndexSource, IterableSource, TensorSlicer, _as_tensor, _Returns


def from_tensors(tensors: Any) -> Pipeline:
    """Slice tensors along their first dimension, like ``from_tensor_slices``.

    A tuple gives tuple elements, a dict dict elements, a single tensor tensor elements.

    Example::

        pipe = from_tensors((torch.randn(100, 8), torch.arange(100)))
        x0, y0 = next(iter(pipe))
    """
    if isinstance(tensors, dict):
        keys = list(tensors)
        values = tuple(_as_tensor(tensors[k], repr(k)) for k in keys)
        getter = TensorSlicer(values, keys=tuple(keys))
    elif isinstance(tensors, (tuple, list)):
        values = tuple(_as_tensor(t, f"item {i}") for i, t in enumerate(tensors))
        getter = TensorSlicer(values)
    else:
        values = (_as_tensor(tensors, "the input"),)
        getter = TensorSlicer(values, single=True)
    if not values or any(v.dim() == 0 for v in values):
        raise ValueError("from_tensors needs tensors with a first dimension to slice: "
                         "pass e.g. (x, y) with x.shape[0] == y.shape[0]")
    lengths = {int(v.shape[0]) for v in values}
    if len(lengths) != 1:
        raise ValueError(f"from_tensors got first dimensions {sorted(lengths)}: "
                         "all tensors must have the same number of rows")
    return Pipeline(IndexSource(getter, lengths.pop(), "tensors"))


def from_dataset(dataset: Any) -> Pipeline:
    """Wrap a map-style torch ``Dataset`` (indexable), an iterable, or a function returning one.

    Example::

        pipe = from_dataset(torchvision_dataset).map(to_tensor, num_parallel_calls=4)
        stream = from_dataset(lambda: read_lines("log.txt"))
    """
    if callable(dataset) and not hasattr(dataset, "__iter__") \
            and not hasattr(dataset, "__getitem__"):
        return Pipeline(IterableSource(dataset, type(dataset).__name__))
    if (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")
            and not isinstance(dataset, IterableDataset)):
        return Pipeline(IndexSource(dataset.__getitem__, len(dataset), type(dataset).__name__))
    if iter(dataset) is dataset if hasattr(dataset, "__iter__") else False:
        raise ValueError("from_dataset got a one-shot iterator that cannot be re-read each "
                         "epoch: pass an iterable or a function returning a fresh iterator")
    if hasattr(dataset, "__iter__"):
        length = len(dataset) if hasattr(dataset, "__len__") else -2
        return Pipeline(IterableSource(_Returns(dataset), type(dataset).__name__, length))
    raise ValueError(f"from_dataset cannot read a {type(dataset).__name__}: pass a torch "
                     "Dataset, an iterable, or a function returning an iterator")


class _ShardFinisher:
    """Consumer-side half of shard reading: parse fetched blocks into elements."""

    def __init__(self, ignore_errors: bool, max_member_bytes: int = MAX_MEMBER_BYTES):
        self.ignore_errors, self.max_member_bytes = ignore_errors, max_member_bytes

    def __call__(self, url: str, raw: Iterable, start: int, on_skip) -> Iterator:
        return parse_blocks(raw, url, self.ignore_errors, on_skip, start, self.max_member_bytes)


def _shard_size(url: str) -> int | None:
    return None if is_tar(url) else count_records(url)


def from_shards(source: Any, ignore_errors: bool = False, shuffle_shards: bool = False,
                seed: int | None = None, max_member_bytes: int = MAX_MEMBER_BYTES):
    """Records of shards (hpmodel ``.shard`` or WebDataset ``.tar``), read through fsspec.

    ``source`` is a glob, a directory, a list, or an fsspec URL (``s3://b/train-*.shard``).
    Shards are read one after another; chain ``.interleave(cycle_length=...,
    num_parallel_calls=AUTOTUNE)`` to read several at once. ``shuffle_shards`` visits
    the files in a seeded order per epoch. With ``ignore_errors`` corrupt records are
    skipped and counted in ``stats()["skipped_records"]``. No member of a ``.tar`` shard
    may decompress to more than ``max_member_bytes`` (1 GiB unless told).

    Example::

        pipe = (from_shards("memory://train/*.shard")
                .interleave(cycle_length=4, num_parallel_calls=AUTOTUNE)
                .shuffle(10_000, seed=0).batch(128))
    """
    urls = list_shards(source)
    files = IndexSource(urls.__getitem__, len(urls), "shard-files")
    if shuffle_shards:
        files.shuffle_seed = random_seed() if seed is None else int(seed)
    node = InterleaveNode(files, None, cycle_length=1, block_length=1,
                          num_parallel_calls=None, deterministic=True, opener=fetch_blocks,
                          finisher=_ShardFinisher(ignore_errors, max_member_bytes),
                          sizer=_shard_size)
    return Pipeline(node)


def sample_from(pipelines: list, weights=None, seed: int | None = None,
                stop_on: str = "first_exhausted") -> Pipeline:
    """Mix ``pipelines``: each element from pipeline i with probability ``weights[i]``.

    tf.data's ``sample_from_datasets``: ``stop_on="first_exhausted"`` ends the epoch
    when an exhausted pipeline is drawn; ``"all_exhausted"`` renormalises over those
    left until all are done. Deterministic for a seed (and epoch); ``state_dict`` /
    ``load_state_dict`` resume exactly. Uniform weights when None.

    Example::

        mixed = sample_from([a, b], [0.75, 0.25], seed=0, stop_on="all_exhausted").batch(32)
    """
    pipelines = list(pipelines)
    if not all(isinstance(p, Pipeline) for p in pipelines):
        raise ValueError("sample_from mixes hpmodel.data pipelines: wrap tensors with "
                         "from_tensors() and Datasets with from_dataset() first")
    w = check_weights(len(pipelines), weights, stop_on)
    seed = random_seed() if seed is None else int(seed)
    return Pipeline(SampleNode([p._node for p in pipelines], w, seed, stop_on))
