"""``BackupAndRestore``: resume an interrupted run exactly where it stopped.

Keras's name and semantics: the backup exists to resume an interrupted run and is removed
when training finishes (unless ``keep=True``). Unlike Keras, the resume is exact to the
step: model, optimizer, LR schedule, grad scaler, counters, every random-number stream of
every rank and the input pipeline's position are saved, so the resumed run takes the same
steps on the same samples as a run that never stopped. ``torch.distributed.checkpoint``
writes model and optimizer (:mod:`hpmodel.train.backup_dcp`); the folder format, checksums
and manifest are in :mod:`hpmodel.train.backup_format`.

Example::

    trainer = hm.Trainer(callbacks=[hm.BackupAndRestore("ckpt/", every_steps=100)])
    trainer.fit(model_fn, optimizer_fn, data, epochs=10)   # killed? run it again: it resumes
"""

from __future__ import annotations

import shutil
import sys
import threading
from pathlib import Path
from typing import Any

import torch.distributed as dist

from hpmodel.kernel.errors import HpmodelError
from hpmodel.train.backup_dcp import load_model_state, model_fingerprint, save_model_state
from hpmodel.train.backup_format import (check_world_size, find_backup, fingerprint_mismatch,
                                         folder_name, load_nested, prune, save_nested, write_manifest)
from hpmodel.train.callbacks import Callback
from hpmodel.train.seeding import rng_state, set_rng_state
import dataclasses


