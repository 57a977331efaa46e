"""hpmodel's input pipeline: shards, interleave, parallel map, cache, shuffle, prefetch.

In the spirit of tf.data (Murray et al., VLDB 2021) on plain PyTorch: threads and
processes from the standard library, ``fsspec`` for remote storage, pinned memory and
CUDA streams for the device copy. See docs/data.md.

Example::

    import hpmodel.data as hd

    pipe = (hd.from_tensors((x, y))
              .shuffle(10_000, seed=0)
              .map(augment, num_parallel_calls=hd.AUTOTUNE)
              .batch(256)
              .prefetch(hd.AUTOTUNE))
    for xb, yb in pipe:
        ...
"""

from .core import AUTOTUNE, INFINITE, UNKNOWN, CorruptRecordError
from .diagnose import why_waited
from .constructors import from_dataset, from_shards, from_tensors, sample_from
from .interop import PipelineLoader
from .interleave import list_shards
from .pipeline import Pipeline
from .protocol import Batches
from .records import decode_element, encode_element
from .shards import ShardWriter, read_index, read_shard, read_tar
from .writer import build_write_parser, data_write_main, write_shards, write_text_shards

__all__ = [
    "AUTOTUNE", "Batches", "PipelineLoader", "INFINITE", "UNKNOWN", "CorruptRecordError", "Pipeline", "ShardWriter",
    "build_write_parser", "data_write_main", "decode_element", "encode_element",
    "from_dataset", "from_shards", "from_tensors", "list_shards", "read_index",
    "read_shard", "read_tar", "sample_from", "why_waited", "write_shards", "write_text_shards",
]
