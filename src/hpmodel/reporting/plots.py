"""Plots shared by reports (Agg backend: no display needed)."""

from __future__ import annotations

import json
from pathlib import Path
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the Agg backend


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def second_metric(records: list[dict]) -> str:
    """The right-hand panel's metric: bits per byte for a language model (which logs no token
    accuracy while training), else accuracy."""
    for name in ("bits_per_byte", "accuracy"):
        if any(name in r or f"val_{name}" in r for r in records):
            return name
    return "accuracy"


def plot_training_curves(metrics_path: str | Path, out_path: str | Path, title: str = "") -> Path | None:
    """Loss and accuracy (or bits per byte) against step from a ``metrics.jsonl``: training
    steps and epochs."""
    records = read_metrics(metrics_path)
    steps = [r for r in records if r.get("kind") == "step" and "loss" in r]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    if not steps and not epochs:
        return None
    metric = second_metric(steps + epochs)
    figure, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    if steps:
        loss_ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], label="train (window)",
                     color="#3b6ea5", alpha=0.8)
        shown = [r for r in steps if metric in r]
        acc_ax.plot([r["step"] for r in shown], [r[metric] for r in shown], color="#3b6ea5",
                    alpha=0.8, label="train (window)")
    val = [r for r in epochs if "val_loss" in r]
    if val:
        loss_ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", color="#d9822b",
                     label="validation")
        shown = [r for r in val if f"val_{metric}" in r]
        acc_ax.plot([r["step"] for r in shown], [r[f"val_{metric}"] for r in shown], "o-",
                    color="#d9822b", label="validation")
    for ax, name in ((loss_ax, "loss"), (acc_ax, metric.replace("_", " "))):
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    loss_ax.set_yscale("log")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    out_path = Path(out_path)
    figure.savefig(out_path, dpi=110)
    plt.close(figure)
    return out_path
