"""What every benchmark shares: environment facts, timing, and writing table + JSON + PNG.

``matplotlib`` draws the plots (Agg backend, no display needed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable


from hpmodel.kernel.files import write_json
from hpmodel.kernel.timing import environment
from hpmodel.reporting.console import print_rows
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the Agg backend


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
        figure, axes = plt.subplots(figsize=(7, 4.5))
        plot(axes)
        axes.grid(alpha=0.3)
        figure.tight_layout()
        figure.savefig(out_dir / f"{name}.png", dpi=120)
        plt.close(figure)
    return result
