"""The table at the end of ``hpmodel distill``, like Hinton et al.'s: teacher, student from
scratch, distilled student — accuracy, parameters, file size and CPU latency — plus the
fraction of the teacher−student gap that distillation recovered.

Latency is the median of ``repeats`` timed forwards on the CPU under
``torch.inference_mode`` (one thread per process as the CLI runs it), at batch 1 and 64.

Example::

    row = measure("distilled student", model, splits.test, "runs/d/model.safetensors")
    write_report("runs/d", [teacher_row, scratch_row, row], extra={"gap_recovered": 0.8})
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from hpmodel.models import count_parameters
from hpmodel.kernel.files import atomic_write_bytes, write_json


@torch.inference_mode()
def accuracy(model: nn.Module, data, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` (on the CPU) over an ArraySplit or ``(x, y)``."""
    x, y = (data.x, data.y) if hasattr(data, "x") else tuple(data[:2])
    model = model.cpu().eval()
    correct = sum(int((model(x[i:i + batch_size]).argmax(-1) == y[i:i + batch_size]).sum())
                  for i in range(0, len(x), batch_size))
    return correct / max(len(x), 1)


@torch.inference_mode()
def latency_ms(model: nn.Module, example: torch.Tensor, batch: int, repeats: int = 20) -> float:
    """Median milliseconds of one CPU forward at ``batch`` examples (after 3 warm-up calls)."""
    model = model.cpu().eval()
    x = example.expand(batch, *example.shape[1:]).contiguous()
    for _ in range(3):
        model(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def measure(name: str, model: nn.Module, test, weights_path: str | Path | None = None,
            repeats: int = 20, accuracies: Sequence[float] | None = None) -> dict[str, Any]:
    """One row of the table; ``accuracies`` (one per seed) replaces the single measurement."""
    scores = list(accuracies) if accuracies else [accuracy(model, test)]
    example = (test.x if hasattr(test, "x") else test[0])[:1]
    path = Path(weights_path) if weights_path else None
    return {"model": name, "test_accuracy": statistics.mean(scores),
            "test_accuracy_std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
            "seeds": len(scores), "test_errors": round((1 - statistics.mean(scores)) * len(test.y
                                                       if hasattr(test, "y") else test[1]), 1),
            "parameters": count_parameters(model),
            "file_bytes": path.stat().st_size if path and path.is_file() else None,
            "latency_ms_batch1": latency_ms(model, example, 1, repeats),
            "latency_ms_batch64": latency_ms(model, example, 64, repeats)}


def gap_recovered(teacher: float, scratch: float, distilled: float) -> float | None:
    """(distilled − scratch) / (teacher − scratch); None when the teacher is no better.

    Hinton's MNIST: errors 146 (scratch) → 74 (distilled), teacher 67: 72 / 79 ≈ 0.91.
    """
    if teacher <= scratch:
        return None
    return (distilled - scratch) / (teacher - scratch)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a GitHub-flavoured markdown table."""
    header = ("| model | test accuracy | errors | parameters | file size | latency b1 (ms) "
              "| latency b64 (ms) |\n|---|---:|---:|---:|---:|---:|---:|")
    lines = [header]
    for row in rows:
        accuracy_text = f"{row['test_accuracy']:.4f}"
        if row.get("seeds", 1) > 1:
            accuracy_text += f" ± {row['test_accuracy_std']:.4f} ({row['seeds']} seeds)"
        size = f"{row['file_bytes'] / 1024:.1f} KiB" if row.get("file_bytes") else "—"
        lines.append(f"| {row['model']} | {accuracy_text} | {row['test_errors']} | "
                     f"{row['parameters']:,} | {size} | {row['latency_ms_batch1']:.3f} | "
                     f"{row['latency_ms_batch64']:.3f} |")
    return "\n".join(lines)


def write_report(out_dir: str | Path, rows: list[dict[str, Any]], summary: dict[str, Any],
                 title: str = "Distillation report") -> None:
    """Write ``summary.json`` (``summary`` plus ``rows``) and ``report.md`` into ``out_dir``."""
    out_dir = Path(out_dir)
    write_json(out_dir / "summary.json", {**summary, "report": rows})
    gap = summary.get("gap_recovered")
    gap_text = (f"{gap:.0%} of the teacher−student gap recovered" if gap is not None
                else "no gap to recover (the student from scratch is as good as the teacher)")
    settings = ", ".join(f"{k} = {v}" for k, v in summary.get("distill", {}).items())
    text = (f"# {title}\n\n{markdown_table(rows)}\n\n**{gap_text}** "
            f"(Hinton et al. 2015 on MNIST: 146 → 74 errors with the teacher at 67, ≈ 91%).\n\n"
            f"Settings: {settings}.\n\nLatency: median CPU forward, torch.inference_mode, "
            f"{torch.get_num_threads()} thread(s).\n")
    atomic_write_bytes(out_dir / "report.md", text.encode())


__all__ = ["accuracy", "gap_recovered", "latency_ms", "markdown_table", "measure", "write_report"]
