"""Resuming a backup at another world size or under another strategy: what may change,
what must not, and the data position carried over.

DCP does the heavy lifting for the tensors: ``dcp.load`` into this run's
``get_state_dict`` view reshards model and optimizer state from the saved layout (N
replicas, or FSDP2 shards) to this run's (:mod:`hpmodel.train.backup_dcp`). This module
decides whether a backup may be loaded here at all, and maps the saved data position
onto this rank's pipeline.

The data position is global: ``Strategy.distribute`` splits every global batch into one
contiguous slice per rank (``shard(mode="batch")``), so every rank has consumed as many
local batches as there were global batches, at any world size. A position
``(epoch, global batches consumed, shuffle seeds)`` restored on each rank of the new
world therefore continues the same global sample order. The global batch
(``data.batch_size × replicas``, or ``data.batch_size`` with ``train.hold_global_batch``)
must stay the same; the model, the optimizer and the rest of the config too.

Example::

    layout = world_layout(state)        # stored in the manifest at every backup
    problem = layout_problem(manifest, layout, folder)   # None, or one line to raise
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hpmodel.kernel.errors import HpmodelError

# Strategies whose model and optimizer state DCP sees under the same names with full
# shapes (plain, DDP-wrapped or FSDP2-sharded): a backup of one loads into any other.
RESHARDABLE = {"OneDevice", "Mirrored", "MultiWorker", "Sharded"}
# Strategy options that only place the work (how many processes, which device, which
# backend): they may change when the global batch is held.
PLACEMENT = {"name", "devices", "device", "backend", "nnodes", "rdzv_timeout_s"}
# Config entries that set the global batch, checked as one number instead.
GLOBAL_BATCH_KEYS = {"config.data.batch_size", "config.train.hold_global_batch"}


def world_layout(state) -> dict[str, Any]:
    """This run's strategy, world size and global batch (None when the data is not a
    batched hpmodel pipeline), as stored in a backup's manifest."""
    data = state.train_data.state_dict()
    batch = data.get("global_batch") if isinstance(data, dict) else None
    return {"strategy": type(state.strategy).__name__, "world_size": state.strategy.world_size,
            "global_batch": batch}


def same_layout(manifest: dict, layout: dict) -> bool:
    """Whether the backup was written by this strategy at this world size (an exact resume)."""
    return (int(manifest.get("world_size", 1)) == layout["world_size"]
            and manifest.get("strategy", layout["strategy"]) == layout["strategy"])


def excused(differences: list[str], stored: dict, current: dict, layout: dict) -> list[str]:
    """``differences`` (from ``fingerprint_mismatch``) minus those a resume elsewhere may
    have: placement options, options of only one of two strategies, and the entries that
    set the global batch when the global batch itself is known (it is checked as such)."""
    if layout["global_batch"] is None:
        return differences
    old, new = stored.get("config", {}), current.get("config", {})
    kept = []
    for name in differences:
        key = name.removeprefix("config.")
        if name in GLOBAL_BATCH_KEYS:
            continue
        if key.startswith("strategy.") and (key.removeprefix("strategy.") in PLACEMENT
                                           or key not in old or key not in new):
            continue
        kept.append(name)
    return kept


def layout_problem(manifest: dict, layout: dict, folder: Path) -> str | None:
    """One line saying why the backup in ``folder`` cannot resume in this layout, or None."""
    saved_world = int(manifest.get("world_size", 1))
    saved_batch = manifest.get("global_batch")
    if saved_batch is not None and layout["global_batch"] is not None and saved_batch != layout["global_batch"]:
        return (f"backup '{folder}' was written with a global batch of {saved_batch} and this run's is "
                f"{layout['global_batch']} (data.batch_size × replicas): set data.batch_size so that it "
                f"is {saved_batch} again (or train.hold_global_batch = true, data.batch_size = "
                f"{saved_batch}), or use a new backup.dir")
    if same_layout(manifest, layout):
        return None
    saved_strategy = manifest.get("strategy", "?")
    movable = (saved_batch is not None and layout["global_batch"] is not None
               and {saved_strategy, layout["strategy"]} <= RESHARDABLE)
    if movable:
        return None
    here = f"{layout['strategy']} on {layout['world_size']} process(es)"
    return (f"backup '{folder}' was written by {saved_strategy} on {saved_world} process(es) and this run "
            f"is {here}, which cannot load it (a pipeline, a parameter server or data without a "
            "batched hpmodel pipeline): resume with the same strategy and devices, or use a new backup.dir")


def saved_rank(rank: int, saved_world: int) -> int:
    """Whose random streams rank ``rank`` continues: its own when it existed, else rank 0's."""
    return rank if rank < saved_world else 0


def moved_data_state(saved: dict, current: dict) -> dict:
    """``saved`` (a position of rank 0 at another world size) rewritten for this rank's
    pipeline, whose own state is ``current``: the saved epoch, position and seeds, this
    pipeline's stages. Raises HpmodelError when the pipelines differ beyond their sharding.

    Example::

        pipe.load_state_dict(moved_data_state(saved, pipe.state_dict()))
    """
    def unsharded(stages: list) -> list:
        return [kind for kind in stages if kind != "shard"]

    if unsharded(saved.get("stages", [])) != unsharded(current.get("stages", [])):
        raise HpmodelError(f"the data pipeline's stages {current.get('stages')} differ from the backup's "
                           f"{saved.get('stages')}: build the same pipeline to resume, or use a new backup.dir")
    if len(saved.get("seeds", [])) != len(current.get("seeds", [])):
        raise HpmodelError("the data pipeline has a different number of shuffles than the backup's: "
                           "build the same pipeline to resume, or use a new backup.dir")
    return {**current, "epoch": saved["epoch"], "position": saved["position"], "seeds": saved["seeds"]}
