"""A pipeline's resumable position as plain data, and the chain rebuilt from it.

Order is a pure function of the shuffle seeds and the epoch, so ``(epoch, elements handed
out, seeds)`` is the whole position; the stage kinds guard against loading a position into
a different pipeline. ``global_batch`` (the batch of the unsharded pipeline) lets a
position saved at one number of ranks be restored at another (``shard(mode="batch")``
hands every rank one slice of each global batch, so ``position`` counts global batches).
"""

from __future__ import annotations

from .stages import BatchNode, ShardNode, ShuffleBufferNode
from .core import Node, chain_of
from .mixing import SampleNode
from .sources import IndexSource

STATE_VERSION = 1


def position_state(chain: list[Node], epoch: int, position: int) -> dict:
    """The JSON-safe state of a pipeline whose nodes (root first) are ``chain``."""
    return {"version": STATE_VERSION, "epoch": epoch, "position": position,
            "seeds": [s for n in chain for s in _seeds_of(n)],
            "stages": [n.kind for n in chain], "global_batch": global_batch(chain)}


def global_batch(chain: list[Node]) -> int | None:
    """The size of the last ``batch`` stage before a ``shard(mode="batch")`` split it
    (None when unbatched): the same on every rank and at every number of ranks."""
    sizes = [n.batch_size for n in chain if isinstance(n, BatchNode)]
    if not sizes:
        return None
    ranks = 1
    for n in chain:
        spec = n.spec if isinstance(n, ShardNode) else getattr(n, "shard", None)
        if spec is not None and spec[2] is not None:  # (num_shards, index, block): batch mode
            ranks = spec[0]
    return sizes[-1] * ranks


def restored_chain(chain: list[Node], state: dict) -> Node:
    """The last node of ``chain`` rebuilt with ``state``'s shuffle seeds (checked to fit)."""
    kinds = [n.kind for n in chain]
    if state.get("version") != STATE_VERSION or list(state.get("stages", [])) != kinds:
        raise ValueError(f"data state was saved from a different pipeline "
                         f"({state.get('stages')} vs {kinds}): rebuild the same pipeline "
                         "before load_state_dict")
    seeds = [int(s) for s in state["seeds"]]
    if len(seeds) != sum(len(_seeds_of(n)) for n in chain):
        raise ValueError("data state has a different number of shuffle seeds than this "
                         "pipeline: rebuild the same pipeline before load_state_dict")
    new = [_with_seeds(n, seeds) if _seeds_of(n) else n for n in chain]
    return rebuild(new)


def _seeds_of(node: Node) -> list[int]:
    """The seeds that define ``node``'s order: its own, and those of a mix's inputs."""
    if isinstance(node, SampleNode):
        return [node.seed] + [s for tip in node.inputs for n in chain_of(tip)
                              for s in _seeds_of(n)]
    seed = _seed_of(node)
    return [] if seed is None else [seed]


def _with_seeds(node: Node, seeds: list[int]) -> Node:
    """A clone of ``node`` taking its seeds from the front of ``seeds`` (consumed)."""
    new = node.clone(node.upstream)
    if isinstance(node, SampleNode):
        new.seed = seeds.pop(0)
        inputs = []
        for tip in node.inputs:
            chain = chain_of(tip)
            inputs.append(rebuild([_with_seeds(n, seeds) if _seeds_of(n) else n
                                   for n in chain]))
        new.inputs = inputs
        return new
    _set_seed(new, seeds.pop(0))
    return new


def _seed_of(node: Node) -> int | None:
    if isinstance(node, IndexSource):
        return node.shuffle_seed
    if isinstance(node, ShuffleBufferNode):
        return node.seed
    return None


def _set_seed(node: Node, seed: int) -> None:
    if isinstance(node, IndexSource):
        node.shuffle_seed = seed
    else:
        node.seed = seed


def rebuild(chain: list[Node]) -> Node:
    """Re-link ``chain`` (root first), cloning every node above a replaced one."""
    node = chain[0]
    for n in chain[1:]:
        node = n if n.upstream is node else n.clone(node)
    return node
