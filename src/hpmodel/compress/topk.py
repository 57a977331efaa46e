"""Offline teacher outputs: the teachers' top-k log-probabilities per token, written once as
shards aligned with the training data, so that students train with no teacher in memory
(the feature TRL, torchtune and unsloth users ask for; Megatron-LM has it).

The shard format is hpmodel's own (:class:`~hpmodel.data.shards.ShardWriter`,
:class:`~hpmodel.data.record_table.RecordTable`): record ``i`` belongs to position ``i`` of
the training split — the same order — and stores that position and the data's record
number, so whatever order a student's shuffle (or a resumed run) asks for, the pair read
is checked to belong together. Each record is::

    {"position": i, "record": n, "values": (T, k) log p_T, "indices": (T, k) token ids}

``values`` are log-probabilities at the distillation temperature T (so the tail bucket of
:func:`~hpmodel.compress.lm_distill.sparse_kl` is exact), float16 or float32; ``indices``
int16 (a vocabulary of at most 32,768) or int32. ``topk.json`` beside the shards records
k, T, the dtypes, the teachers and the byte count; a complete set is reused, not rewritten.

Example::

    manifest = write_topk(teachers, splits.train, "runs/d/teacher-topk", k=32, temperature=2)
    train = TopKSplit(splits.train, "runs/d/teacher-topk")
    trainer.fit(LMDistiller(student), optimizer, train)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from hpmodel.compress.lm_distill import teacher_log_probs
from hpmodel.compress.distill import check_weights
from hpmodel.data import from_dataset
from hpmodel.data.record_table import RecordTable
from hpmodel.data.shards import ShardWriter
from hpmodel.datasets import Split
from hpmodel.kernel.errors import ConfigError, HpmodelError
from hpmodel.kernel.files import read_json, write_json

VALUE_DTYPES = {"float16": torch.float16, "float32": torch.float32}
INDEX_DTYPES = {"int16": torch.int16, "int32": torch.int32}
MANIFEST = "topk.json"


def check_format(k: int, vocab_size: int, value_dtype: str, index_dtype: str) -> None:
    """One line when k, the dtypes or the vocabulary cannot be stored as asked."""
    if not 1 <= k <= vocab_size:
        raise ConfigError(f"distill.topk = {k} must be in 1 .. {vocab_size} (the vocabulary)")
    if value_dtype not in VALUE_DTYPES or index_dtype not in INDEX_DTYPES:
        raise ConfigError(f"distill.topk_values / topk_indices = {value_dtype} / {index_dtype}: "
                          f"use one of {list(VALUE_DTYPES)} / {list(INDEX_DTYPES)}")
    if index_dtype == "int16" and vocab_size > 2 ** 15:
        raise ConfigError(f"a vocabulary of {vocab_size} tokens does not fit int16 indices: set "
                          "distill.topk_indices = 'int32'")


def example_records(split: Split):
    """``(position, record number, example)`` of each example of ``split``, in order."""
    subset = getattr(split, "subset", None)
    if subset is None:
        raise HpmodelError("offline top-k targets need shard data (data.name = 'shards'): "
                           "in-memory data can use the online teacher (distill.topk = 0)")
    for position in range(len(subset)):
        yield position, subset.indices[position], subset[position]


def _batches(split: Split, batch_size: int):
    rows = []
    for row in example_records(split):
        rows.append(row)
        if len(rows) == batch_size:
            yield rows
            rows = []
    if rows:
        yield rows


@torch.no_grad()
def write_topk(teachers: Sequence[torch.nn.Module], split: Split, out_dir: str | Path, *, k: int,
               temperature: float, weights: Sequence[float] | None = None,
               value_dtype: str = "float16", index_dtype: str = "int16",
               batch_size: int = 64, records_per_shard: int = 4096,
               describe: dict | None = None, device: str | torch.device | None = None,
               bf16: bool = False) -> dict[str, Any]:
    """Write the teachers' top-k log p_T for every example of ``split``; returns the manifest.

    The teachers run on ``device`` (default: where their parameters are), under bf16
    autocast when ``bf16`` and the device is a GPU — as they would in online distillation.

    A complete set already in ``out_dir`` with the same settings is kept as it is.

    Example::

        write_topk([teacher], splits.train, "runs/d/teacher-topk", k=32, temperature=2.0)
    """
    out_dir = Path(out_dir)
    vocab = teachers[0].config.vocab_size
    check_format(k, vocab, value_dtype, index_dtype)
    device = torch.device(device) if device is not None else next(teachers[0].parameters()).device
    bf16 = bf16 and device.type == "cuda"
    settings = {"k": k, "temperature": float(temperature), "value_dtype": value_dtype,
                "index_dtype": index_dtype, "records": len(split),
                "teacher_weights": check_weights(weights, len(teachers)),
                "teacher_precision": "bf16" if bf16 else "fp32", **(describe or {})}
    existing = read_manifest(out_dir)
    if existing and {key: existing.get(key) for key in settings} == settings:
        return existing
    for old in out_dir.glob("topk-*.shard"):
        old.unlink()
    teachers = [t.to(device).eval() for t in teachers]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16)
    writer, shards, written = None, [], 0
    for rows in _batches(split, batch_size):
        ids = torch.stack([torch.as_tensor(example["input_ids"]) for _, _, example in rows])
        with torch.no_grad(), autocast:
            log_p, _ = teacher_log_probs(teachers, ids.to(device), temperature,
                                         settings["teacher_weights"])
        values, indices = log_p.topk(k, dim=-1)  # (B, T, k), largest first
        values = values.to(VALUE_DTYPES[value_dtype]).cpu()
        indices = indices.to(INDEX_DTYPES[index_dtype]).cpu()
        for row, (position, record, _) in enumerate(rows):
            if written % records_per_shard == 0:
                if writer is not None:
                    shards.append(writer.close())
                writer = ShardWriter(str(out_dir / f"topk-{len(shards):05d}.shard"))
            writer.write({"position": position, "record": record, "values": values[row],
                          "indices": indices[row]})
            written += 1
    if writer is not None:
        shards.append(writer.close())
    manifest = {**settings, "shards": [Path(s).name for s in shards],
                "bytes": sum((out_dir / Path(s).name).stat().st_size for s in shards)}
    write_json(out_dir / MANIFEST, manifest)  # last: its presence says the set is complete
    return manifest


def read_manifest(out_dir: str | Path) -> dict[str, Any]:
    """``topk.json`` of a complete set of top-k shards, or ``{}``."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        return {}
    manifest = read_json(path)  # a damaged manifest: one line, not a traceback
    if not all((Path(out_dir) / name).is_file() for name in manifest.get("shards", [])):
        return {}
    return manifest