class BackupAndRestore(Callback):
    """Back up the whole training state every ``every_steps`` steps and/or every epoch;
    restore the newest valid backup when training begins.

    ``asynchronous=True`` writes model and optimizer in a background thread
    (``dcp.async_save``) so the loop continues; at most one write is in flight.
    ``fingerprint`` (e.g. the resolved config) is stored and must match on resume.

    Example::

        BackupAndRestore("ckpt/", every_steps=50, every_epoch=True, keep=False, asynchronous=True)
    """

    def __init__(self, dir: str | Path, every_steps: int = 0, every_epoch: bool = True,
                 keep: bool = False, asynchronous: bool = False, fingerprint: dict | None = None,
                 keep_last: int = 2):
        if every_steps < 0:
            raise HpmodelError(f"backup.every_steps = {every_steps} must be 0 (off) or more")
        self.dir = Path(dir)
        self.every_steps, self.every_epoch, self.keep = every_steps, every_epoch, keep
        self.asynchronous = asynchronous
        self.user_fingerprint = fingerprint or {}
        self.keep_last = max(2, keep_last)  # the previous backup survives a corrupt newest one
        self.group = None  # a Gloo group of its own, so background writes never race training
        self.pending: tuple[Any, threading.Thread | None] | None = None
        self.error: BaseException | None = None
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
        self.restore(state)

    def on_step_end(self, state, logs) -> None:
        if self.every_steps and state.global_step % self.every_steps == 0:
            self.save(state)

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
        self.wait()
        folder = self.dir / folder_name(state.global_step)
        main = state.strategy.is_main
        if main:
            shutil.rmtree(folder, ignore_errors=True)  # a stale partial write of this step
            folder.mkdir(parents=True)
        self._barrier()
        rank, world = state.strategy.rank, state.strategy.world_size
        # After an epoch's end the data has moved to the next epoch; the counters follow.
        counters = ({"epoch": state.epoch + 1, "step_in_epoch": 0, "global_step": state.global_step}
                    if epoch_done else state.counters())
        save_nested(folder, f"rank-{rank}", {"rng": rng_state(), "data": state.train_data.state_dict()})
        if main:
            save_nested(folder, "trainer", {
                "counters": counters, "history": state.history,
                "scheduler": state.scheduler.state_dict() if state.scheduler is not None else None,
                "scaler": state.scaler.state_dict() if state.scaler is not None else None})
        info = {"global_step": state.global_step, "world_size": world, **{
            f"saved_{k}": v for k, v in counters.items()}}
        future = save_model_state(state.model, state.optimizer, folder,
                                  asynchronous=self.asynchronous, process_group=self.group)
        finisher = None
        if main:
            finisher = threading.Thread(target=self._finish, args=(future, folder, info), daemon=True)
            finisher.start()
        self.pending = (future, finisher)
        if not self.asynchronous:
            self.wait()
        self.saves += 1
        return folder

    def _finish(self, future, folder: Path, info: dict) -> None:
        """Rank 0, after the write: checksum everything, write the manifest, drop old backups."""
        try:
            future.result()  # DCP's last collective means every rank's files are written
            write_manifest(folder, self.fingerprint, info)
            prune(self.dir, self.keep_last)
        except BaseException as error:  # surfaced on the training thread by wait()
            self.error = error

    def wait(self) -> None:
        """Block until the write in flight (if any) is complete; raise its error."""
        if self.pending is not None:
            future, finisher = self.pending
            future.result()
            if finisher is not None:
                finisher.join()
            self.pending = None
        if self.error is not None:
            error, self.error = self.error, None
            raise HpmodelError(f"writing a backup to '{self.dir}' failed ({error}): check free space "
                               "and permissions of backup.dir") from error

    # -- restore ----------------------------------------------------------------------------
    def restore(self, state) -> Path | None:
        """Load the newest valid backup into ``state``; None when there is none."""
        choice: list[Any] = [None, None]  # [folder, error message]
        if state.strategy.is_main:
            choice = self._choose()
        if dist.is_initialized():
            dist.broadcast_object_list(choice, src=0, group=self.group)
        folder, message = choice
        if message:
            raise HpmodelError(message)
        if folder is None:
            return None
        folder = Path(folder)
        load_model_state(state.model, state.optimizer, folder, process_group=self.group)
        trainer = load_nested(folder, "trainer")
        state.load_counters(trainer["counters"])
        state.history[:] = trainer["history"]
        if state.scheduler is not None and trainer["scheduler"] is not None:
            state.scheduler.load_state_dict(trainer["scheduler"])
        if state.scaler is not None and trainer["scaler"] is not None:
            state.scaler.load_state_dict(trainer["scaler"])
        mine = load_nested(folder, f"rank-{state.strategy.rank}")
        state.train_data.load_state_dict(mine["data"])
        set_rng_state(mine["rng"])  # last: loading must not move any stream
        self.restored_from, self.restored_step = folder, state.global_step
        if state.strategy.is_main:
            print(f"hpmodel: resumed from backup '{folder}' (epoch {state.epoch + 1}, "
                  f"step {state.global_step})", file=sys.stderr, flush=True)
        return folder

    def _choose(self) -> list[Any]:
        """Rank 0: [newest valid folder or None, error message or None]."""
        folder, manifest, problems = find_backup(self.dir)
        for line in problems:
            print(f"hpmodel: {line}", file=sys.stderr, flush=True)
        if folder is None:
            return [None, None]
        differences = fingerprint_mismatch(manifest.get("fingerprint", {}), self.fingerprint)
        if differences:
            return [None, f"backup directory '{self.dir}' belongs to a different model or config "
                          f"(differs in {', '.join(differences[:5])}): give this run its own "
                          "backup.dir, or delete that directory to start over"]
        try:
            check_world_size(manifest, self._world_size(), folder)
        except HpmodelError as error:
            return [None, str(error)]
        return [str(folder), None]

    def _world_size(self) -> int:
        return dist.get_world_size() if dist.is_initialized() else 1

    def _barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier(group=self.group)


# Settings that change neither the numbers nor the model: a resumed run may differ in them.
NOT_FINGERPRINTED = {"train": ("progress", "log_every_steps", "epochs"), "backup": None,
                     "strategy": ("max_restarts", "rdzv_endpoint", "node_rank", "timeout_s")}


def config_fingerprint(cfg) -> dict[str, Any]:
    """The resolved config as flat ``section.key → value``, minus what may change on resume.

    Example::

        BackupAndRestore("ckpt/", fingerprint=config_fingerprint(load_config("run.toml")))
    """

    flat: dict[str, Any] = {}
    for section, table in dataclasses.asdict(cfg).items():
        skipped = NOT_FINGERPRINTED.get(section, ())
        if skipped is None:
            continue
        if not isinstance(table, dict):
            flat[section] = table
            continue
        flat.update({f"{section}.{k}": v for k, v in table.items() if k not in skipped})
    return flat
