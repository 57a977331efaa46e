"""Sharding a pipeline across data-parallel ranks (a rewrite of the chain of stages).

Pure Python. The shard is pushed as close to the source as stays exact, so a rank
only reads, maps and caches its own elements: into the index order of an indexable
source when possible, else as a :class:`~hpmodel.data.stages.ShardNode` just above the
first stage that it may not cross (``take``, ``skip``, or the reading of shard files).
"""

from __future__ import annotations

from .core import Node
from .sources import IndexSource
from .stages import BatchNode, ShardNode

# Stages a round-robin shard may cross: splitting their input splits their output
# evenly (not filter: what it drops depends on the data, so ranks could get unequal
# counts and data-parallel steps would hang).
_ELEMENT_CROSSABLE = {"map", "prefetch", "cache", "shuffle", "batch", "unbatch",
                      "repeat", "to_device"}
# Stages a block (batch-mode) shard may cross: element i in, element i out.
_BLOCK_CROSSABLE = {"map", "prefetch", "cache", "to_device"}


def shard_pipeline(chain: list[Node], num_shards: int, index: int, mode: str) -> Node:
    """The tip of ``chain`` (root first) rewritten to yield only shard ``index``.

    Example::

        tip = shard_pipeline(pipe._chain(), 2, 0, "element")
    """
    if any(n.kind == "shard" or getattr(n, "shard", None) for n in chain):
        raise ValueError("this pipeline is already sharded: call shard() once, on the "
                         "unsharded pipeline")
    if mode == "element":
        return _insert(chain, len(chain), _ELEMENT_CROSSABLE, (num_shards, index, None))
    if mode == "batch":
        return _shard_batches(chain, num_shards, index)
    if mode == "file":
        return _shard_files(chain, num_shards, index)
    raise ValueError(f"unknown shard mode {mode!r}: use 'element', 'batch' or 'file'")


def _insert(chain: list[Node], above: int, crossable: set, spec: tuple) -> Node:
    """Insert shard ``spec`` below ``chain[above:]``, pushed down through ``crossable``."""
    pos = above  # the shard goes between chain[pos - 1] and chain[pos]
    while pos > 1 and chain[pos - 1].kind in crossable:
        pos -= 1
    lower = chain[:pos]
    if pos == 1 and isinstance(chain[0], IndexSource):
        root = chain[0].clone(None)
        root.shard = spec  # applied after the seeded permutation
        lower = [root]
    else:
        lower = lower + [ShardNode(None, *spec)]
    new = _relink(lower + [n for n in chain[pos:]])
    for n in new:
        if hasattr(n, "for_shard"):
            n.for_shard(spec)  # a file cache below the shard keeps a file per rank
    return new[-1]


def _relink(chain: list[Node]) -> list[Node]:
    out = [chain[0]]
    for n in chain[1:]:
        out.append(n if n.upstream is out[-1] else n.clone(out[-1]))
    return out


def _shard_batches(chain: list[Node], num_shards: int, index: int) -> Node:
    where = [i for i, n in enumerate(chain) if isinstance(n, BatchNode)]
    if not where:
        raise ValueError("shard(mode='batch') needs a batch() stage: add .batch(global_batch) "
                         "before sharding, or use mode='element'")
    at = where[-1]
    size = chain[at].batch_size
    if size % num_shards:
        raise ValueError(f"global batch {size} is not divisible by {num_shards} ranks: "
                         "choose a batch size that is a multiple of the number of ranks")
    local = chain[at].clone(chain[at].upstream)
    local.batch_size = size // num_shards
    chain = chain[:at] + [local] + chain[at + 1:]
    return _insert(chain, at, _BLOCK_CROSSABLE, (num_shards, index, size // num_shards))


def _shard_files(chain: list[Node], num_shards: int, index: int) -> Node:
    root = chain[0]
    if not (isinstance(root, IndexSource) and root.name == "shard-files"):
        raise ValueError("shard(mode='file') only works on from_shards pipelines: "
                         "use mode='element' instead")
    new_root = root.clone(None)
    new_root.shard = (num_shards, index, None)
    return _relink([new_root] + chain[1:])[-1]
