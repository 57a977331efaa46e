"""``BackupAndRestore``: resume an interrupted run exactly where it stopped.

Keras's name and semantics: the backup exists to resume an interrupted run and is removed
when training finishes (unless ``keep=True``). Unlike Keras, the resume is exact to the
step: model, optimizer, LR schedule, grad scaler, counters, every random-number stream of
every rank and the input pipeline's position are saved, so the resumed run takes the same
steps on the same samples as a run that never stopped. ``torch.distributed.checkpoint``
writes model and optimizer (:mod:`hpmodel.train.backup_dcp`), with non-tensor state as JSON
so that loading a backup never unpickles code; asynchronous backups block the loop only for
a copy into reused host buffers (:mod:`hpmodel.train.backup_stage`); the folder format,
checksums and manifest are in :mod:`hpmodel.train.backup_format`. A non-finite model is
never backed up: the run stops naming the step and the last good backup stays. A backup
resumes at another world size or under another data-parallel strategy (Mirrored ↔ Sharded),
DCP resharding the tensors and every rank continuing the same global sample order, as long
as the global batch is unchanged (:mod:`hpmodel.train.backup_world`).

Example::

    trainer = hm.Trainer(callbacks=[hm.BackupAndRestore("ckpt/", every_steps=100)])
    trainer.fit(model_fn, optimizer_fn, data, epochs=10)   # killed? run it again: it resumes
"""

from __future__ import annotations

import pickle
import shutil
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from hpmodel.kernel.errors import HpmodelError
from hpmodel.train.backup_dcp import (check_dcp_folder, load_model_state, model_fingerprint,
                                      save_tensors, training_state, write_skeleton)
from hpmodel.train.backup_format import (MANIFEST, find_backup, fingerprint_mismatch, folder_name,
                                         load_nested, prune, save_nested, step_folders, write_manifest)
from hpmodel.train.backup_stage import Stager, all_finite
from hpmodel.train.backup_world import (excused, layout_problem, moved_data_state, same_layout,
                                        saved_rank, world_layout)
from hpmodel.train.callbacks import Callback
from hpmodel.train.seeding import rng_state, set_rng_state

LOAD_ERRORS = (ValueError, KeyError, TypeError, OSError, RuntimeError,
               pickle.UnpicklingError)


