"""The report of one training run: summary table, curves and the command to reproduce it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hpmodel.reporting.document import Report
from hpmodel.reporting.plots import plot_training_curves

SUMMARY_KEYS = ("test_accuracy", "test_loss", "test_bits_per_byte", "baseline_gzip_bits_per_byte",
                "test_perplexity", "steps", "epochs", "examples_per_second", "tokens_per_second",
                "mfu", "wall_seconds", "parameters", "strategy", "precision")


def headline(summary: dict[str, Any]) -> str:
    """The report's first line: held-out bits per byte against gzip's for a language model,
    test accuracy otherwise."""
    if "test_bits_per_byte" in summary:
        score = f"held-out {summary['test_bits_per_byte']:.4f} bits per byte"
        if "baseline_gzip_bits_per_byte" in summary:
            score += f" (gzip -9: {summary['baseline_gzip_bits_per_byte']:.4f})"
    else:
        score = f"test accuracy {summary.get('test_accuracy', float('nan')):.4f}"
    return (f"{score} after {summary.get('steps', 0)} steps at "
            f"{summary.get('examples_per_second', 0):,.0f} examples/s ({summary.get('strategy', '')})")


def write_train_report(run_dir: str | Path, summary: dict[str, Any], command: str = "") -> Path:
    """Write ``report.md``, ``report.html`` and ``curves.png`` into ``run_dir``."""
    run_dir = Path(run_dir)
    report = Report(f"Training run {run_dir.name}")
    report.headline(headline(summary))
    report.table([{"metric": k, "value": summary[k]} for k in SUMMARY_KEYS if k in summary])
    report.image(plot_training_curves(run_dir / "metrics.jsonl", run_dir / "curves.png"),
                 "training loss and accuracy or bits per byte (train window, validation per epoch)")
    if (summary.get("input") or {}).get("text"):
        report.heading("Why the accelerator waited")
        report.text(summary["input"]["text"])
    history = summary.get("history") or []
    if history:
        report.heading("Epochs")
        report.table(history)
    if command:
        report.heading("Reproduce")
        report.code(command)
    md, _ = report.write(run_dir)
    return md
