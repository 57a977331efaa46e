"""Embedded and file-backed data sets, all behind one small interface.

``load_splits(config)`` returns train / validation / test splits for the configured
source: scikit-learn's bundled ``digits`` (no network), ``synthetic`` data generated
from a seed, an ``.npz`` file (tensors in memory), or toolkit shards. Shards are never
read into memory: their splits are record numbers over a
:class:`~hpmodel.data.record_table.RecordTable`, and every split yields an
:mod:`hpmodel.data` pipeline through :meth:`Split.elements`.

Example::

    splits = load_splits(DataConfig(name="digits"), seed=0)
    splits.train.x.shape  # torch.Size([1293, 1, 8, 8])
    splits.train.elements().batch(64)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import fsspec

import torch

from hpmodel.data import Pipeline, from_dataset, from_tensors, list_shards
from hpmodel.data.record_table import RecordTable, Subset
from hpmodel.data.shards import is_tar
from hpmodel.datasets.sources import load_arrays, split_train_val, test_indices, val_indices
from hpmodel.kernel.errors import ConfigError


class Split:
    """A split of examples ``(x, y)``: its size and an unbatched pipeline over them."""

    def __len__(self) -> int:
        raise NotImplementedError

    def elements(self) -> Pipeline:
        raise NotImplementedError


@dataclass
class ArraySplit(Split):
    """Examples ``x`` (N, *shape) float32 and integer labels ``y`` (N,), in memory."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def elements(self) -> Pipeline:
        return from_tensors((self.x, self.y))


class ExampleRecord:
    """A shard record as training tensors: ``(x, y)`` as an ArraySplit holds them (float32 x,
    int64 y); a dict of token arrays (``{"input_ids", "labels"}``) as int64 tensors."""

    def __call__(self, record):
        if isinstance(record, dict):
            return {k: torch.as_tensor(v).long() for k, v in record.items()}
        x, y = record[0], record[1]
        return torch.as_tensor(x).float(), torch.as_tensor(y).long().reshape(())


class RecordSplit(Split):
    """Examples read from shards on demand (bounded memory): record numbers of a table.

    Example::

        split = RecordSplit(RecordTable(urls), range(100))
        split.elements().shuffle(100, seed=0).batch(32)
    """

    def __init__(self, table: RecordTable, indices):
        self.subset = Subset(table, indices, ExampleRecord())

    def __len__(self) -> int:
        return len(self.subset)

    def elements(self) -> Pipeline:
        return from_dataset(self.subset)

    def example_shape(self) -> tuple[int, ...]:
        first = self.subset[0]
        x = first["input_ids"] if isinstance(first, dict) else first[0]
        return tuple(x.shape)


@dataclass
class Splits:
    train: Split
    val: Split
    test: Split
    num_classes: int
    shape: tuple[int, ...] = ()
    baselines: dict = field(default_factory=dict)  # e.g. gzip's bits per byte on the test text

    @property
    def input_shape(self) -> tuple[int, ...]:
        if isinstance(self.train, ArraySplit):
            return tuple(self.train.x.shape[1:])
        return self.shape


def load_splits(config, seed: int = 0) -> Splits:
    """Load the data named by a :class:`~hpmodel.config.DataConfig` and split it deterministically."""
    if config.name == "shards":
        return shard_splits(config, seed)
    arrays = load_arrays(config, seed)
    x_train, y_train, x_val, y_val = split_train_val(
        arrays["x_train"], arrays["y_train"], config.val_fraction, seed
    )
    num_classes = int(max(arrays["y_train"].max(), arrays["y_test"].max())) + 1
    return Splits(
        train=ArraySplit(x_train, y_train),
        val=ArraySplit(x_val, y_val),
        test=ArraySplit(arrays["x_test"], arrays["y_test"]),
        num_classes=num_classes,
    )


def shard_splits(config, seed: int) -> Splits:
    """Splits over ``data.shards`` records, streamed (only record offsets live in memory).

    With ``data.test_shards`` the test split is those shards; otherwise a seeded
    ``data.test_fraction`` of the records is held out, as for in-memory data.
    ``data.num_classes`` gives the number of classes (labels are not scanned).
    """
    if not config.shards:
        raise ConfigError("data.name = 'shards' needs data.shards: a glob or URL of shard files")
    table = _table(config.shards, "data.shards")
    if config.test_shards:
        test_table = _table(config.test_shards, "data.test_shards")
        test = RecordSplit(test_table, range(len(test_table)))
        pool = torch.arange(len(table))
    else:
        test_idx, pool = test_indices(len(table), config.test_fraction, seed)
        test = RecordSplit(table, test_idx.tolist())
    val_pos, train_pos = val_indices(len(pool), config.val_fraction, seed)
    train = RecordSplit(table, pool[train_pos].tolist())
    val = RecordSplit(table, pool[val_pos].tolist())
    return Splits(train=train, val=val, test=test, num_classes=config.num_classes,
                  shape=train.example_shape(),
                  baselines=text_baselines(test_table.urls[0]) if config.test_shards else {})


def text_baselines(shard_url: str) -> dict[str, float]:
    """The held-out split's measures that ``hpmodel data write --text`` recorded in
    ``text.json`` beside its shards (e.g. ``gzip_bits_per_byte``); empty when absent."""
    fs, path = fsspec.core.url_to_fs(shard_url)
    manifest = path.rsplit("/", 1)[0] + "/text.json"
    if not fs.exists(manifest):
        return {}
    with fs.open(manifest) as f:
        splits = json.load(f).get("splits", {})
    held_out = splits.get("val") or {}
    return {k: v for k, v in held_out.items() if isinstance(v, float)}


def _table(source: str, key: str) -> RecordTable:
    try:
        urls = list_shards(source)
    except FileNotFoundError as error:
        raise ConfigError(f"{key}: {error}") from None
    if any(is_tar(url) for url in urls):
        raise ConfigError(f"{key} '{source}' names tar shards, which have no record index: "
                          "write .shard files with 'hpmodel data write' for hpmodel train")
    table = RecordTable(urls)
    if len(table) == 0:
        raise ConfigError(f"{key} '{source}' holds no records: write shards with "
                          "'hpmodel data write'")
    return table


__all__ = ["ArraySplit", "RecordSplit", "Split", "Splits", "load_splits"]
