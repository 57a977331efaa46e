"""Measure compressed variants and write the comparison: report.md, summary.json, PNG plots.

Accuracy comes from :func:`~hpmodel.compress.variants.evaluate_variant`, CPU latency from
ONNX Runtime and PyTorch at batch 1 and 64, GPU latency from PyTorch where CUDA exists;
``gzip`` measures how well a file compresses (pruned zeros compress, dense floats do not);
``matplotlib`` draws accuracy against size and against latency.

Example::

    rows = measure_variants(["out/fp32", "out/dynamic-int8"])
    write_report("out", rows)
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import torch

from hpmodel.bench.common import environment, timed
from hpmodel.compress import variants
from hpmodel.train.run_dir import atomic_write_bytes, read_json, write_json

BATCHES = (1, 64)


def file_sizes(path: Path) -> dict[str, int]:
    """Raw and gzip-compressed bytes of a file (level 9, as TF-MOT measures)."""
    data = path.read_bytes()
    return {"bytes": len(data), "gzip_bytes": len(gzip.compress(data, compresslevel=9))}


def parameter_count(folder: Path) -> int:
    """Weights and biases stored by the variant (quantization scales and zero points excluded)."""
    path = folder / "model.safetensors"
    if path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), "pt") as handle:
            return sum(_numel(handle.get_slice(k).get_shape()) for k in handle.keys())
    import onnx

    graph = onnx.load(str(folder / "model.onnx")).graph
    return sum(_numel(t.dims) for t in graph.initializer
               if len(t.dims) >= 1 and "scale" not in t.name and "zero_point" not in t.name)


def _numel(shape) -> int:
    total = 1
    for dim in shape:
        total *= int(dim)
    return total


def latency_ms(predict, example: torch.Tensor, repeats: int) -> float:
    """Median milliseconds of one call on ``example`` (after warm-up)."""
    return 1000 * timed(lambda: predict(example), repeats=repeats, warmup=2)


def measure_variant(folder: Path, repeats: int = 20, threads: int = 0) -> dict[str, Any]:
    """One table row: accuracy, parameters, file sizes and latencies of a variant folder."""
    info = read_json(folder / "variant.json")
    row: dict[str, Any] = {"mode": info["mode"], "format": info["format"], "dtype": info["dtype"]}
    gpu_only = bool(info.get("apply")) and not torch.cuda.is_available()
    if not gpu_only:
        row.update(variants.evaluate_variant(folder))
    row["parameters"] = parameter_count(folder)
    main_file = folder / ("model.onnx" if info["format"] == "onnx" else "model.safetensors")
    row.update(file_sizes(main_file))
    if (folder / "model.onnx").is_file():
        row.update({f"onnx_{k}": v for k, v in file_sizes(folder / "model.onnx").items()})
    shape = _input_shape(folder)
    onnx_file = folder / "model.onnx"
    if onnx_file.is_file() and info["dtype"] in ("float32", "int8"):  # fp16 ONNX is for GPUs
        from hpmodel.compress.export import OnnxModel

        runner = OnnxModel(onnx_file, threads=threads)
        for batch in BATCHES:
            x = torch.randn(batch, *shape).numpy()
            row[f"ort_cpu_ms_b{batch}"] = latency_ms(runner.run_numpy, x, repeats)
    if info["format"] == "torch" and not info.get("apply"):
        predictor = variants.load_torch_variant(folder, info, "cpu")
        for batch in BATCHES:
            row[f"torch_cpu_ms_b{batch}"] = latency_ms(predictor, torch.randn(batch, *shape), repeats)
    if torch.cuda.is_available() and info["format"] == "torch":
        predictor = variants.load_torch_variant(folder, info, "cuda")
        for batch in BATCHES:
            x = torch.randn(batch, *shape, device="cuda")
            row[f"torch_gpu_ms_b{batch}"] = latency_ms(predictor, x, repeats)
    return row


def _input_shape(folder: Path) -> tuple[int, ...]:
    from hpmodel.config import load_config
    from hpmodel.datasets import load_splits

    cfg = load_config(folder / "config.toml")
    return load_splits(cfg.data, cfg.seed).input_shape


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Size and speed relative to the fp32 row (when present): ``x_smaller``, ``x_faster_*``."""
    base = next((r for r in rows if r["mode"] == "fp32"), None)
    if base is None:
        return
    for row in rows:
        row["x_smaller_gzip"] = base["gzip_bytes"] / row["gzip_bytes"]
        if "test_accuracy" in row and "test_accuracy" in base:
            row["accuracy_change"] = row["test_accuracy"] - base["test_accuracy"]
        for key in ("ort_cpu_ms_b64", "torch_cpu_ms_b64"):
            if key in row:
                row[f"x_faster_{key.replace('_ms', '')}_vs_torch"] = base["torch_cpu_ms_b64"] / row[key]


def write_report(out_dir: str | Path, rows: list[dict[str, Any]], skipped: dict[str, str] | None = None,
                 title: str = "hpmodel compress") -> dict[str, Any]:
    """Write ``summary.json``, ``report.md``, ``accuracy_vs_size.png`` and ``accuracy_vs_latency.png``."""
    out_dir = Path(out_dir)
    add_ratios(rows)
    summary = {"environment": environment(), "variants": rows, "skipped": skipped or {}}
    write_json(out_dir / "summary.json", summary)
    atomic_write_bytes(out_dir / "report.md", markdown(rows, skipped or {}, title).encode())
    plot(out_dir, rows)
    return summary


COLUMNS = ("mode", "format", "dtype", "test_accuracy", "parameters", "bytes", "gzip_bytes",
           "ort_cpu_ms_b1", "ort_cpu_ms_b64", "torch_cpu_ms_b1", "torch_cpu_ms_b64",
           "torch_gpu_ms_b1", "torch_gpu_ms_b64", "x_smaller_gzip")


def markdown(rows: list[dict[str, Any]], skipped: dict[str, str], title: str) -> str:
    def cell(value):
        if isinstance(value, float):
            return f"{value:.4f}" if value < 10 else f"{value:,.1f}"
        return "–" if value is None else (f"{value:,}" if isinstance(value, int) else str(value))

    env = environment()
    lines = [f"# {title}", "", f"{env['date']} · torch {env['torch']} · {env['cpu_count']} CPUs · "
             f"GPU: {env['gpu'] or 'none'}", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in COLUMNS) + " |" for row in rows]
    lines += ["", "Latencies are median milliseconds per call; `ort` is ONNX Runtime (CPU), "
              "`torch` is eager PyTorch. Sizes are of the variant's main file.", ""]
    lines += [f"- skipped `{mode}`: {why}" for mode, why in skipped.items()]
    lines += ["", "![accuracy vs size](accuracy_vs_size.png)", "",
              "![accuracy vs latency](accuracy_vs_latency.png)", ""]
    return "\n".join(lines)


def plot(out_dir: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


__all__ = ["file_sizes", "measure_variant", "write_report"]