class BackupAndRestore(Callback):
    """Back up the whole training state every ``every_steps`` steps and/or every epoch;
    restore the newest valid backup when training begins.

    ``asynchronous=True`` blocks the loop only while the state is copied into host buffers
    reused across backups (pinned, on a side stream on GPU); writing, checksums and the
    manifest run in a background thread, at most one backup in flight, and a failure there
    stops the run at the next step. Synchronous backups serialise on the loop (no extra
    host memory) and leave fsync and checksums to that thread. ``fingerprint`` (e.g. the
    resolved config) is stored and must match on resume. When backups exist but none can
    be loaded, the run stops, unless ``fresh_if_corrupt`` (then it starts over).

    Example::

        BackupAndRestore("ckpt/", every_steps=50, every_epoch=True, keep=False, asynchronous=True)
    """

    def __init__(self, dir: str | Path, every_steps: int = 0, every_epoch: bool = True,
                 keep: bool = False, asynchronous: bool = False, fingerprint: dict | None = None,
                 keep_last: int = 2, fresh_if_corrupt: bool = False):
        if every_steps < 0:
            raise HpmodelError(f"backup.every_steps = {every_steps} must be 0 (off) or more")
        self.dir = Path(dir)
        self.every_steps, self.every_epoch, self.keep = every_steps, every_epoch, keep
        self.asynchronous, self.fresh_if_corrupt = asynchronous, fresh_if_corrupt
        self.user_fingerprint = fingerprint or {}
        self.keep_last = max(2, keep_last)  # the previous backup survives a corrupt newest one
        self.group = None  # a Gloo group of its own, so background writes never race training
        self.stager = Stager() if asynchronous else None
        self.pending: threading.Thread | None = None
        self.error: BaseException | None = None
        self.said_waiting = False
        self.sealed: set[str] = set()  # folders this process verified: pruning need not rehash them
        self.restored_from: Path | None = None
        self.restored_step: int | None = None  # the optimizer step the run resumed after
        self.saves = 0

    # -- hooks ------------------------------------------------------------------------------
    def on_train_begin(self, state) -> None:
        if dist.is_initialized():
            self.group = dist.new_group(backend="gloo")
        self.fingerprint = {"model": model_fingerprint(state.model),
                            "optimizer": {"class": type(state.optimizer).__name__},
                            "config": self.user_fingerprint}
        self.layout = world_layout(state)
        self.restore(state)

    def on_step_end(self, state, logs) -> None:
        self.raise_background_error()  # an attribute read: no sync, no wait
        if self.saves_at(state):
            self.save(state)

    def saves_at(self, state) -> bool:
        """Whether this step ends with a backup (the Trainer then logs the step at once, so
        a run resumed from it has the step's log line)."""
        return bool(self.every_steps and state.global_step % self.every_steps == 0)

    def on_epoch_end(self, state, logs) -> None:
        # A backup at the epoch's last step resumes by redoing only the epoch's end
        # (validation, history), so a second one here adds nothing.
        last_step_saved = self.every_steps and state.global_step % self.every_steps == 0
        if self.every_epoch and not last_step_saved:
            self.save(state, epoch_done=True)

    def on_train_end(self, state) -> None:
        self.wait()
        if self.group is not None:
            dist.barrier(group=self.group)
        if not self.keep and state.strategy.is_main:
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- save -------------------------------------------------------------------------------
    def save(self, state, epoch_done: bool = False) -> Path:
        """Write a backup of ``state`` (every rank calls this at the same step);
        ``epoch_done``: the epoch's end (validation, history) has run too."""
        self.wait(announce=True)
        self.check_finite(state)
        folder = self.dir / folder_name(state.global_step)
        main = state.strategy.is_main
        if main:
            shutil.rmtree(folder, ignore_errors=True)  # a stale partial write of this step
            folder.mkdir(parents=True)
        self._barrier()
        rank = state.strategy.rank
        # After an epoch's end the data has moved to the next epoch; the counters follow.
        counters = ({"epoch": state.epoch + 1, "step_in_epoch": 0, "global_step": state.global_step}
                    if epoch_done else state.counters())
        save_nested(folder, f"rank-{rank}", {"rng": rng_state(), "data": state.train_data.state_dict()})
        tensors, skeleton = training_state(state.model, state.optimizer)
        if main:
            save_nested(folder, "trainer", {
                "counters": counters, "history": state.history,
                "scheduler": state.scheduler.state_dict() if state.scheduler is not None else None,
                "scaler": state.scaler.state_dict() if state.scaler is not None else None})
            write_skeleton(folder, skeleton)
        info = {"global_step": state.global_step, **self.layout, **{
            f"saved_{k}": v for k, v in counters.items()}}
        if self.asynchronous:
            staged, ready = self.stager.stage(tensors)  # the only part the loop waits for
            self._in_background(self._write, staged, ready, folder, info, main)
        else:
            save_tensors(tensors, folder, process_group=self.group)
            if main:
                self._in_background(self._seal, folder, info)
        self.saves += 1
        return folder

    def check_finite(self, state) -> None:
        """Stop the run (HpmodelError naming the step) if any parameter or optimizer tensor
        is NaN or infinite on any rank; one device sync per backup."""
        tensors = list(state.model.parameters())
        if isinstance(state.optimizer, torch.optim.Optimizer):
            tensors += [v for slot in state.optimizer.state.values() for v in slot.values()
                        if torch.is_tensor(v)]
        finite = all_finite(tensors)
        loss_finite = state.extra.get("finite")  # the Trainer's on-device loss flag, if any
        if loss_finite is not None:
            finite = finite & loss_finite().to(finite.device)
        finite = torch.tensor([int(bool(finite))])
        if dist.is_initialized():
            dist.all_reduce(finite, op=dist.ReduceOp.MIN, group=self.group)
        if not finite.item():
            kept = step_folders(self.dir)
            raise HpmodelError(
                f"the model became non-finite at step {state.global_step}: lower optimizer.lr, enable "
                "train.clip_grad_norm, or use precision bf16/fp32 (no backup of it was written; "
                + (f"the last good one, '{kept[0]}', is kept)" if kept else "none was written before)"))

    def _in_background(self, work: Callable, *args: Any) -> None:
        self.pending = threading.Thread(target=self._guard, args=(work, *args), daemon=True,
                                        name="hpmodel-backup")
        self.pending.start()

    def _guard(self, work: Callable, *args: Any) -> None:
        try:
            work(*args)
        except BaseException as error:  # surfaced on the training thread at the next step
            self.error = error

    def _write(self, staged, ready, folder: Path, info: dict, main: bool) -> None:
        """Background, every rank: wait for the copy, write with DCP, rank 0 seals."""
        ready()
        save_tensors(staged, folder, process_group=self.group)  # its last collective: all written
        if main:
            self._seal(folder, info)

    def _seal(self, folder: Path, info: dict) -> None:
        """Rank 0, after the write: fsync and checksum everything, write the manifest, prune."""
        write_manifest(folder, self.fingerprint, info)
        self.sealed.add(folder.name)
        prune(self.dir, self.keep_last, known_good=self.sealed, check=check_dcp_folder)

    def wait(self, announce: bool = False) -> None:
        """Block until the write in flight (if any) is complete; raise its error."""
        if self.pending is not None:
            if announce and self.pending.is_alive() and not self.said_waiting:
                self.said_waiting = True
                print(f"hpmodel: the previous backup in '{self.dir}' is still being written; the next "
                      "one waits for it (said once; a larger backup.every_steps avoids the wait)",
                      file=sys.stderr, flush=True)
            self.pending.join()
            self.pending = None
        self.raise_background_error()

    def raise_background_error(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            if isinstance(error, HpmodelError):
                raise error
            raise HpmodelError(f"writing a backup to '{self.dir}' failed ({_first_line(error)}): check "
                               "free space and permissions of backup.dir") from error

    # -- restore ----------------------------------------------------------------------------
    def restore(self, state) -> Path | None:
        """Load the newest valid backup into ``state``; None when there is none."""
        choice: list[Any] = [None, None, None]  # [folder, error message, its layout]
        if state.strategy.is_main:
            choice = self._choose()
        if dist.is_initialized():
            dist.broadcast_object_list(choice, src=0, group=self.group)
        folder, message, layout = choice
        if message:
            raise HpmodelError(message)
        if folder is None:
            return None
        folder = Path(folder)
        try:
            self._load(state, folder, layout)
        except LOAD_ERRORS as error:
            raise HpmodelError(f"backup '{folder}' cannot be loaded ({_first_line(error)}): delete that "
                               "folder to resume from the one before it") from None
        self.restored_from, self.restored_step = folder, state.global_step
        self.sealed.add(folder.name)
        if state.strategy.is_main:
            moved = "" if same_layout(layout, self.layout) else (
                f", written by {layout.get('strategy', '?')} on {layout.get('world_size', 1)} process(es), "
                "resharded")
            print(f"hpmodel: resumed from backup '{folder}' (epoch {state.epoch + 1}, "
                  f"step {state.global_step}{moved})", file=sys.stderr, flush=True)
        return folder

    def _load(self, state, folder: Path, saved: dict) -> None:
        """Load ``folder`` (written in layout ``saved``: strategy, world size) into ``state``."""
        load_model_state(state.model, state.optimizer, folder, process_group=self.group)
        trainer = load_nested(folder, "trainer")
        state.load_counters(trainer["counters"])
        state.history[:] = trainer["history"]
        if state.scheduler is not None and trainer["scheduler"] is not None:
            state.scheduler.load_state_dict(trainer["scheduler"])
        if state.scaler is not None and trainer["scaler"] is not None:
            state.scaler.load_state_dict(trainer["scaler"])
        rank = state.strategy.rank
        if same_layout(saved, self.layout):  # exact: every rank continues its own streams
            mine = load_nested(folder, f"rank-{rank}")
            state.train_data.load_state_dict(mine["data"])
        else:  # the global position of rank 0, continued by every rank of this world
            mine = load_nested(folder, f"rank-{saved_rank(rank, int(saved.get('world_size', 1)))}")
            data = load_nested(folder, "rank-0")["data"]
            state.train_data.load_state_dict(moved_data_state(data, state.train_data.state_dict()))
        set_rng_state(mine["rng"])  # last: loading must not move any stream

    def _choose(self) -> list[Any]:
        """Rank 0: [newest valid folder or None, error message or None, its layout]."""
        folder, manifest, problems = find_backup(self.dir, check=check_dcp_folder)
        for line in problems:
            print(f"hpmodel: {line}", file=sys.stderr, flush=True)
        if folder is None:
            return [None, self._all_unusable(), None]
        stored = manifest.get("fingerprint", {})
        differences = excused(fingerprint_mismatch(stored, self.fingerprint), stored, self.fingerprint,
                              self.layout)
        if differences:
            return [None, f"backup directory '{self.dir}' belongs to a different model or config "
                          f"(differs in {', '.join(differences[:5])}): give this run its own "
                          "backup.dir, or delete that directory to start over", None]
        problem = layout_problem(manifest, self.layout, folder)
        if problem:
            return [None, problem, None]
        saved = {key: manifest[key] for key in ("strategy", "world_size", "global_batch") if key in manifest}
        return [str(folder), None, saved]

    def _all_unusable(self) -> str | None:
        """No backup loads: an error if any was complete (corrupt, unsafe), else None (only
        interrupted writes: start over). ``fresh_if_corrupt`` removes them and starts over."""
        complete = [f for f in step_folders(self.dir) if (f / MANIFEST).is_file()]
        if not complete:
            return None
        if self.fresh_if_corrupt:
            for folder in step_folders(self.dir):
                shutil.rmtree(folder, ignore_errors=True)
            print(f"hpmodel: every backup in '{self.dir}' was corrupt; removed them and starting "
                  "over (backup.fresh_if_corrupt)", file=sys.stderr, flush=True)
            return None
        return (f"every backup in '{self.dir}' is corrupt or unsafe to load ({len(complete)} refused, "
                "reasons above): delete that directory, or set backup.fresh_if_corrupt = true to "
                "start over")

    def _barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier(group=self.group)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


# Settings that change neither the numbers nor the model: a resumed run may differ in them.
NOT_FINGERPRINTED = {"train": ("progress", "log_every_steps", "epochs", "inject_kill", "compile",
                               "compile_mode"),
                     "backup": None,
                     "strategy": ("max_restarts", "rdzv_endpoint", "node_rank", "timeout_s")}


def config_fingerprint(cfg) -> dict[str, Any]:
    """The resolved config as flat ``section.key → value``, minus what may change on resume.

    Example::

        BackupAndRestore("ckpt/", fingerprint=config_fingerprint(load_config("run.toml")))
    """

    flat: dict[str, Any] = {}
    for section, table in cfg.to_dict().items():
        skipped = NOT_FINGERPRINTED.get(section, ())
        if skipped is None:
            continue
        if not isinstance(table, dict):
            flat[section] = table
            continue
        flat.update({f"{section}.{k}": v for k, v in table.items() if k not in skipped})
    return flat