class TopKExamples:
    """``data[i]`` joined with top-k record ``i``: a map-style dataset (any order, resumable)."""

    def __init__(self, split: Split, out_dir: str | Path):
        manifest = read_manifest(out_dir)
        if not manifest:
            raise HpmodelError(f"'{out_dir}' holds no complete top-k shards ({MANIFEST}): write "
                               "them first (hpmodel distill with distill.topk > 0 does)")
        self.subset = split.subset
        self.table = RecordTable([str(Path(out_dir) / name) for name in manifest["shards"]])
        self.manifest = manifest
        if len(self.table) != len(self.subset):
            raise HpmodelError(f"'{out_dir}' holds {len(self.table)} top-k records for "
                               f"{len(self.subset)} training examples: the data changed; "
                               "delete the directory to write them again")

    def __len__(self) -> int:
        return len(self.subset)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        example, targets = self.subset[i], self.table[i]
        if int(targets["position"]) != i or int(targets["record"]) != self.subset.indices[i]:
            raise HpmodelError(f"top-k record {i} belongs to position {int(targets['position'])} "
                               f"(record {int(targets['record'])}), not to record "
                               f"{self.subset.indices[i]}: delete the top-k directory and rerun")
        return {**example, "teacher_values": targets["values"].float(),
                "teacher_indices": targets["indices"].long()}


class TopKSplit(Split):
    """A training split whose examples carry the teacher's stored top-k (see module doc).

    Example::

        train = TopKSplit(splits.train, "runs/d/teacher-topk")
        len(train) == len(splits.train)
    """

    def __init__(self, split: Split, out_dir: str | Path):
        self.examples = TopKExamples(split, out_dir)

    def __len__(self) -> int:
        return len(self.examples)

    def elements(self):
        return from_dataset(self.examples)


__all__ = ["INDEX_DTYPES", "TopKExamples", "TopKSplit", "VALUE_DTYPES", "check_format",
           "read_manifest", "write_topk"]
