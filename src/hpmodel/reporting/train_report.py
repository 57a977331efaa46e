"""The report of one training run: summary table, curves and the command to reproduce it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hpmodel.reporting.document import Report
from hpmodel.reporting.plots import plot_training_curves

SUMMARY_KEYS = ("test_accuracy", "test_loss", "steps", "epochs", "examples_per_second",
                "wall_seconds", "parameters", "strategy", "precision")


def write_train_report(run_dir: str | Path, summary: dict[str, Any], command: str = "") -> Path:
    """Write ``report.md``, ``report.html`` and ``curves.png`` into ``run_dir``."""
    run_dir = Path(run_dir)
    report = Report(f"Training run {run_dir.name}")
    report.headline(f"test accuracy {summary.get('test_accuracy', float('nan')):.4f} after "
                    f"{summary.get('steps', 0)} steps at {summary.get('examples_per_second', 0):,.0f} "
                    f"examples/s ({summary.get('strategy', '')})")
    report.table([{"metric": k, "value": summary[k]} for k in SUMMARY_KEYS if k in summary])
    report.image(plot_training_curves(run_dir / "metrics.jsonl", run_dir / "curves.png"),
                 "training loss and accuracy (train window and validation per epoch)")
    history = summary.get("history") or []
    if history:
        report.heading("Epochs")
        report.table(history)
    if command:
        report.heading("Reproduce")
        report.code(command)
    md, _ = report.write(run_dir)
    return md
