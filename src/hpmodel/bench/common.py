"""What every benchmark shares: environment facts, timing, and writing table + JSON + PNG.

``matplotlib`` draws the plots (Agg backend, no display needed).
"""

from __future__ import annotations

import datetime
import platform
import time
from pathlib import Path
from typing import Any, Callable

import torch

from hpmodel.report import print_rows
from hpmodel.train.run_dir import write_json


def environment() -> dict[str, Any]:
    """Facts that decide how to read a number: date, device, versions."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"date": datetime.date.today().isoformat(), "torch": torch.__version__,
            "python": platform.python_version(), "cpu_count": __import__("os").cpu_count(),
            "gpu": gpu, "gpu_count": torch.cuda.device_count() if gpu else 0}


def timed(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs (CUDA-synchronised)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def write_results(out_dir: Path, name: str, rows: list[dict[str, Any]], *,
                  plot: Callable[[Any], None] | None = None, extra: dict[str, Any] | None = None,
                  title: str | None = None) -> dict[str, Any]:
    """Print ``rows`` as a table, write ``NAME.json`` and, when ``plot(ax)`` is given, ``NAME.png``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": name, "environment": environment(), "rows": rows, **(extra or {})}
    print_rows(rows, title=title or f"hpmodel bench {name}")
    write_json(out_dir / f"{name}.json", result)
    if plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(figsize=(7, 4.5))
        plot(axes)
        axes.grid(alpha=0.3)
        figure.tight_layout()
        figure.savefig(out_dir / f"{name}.png", dpi=120)
        plt.close(figure)
    return result
