"""The compression report: ratios against fp32, ``summary.json``, ``report.md`` and two
plots (``matplotlib``, Agg backend).

Example::

    write_report("runs/compressed", rows, skipped={"fp8": "needs a GPU"})
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt

from hpmodel.kernel.files import atomic_write_bytes, write_json
from hpmodel.kernel.timing import environment

matplotlib.use("Agg")


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Size and speed relative to the fp32 row (when present): ``x_smaller_gzip``,
    ``x_smaller_weights`` (initializer bytes of int8 files against their fp32 export) and
    ``x_faster_vs_fastest_fp32_b{1,64}``: the fastest fp32 CPU path (ORT or PyTorch eager)
    divided by the row's own fastest CPU path, at the same batch."""
    base = next((r for r in rows if r["mode"] == "fp32"), None)
    if base is None:
        return
    for row in rows:
        row["x_smaller_gzip"] = base["gzip_bytes"] / row["gzip_bytes"]
        if "test_accuracy" in row and "test_accuracy" in base:
            row["accuracy_change"] = row["test_accuracy"] - base["test_accuracy"]
        if "test_perplexity" in row and "test_perplexity" in base:  # a GPT: relative change
            row["perplexity_change"] = row["test_perplexity"] / base["test_perplexity"] - 1
        for batch in (1, 64):
            fastest = _fastest_cpu_ms(base, batch)
            own = _fastest_cpu_ms(row, batch)
            if fastest and own:
                row[f"x_faster_vs_fastest_fp32_b{batch}"] = fastest / own


def _fastest_cpu_ms(row: dict[str, Any], batch: int) -> float | None:
    times = [row[k] for k in (f"ort_cpu_ms_b{batch}", f"torch_cpu_ms_b{batch}") if k in row]
    return min(times) if times else None


def write_report(out_dir: str | Path, rows: list[dict[str, Any]], skipped: dict[str, str] | None = None,
                 title: str = "hpmodel compress", *, repeats: int | None = None,
                 seed: int | None = None) -> dict[str, Any]:
    """Write ``summary.json``, ``report.md``, ``accuracy_vs_size.png`` and ``accuracy_vs_latency.png``.

    ``repeats`` (timed calls per latency) and ``seed`` (the one the fine-tuned variants
    trained with) are recorded in ``summary.json`` under ``latency`` and ``seeds``.
    """
    out_dir = Path(out_dir)
    add_ratios(rows)
    summary = {"environment": environment(), "variants": rows, "skipped": skipped or {},
               "latency": latency_method(repeats), "seeds": seeds_note(seed)}
    write_json(out_dir / "summary.json", summary)
    atomic_write_bytes(out_dir / "report.md", markdown(rows, skipped or {}, title, summary).encode())
    plot(out_dir, rows)
    return summary


def latency_method(repeats: int | None) -> dict[str, Any]:
    """How every ``*_ms_b*`` figure was taken (the same way at each batch size)."""
    return {"statistic": "median", "timed_calls": repeats, "warm_up": "before the timed calls, at each "
            "batch size and path (hpmodel.compress.measure.latency_ms)", "unit": "ms per call"}


def seeds_note(seed: int | None) -> dict[str, Any]:
    """Compress has no seed list: each variant is built once from the source run; the
    fine-tuned ones (QAT, pruning) train with the run's own seed, so no spread is known."""
    return {"used": [] if seed is None else [seed], "per_seed_results": False,
            "why": "each variant is built once from the source run's weights; fine-tuned variants "
                   "use the source run's seed"}


COLUMNS = ("mode", "format", "dtype", "test_accuracy", "parameters", "bytes", "gzip_bytes",
           "ort_cpu_ms_b1", "ort_cpu_ms_b64", "torch_cpu_ms_b1", "torch_cpu_ms_b64",
           "torch_gpu_ms_b1", "torch_gpu_ms_b64", "x_smaller_gzip", "x_smaller_weights",
           "x_faster_vs_fastest_fp32_b1", "x_faster_vs_fastest_fp32_b64")
LM_COLUMNS = ("test_bits_per_byte", "test_perplexity", "perplexity_change")  # GPT runs only


def markdown(rows: list[dict[str, Any]], skipped: dict[str, str], title: str,
             summary: dict[str, Any] | None = None) -> str:
    def cell(value):
        if isinstance(value, float):
            return f"{value:.4f}" if value < 10 else f"{value:,.1f}"
        return "–" if value is None else (f"{value:,}" if isinstance(value, int) else str(value))

    env = environment()
    columns = COLUMNS[:4] + tuple(c for c in LM_COLUMNS if any(c in r for r in rows)) + COLUMNS[4:]
    lines = [f"# {title}", "", f"{env['date']} · torch {env['torch']} · {env['cpu_count']} CPUs · "
             f"GPU: {env['gpu'] or 'none'}", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    latency, seeds = (summary or {}).get("latency", {}), (summary or {}).get("seeds", {})
    timed = f"of {latency['timed_calls']} timed calls " if latency.get("timed_calls") else ""
    lines += ["", f"Latencies are median milliseconds per call {timed}after warm-up calls at each "
              "batch size (no first-call cost); `ort` is ONNX Runtime (CPU), "
              "`torch` is eager PyTorch. Sizes are of the variant's main file; `x_smaller_weights` "
              "compares initializer bytes with the fp32 export. Speed ratios are against the "
              "fastest fp32 CPU path of this run (ORT or eager; `hpmodel bench compress` adds "
              "torch.compile and torchao).", ""]
    if seeds.get("used"):
        lines += [f"One build per variant, no per-seed spread: fine-tuned variants (QAT, pruning) "
                  f"train with the source run's seed {seeds['used'][0]}.", ""]
    lines += [f"- skipped `{mode}`: {why}" for mode, why in skipped.items()]
    lines += ["", "![accuracy vs size](accuracy_vs_size.png)", "",
              "![accuracy vs latency](accuracy_vs_latency.png)", ""]
    return "\n".join(lines)


def plot(out_dir: Path, rows: list[dict[str, Any]]) -> None:
    scored = [r for r in rows if "test_accuracy" in r]
    for name, key, label in (("accuracy_vs_size", "gzip_bytes", "gzip size (KiB)"),
                             ("accuracy_vs_latency", "cpu_ms_b64", "CPU ms per batch of 64")):
        figure, axes = plt.subplots(figsize=(7, 4.5))
        for row in scored:
            value = (row[key] / 1024 if key == "gzip_bytes"
                     else row.get("ort_cpu_ms_b64", row.get("torch_cpu_ms_b64")))
            if value is None:
                continue
            axes.scatter(value, 100 * row["test_accuracy"])
            axes.annotate(row["mode"], (value, 100 * row["test_accuracy"]), fontsize=8,
                          xytext=(4, 4), textcoords="offset points")
        axes.set_xlabel(label)
        axes.set_ylabel("test accuracy (%)")
        axes.grid(alpha=0.3)
        figure.tight_layout()
        figure.savefig(out_dir / f"{name}.png", dpi=120)
        plt.close(figure)



__all__ = ["add_ratios", "markdown", "write_report"]
