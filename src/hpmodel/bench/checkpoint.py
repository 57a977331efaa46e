"""``hpmodel bench checkpoint``: what backups cost the training loop.

One process trains an MLP (``width`` × ``depth``, AdamW) for ``steps`` steps four ways in
one run: without backups; with the plain PyTorch way (``torch.save`` of model and optimizer
state dicts every ``every_steps`` steps, on the training thread); with
:class:`~hpmodel.train.backup.BackupAndRestore` synchronous; and asynchronous
(``dcp.async_save``). It reports the mean step time, the overhead against no backups
measured at this (high) frequency, the loop's blocking time per backup, and that time
scaled to one backup per minute of training (blocking seconds / 60) — the target is ≤ 5 %
for asynchronous saves.

Options (``--set key=value``): width, depth, steps, every_steps, batch_size, dir.

Example::

    hpmodel bench checkpoint --out runs/bench --quick          # CPU, < 60 s
    hpmodel bench checkpoint --out runs/bench --set width=4096 --set depth=8
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hpmodel.bench.common import write_results
from hpmodel.train.backup import BackupAndRestore
from hpmodel.train.callbacks import Callback
import hpmodel as hm


class TorchSave(Callback):
    """The plain PyTorch way: ``torch.save`` of the state dicts every ``every_steps`` steps."""

    def __init__(self, dir: Path, every_steps: int):
        self.dir, self.every_steps = Path(dir), every_steps

    def on_step_end(self, state, logs) -> None:
        if state.global_step % self.every_steps == 0:
            self.dir.mkdir(parents=True, exist_ok=True)
            torch.save({"model": state.model.state_dict(), "optimizer": state.optimizer.state_dict()},
                       self.dir / f"step-{state.global_step}.pt")


def build_mlp(width: int, depth: int) -> nn.Module:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


def measure(mode: str, width: int, depth: int, steps: int, every_steps: int, batch_size: int,
            folder: Path) -> dict[str, Any]:
    """Train ``steps`` steps with backups done the ``mode`` way; mean step time and saves."""

    device = "cuda" if torch.cuda.is_available() else "cpu"
    shutil.rmtree(folder, ignore_errors=True)
    callbacks: list = []
    if mode == "torch.save":
        callbacks = [TorchSave(folder, every_steps)]
    elif mode != "none":
        callbacks = [BackupAndRestore(folder, every_steps=every_steps, every_epoch=False,
                                      asynchronous=mode == "async")]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(steps * batch_size, width, generator=generator).to(device)
    y = torch.randint(0, 10, (steps * batch_size,), generator=generator).to(device)
    trainer = hm.Trainer(strategy=hm.get_strategy("one-device", device=device), batch_size=batch_size,
                         progress=False, callbacks=callbacks, log_every_steps=10**9)
    result = trainer.fit(lambda: build_mlp(width, depth),
                         lambda params: torch.optim.AdamW(params, lr=1e-4), (x, y), epochs=1)
    shutil.rmtree(folder, ignore_errors=True)
    seconds = result.summary["wall_seconds"]
    saves = steps // every_steps if mode != "none" else 0
    return {"mode": mode, "steps": result.summary["steps"], "saves": saves,
            "step_ms": 1000 * seconds / steps, "wall_s": seconds}


def run_bench(out_dir: Path, quick: bool = False, width: int = 0, depth: int = 0, steps: int = 0,
              every_steps: int = 0, batch_size: int = 64, dir: str = "") -> dict:
    """Measure none / torch.save / sync / async backups in one run; write checkpoint.json."""
    width = width or (256 if quick else 4096)
    depth = depth or (3 if quick else 8)
    steps = steps or (40 if quick else 400)
    every_steps = every_steps or (10 if quick else 50)
    if not torch.cuda.is_available():
        torch.set_num_threads(1)  # shared CPUs: more threads than cores only adds noise
    root = Path(dir) if dir else Path(tempfile.mkdtemp(prefix="hpmodel-bench-ckpt-"))
    parameters = sum(p.numel() for p in build_mlp(width, depth).parameters())
    measure("none", width, depth, min(steps, 10), every_steps, batch_size, root / "warmup")
    modes = ("none", "torch.save", "sync", "async")
    best: dict[str, dict] = {}
    for _ in range(2):  # interleaved rounds; the faster of two is the less disturbed
        for mode in modes:
            row = measure(mode, width, depth, steps, every_steps, batch_size, root / mode)
            if mode not in best or row["step_ms"] < best[mode]["step_ms"]:
                best[mode] = row
    rows = [best[mode] for mode in modes]
    base = rows[0]["step_ms"]
    for row in rows:
        blocking_s = (row["step_ms"] - base) * steps / 1000 / max(row["saves"], 1)
        row["overhead_measured_%"] = 100 * (row["step_ms"] / base - 1)
        row["blocking_s_per_backup"] = max(blocking_s, 0.0) if row["saves"] else 0.0
        row["overhead_at_1_per_min_%"] = 100 * row["blocking_s_per_backup"] / 60
    if not dir:
        shutil.rmtree(root, ignore_errors=True)

    def plot(axes):
        axes.bar([r["mode"] for r in rows], [r["step_ms"] for r in rows], color="#4c72b0")
        axes.set_ylabel("mean step time (ms)")
        axes.set_title(f"backups every {every_steps} steps, {parameters / 1e6:.1f} M parameters")

    return write_results(out_dir, "checkpoint", rows, plot=plot, extra={
        "width": width, "depth": depth, "parameters": parameters, "steps": steps,
        "every_steps": every_steps, "batch_size": batch_size, "target_overhead_%": 5.0,
        "state_megabytes": parameters * 4 * 3 / 1e6},  # weights + AdamW's two moments, fp32
        title=f"hpmodel bench checkpoint ({parameters / 1e6:.1f} M parameters, "
              f"a backup every {every_steps} steps)")
