"""``hpmodel bench compress``: what compression buys, against the fp32 model, in one run.

Six cases (GPU one skipped without CUDA; ``structured`` in :mod:`hpmodel.bench.compress_structured`):

1. ``cpu-latency``: the digits CNN and a Linear-heavy MLP (256 → 3×1024 → 10, 2.4 M
   parameters) at batch 1 and 64 on the CPU: fp32 eager, fp32 torch.compile and ONNX
   Runtime fp32 (the fastest is the baseline), ORT dynamic and static int8, torchao int8 +
   torch.compile (compiled paths skipped with ``--quick``).
2. ``sparse-size``: gzip size of an 80%-sparse digits MLP (scheduled magnitude pruning,
   stripped) against the dense one, in fp32 and in int8.
3. ``qat`` and ``qat-recovery`` (:mod:`hpmodel.bench._compress_qat`): ``qat`` is MobileNetV1's
   layout on digits resized to 32×32, whose dead depthwise channels make static int8 with
   per-tensor weight scales lose tens of points (per-channel loses nothing): fp32, static int8
   (both scales), QAT with per-tensor fake quant, and the fp32 fine-tune control of the same
   length, then static int8 (issue #19's rule: loss ≥ 2 points, QAT − control ≥ 0.75 × loss).
   ``qat-recovery``: a ReLU MLP with ×100 outlier units (same function), static int8 vs QAT
   vs the control.
4. ``gpu-matmul``: large Linear layers in bf16 vs fp8 row-wise (``torch._scaled_mm``) vs
   2:4 semi-structured sparse (``to_sparse_semi_structured``), per shape.

Options (``--set``): ``threads`` (CPU threads for both runtimes, default 1),
``repeats`` (timed calls), ``outlier_scale`` (default 100), ``seed`` (training seed of the
``qat`` case, default 0).

Example::

    hpmodel bench compress --out runs/bench-compress [--quick]
"""

from __future__ import annotations

import copy
import importlib.util
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hpmodel.bench._compress_qat import add_outliers, qat_cnn_rows, qat_rows, relu_mlp
from hpmodel.bench._compress_runs import train_reference, train_run
from hpmodel.bench.common import write_results
from hpmodel.bench.compress_structured import structured_rows
from hpmodel.compress import export, onnx_graph, prune, quantize
from hpmodel.compress.measure import file_sizes
from hpmodel.compress.variant_load import evaluate_variant
from hpmodel.compress.variants import CompressOptions, build_variant, load_source
from hpmodel.config import ModelConfig
from hpmodel.kernel.files import atomic_write_bytes
from hpmodel.kernel.timing import timed
from hpmodel.models import build_model, count_parameters
from hpmodel.reporting.document import markdown_table


def _ms(fn, repeats: int) -> float:
    return 1000 * timed(fn, repeats=repeats, warmup=3)


# -- 1. CPU latency ------------------------------------------------------------------------
FP32_PATHS = ("pytorch fp32 eager", "pytorch fp32 compile", "onnxruntime fp32")
DISPATCH_NOTE = ("dispatch-bound: per-op overhead (~10-20 µs) outweighs the int8 arithmetic it saves "
                 "at this size; int8 pays off where matmuls dominate")


def latency_models() -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    """The demo CNN (digits: width 32, depth 2) and a Linear-heavy MLP (256 → 3×1024 → 10)."""
    torch.manual_seed(0)
    return {"mlp-2.4M": (build_model(ModelConfig(name="mlp", width=1024, depth=3), (256,), 10).eval(), (256,)),
            "digits-cnn": (build_model(ModelConfig(name="cnn", width=32, depth=2), (64,), 10).eval(), (64,))}


def _timing(fn, repeats: int, warmup: int) -> dict[str, float]:
    """Median and minimum milliseconds after ``warmup`` calls (compilation happens there)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    times.sort()
    return {"ms": times[len(times) // 2], "min_ms": times[0]}


def _runners(model, shape, work: Path, name: str, threads: int, quick: bool) -> tuple[dict, dict]:
    """Callables ``x -> y`` per path, and the weight bytes of each ONNX file."""
    fp32 = export.export_onnx(model, shape, work / f"{name}.onnx")
    calibration = [torch.randn(64, *shape).numpy() for _ in range(4)]
    files = {"onnxruntime fp32": fp32,
             "onnxruntime dynamic-int8": quantize.quantize_onnx_dynamic(fp32, work / f"{name}.dyn.onnx"),
             "onnxruntime static-int8": quantize.quantize_onnx_static(fp32, work / f"{name}.qdq.onnx", calibration)}
    runners: dict[str, Any] = {"pytorch fp32 eager": model}
    if not quick:  # compiling costs ~20-60 s per model on 2 cores
        runners["pytorch fp32 compile"] = torch.compile(model, dynamic=False)
    for label, path in files.items():
        session = export.OnnxModel(path, threads)
        runners[label] = lambda x, session=session: session.run_numpy(x.numpy())
    if not quick and importlib.util.find_spec("torchao") is not None:  # optional dependency
        runners["torchao int8-dynamic compile"] = _torchao_int8(model)
    return runners, {label: onnx_graph.weight_bytes(path) for label, path in files.items()}


def _torchao_int8(model: nn.Module):
    """torchao's Int8DynamicActivationInt8WeightConfig (Linear layers only) under torch.compile
    (eager torchao int8 is slower than fp32 on CPU; compiled, inductor fuses the int8 matmul)."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    quantized = copy.deepcopy(model)
    quantize_(quantized, Int8DynamicActivationInt8WeightConfig())
    return torch.compile(quantized, dynamic=False)


def cpu_latency_rows(work: Path, quick: bool, threads: int, repeats: int) -> list[dict[str, Any]]:
    torch.set_num_threads(threads)
    rows = []
    for name, (model, shape) in latency_models().items():
        runners, weights = _runners(model, shape, work, name, threads, quick)
        for batch in (1, 64):
            x = torch.randn(batch, *shape)
            with torch.inference_mode():
                timings = {label: _timing(lambda: run(x), repeats, warmup=max(10, repeats // 5))
                           for label, run in runners.items()}
            fastest = min((t["ms"], label) for label, t in timings.items() if label in FP32_PATHS)
            for label, timing in timings.items():
                speedup = fastest[0] / timing["ms"]
                int8 = "int8" in label
                rows.append({"case": "cpu-latency", "model": name, "variant": label, "batch": batch,
                             **timing, "fastest_fp32": fastest[1], "x_faster_vs_fastest_fp32": speedup,
                             "x_faster_vs_eager": timings["pytorch fp32 eager"]["ms"] / timing["ms"],
                             "x_smaller_weights": (weights["onnxruntime fp32"] / weights[label]
                                                   if label in weights else None),
                             "parameters": count_parameters(model),
                             "note": DISPATCH_NOTE if int8 and batch == 64 and speedup < 1.5 else ""})
    return rows


# -- 2. gzip size of a sparse model --------------------------------------------------------
def sparse_size_rows(work: Path, quick: bool) -> list[dict[str, Any]]:
    run = train_run(work / "digits-mlp", ['model.name="mlp"', "model.width=512", "model.depth=2",
                                       "optimizer.lr=0.001"], epochs=4 if quick else 10)
    source = load_source(run)
    options = CompressOptions(sparsity=0.8, fine_tune_epochs=2 if quick else 4)
    rows = []
    dense = None
    for mode in ("fp32", "dynamic-int8", "prune", "prune-int8"):
        folder = build_variant(source, mode, work / "sparse", options)
        name = "model.onnx" if mode.endswith("int8") else "model.safetensors"
        sizes = file_sizes(folder / name)
        dense = dense or sizes["gzip_bytes"]
        rows.append({"case": "sparse-size", "variant": mode, "file": name, **sizes,
                     "x_smaller_gzip": dense / sizes["gzip_bytes"],
                     "accuracy": evaluate_variant(folder)["test_accuracy"]})
    return rows


# -- 3. static int8 loses, QAT wins back: hpmodel.bench._compress_qat -----------------------


# -- 4. GPU: fp8 and 2:4 against bf16 -------------------------------------------------------
GPU_SHAPES = [(64, 8192, 8192), (4096, 4096, 4096), (8192, 8192, 8192), (16384, 8192, 28672)]


def gpu_rows(quick: bool, repeats: int) -> list[dict[str, Any]]:
    rows = []
    shapes = GPU_SHAPES[:2] if quick else GPU_SHAPES
    for m, k, n in shapes:
        torch.manual_seed(0)
        layer = nn.Linear(k, n, bias=False).cuda().bfloat16()
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        with torch.no_grad():
            base = _ms(lambda: layer(x), repeats)
            timings = {"bf16": base}
            if quantize.fp8_supported():
                fp8 = quantize.Float8Linear.from_linear(layer)
                timings["fp8 row-wise"] = _ms(lambda: fp8(x), repeats)
            sparse = prune.apply_semi_structured(nn.Sequential(nn.Linear(k, n, bias=False)).cuda().bfloat16())
            timings["2:4 sparse"] = _ms(lambda: sparse(x), repeats)
        for name, ms in timings.items():
            rows.append({"case": "gpu-matmul", "variant": name, "shape": f"{m}x{k}x{n}", "ms": ms,
                         "tflops": 2 * m * k * n / ms / 1e9, "speedup_vs_bf16": base / ms})
    return rows


def run_bench(out_dir: Path, quick: bool = False, threads: int = 1, repeats: int = 0,
              outlier_scale: float = 100.0, seed: int = 0) -> dict:
    """Run the six cases and write compress.json, compress.png and report.md."""
    repeats = repeats or (10 if quick else 50)
    previous_threads = torch.get_num_threads()
    cases = {"cpu-latency": lambda work: cpu_latency_rows(work, quick, threads, repeats),
             "sparse-size": lambda work: sparse_size_rows(work, quick),
             "qat-recovery": lambda work: qat_rows(work, quick, outlier_scale),
             "qat": lambda work: _threads(threads, qat_cnn_rows, work, quick, seed),
             "structured": lambda work: structured_rows(work, threads, repeats),
             "gpu-matmul": lambda work: gpu_rows(quick, repeats)}
    rows, skipped = [], {}
    with tempfile.TemporaryDirectory(prefix="hpmodel-bench-compress-") as temp:
        for case, measure in cases.items():
            reason = _cannot_run(case)
            if reason:
                skipped[case] = reason
                continue
            try:
                rows += measure(Path(temp))
            finally:
                torch.set_num_threads(previous_threads)
    result = write_results(out_dir, "compress", [_headline(r) for r in rows],
                           plot=lambda ax: _plot(ax, rows),
                           extra={"details": rows, "skipped": skipped, "threads": threads,
                                  "quick": quick})
    _write_cases(out_dir, rows, skipped)
    return result


def _threads(threads: int, measure, *args):
    """``measure(*args)`` on ``threads`` CPU threads (its training and fine-tuning included: the
    accuracies depend on the reduction order); ``run_bench`` restores the count."""
    torch.set_num_threads(threads)
    return measure(*args)


CASE_PACKAGES = {"cpu-latency": ("onnx", "onnxruntime"), "sparse-size": ("onnx", "onnxruntime"),
                 "qat-recovery": ("torchao", "onnx", "onnxruntime"), "qat": ("torchao", "onnx", "onnxruntime"),
                 "structured": ("onnx", "onnxruntime"), "gpu-matmul": ()}


def _cannot_run(case: str) -> str:
    """Why ``case`` cannot run here ('' when it can)."""

    if case == "gpu-matmul" and not torch.cuda.is_available():
        return "no CUDA device"
    missing = [p for p in CASE_PACKAGES[case] if importlib.util.find_spec(p) is None]
    return f"needs {', '.join(missing)} (pip install hpmodel[compress])" if missing else ""


def _headline(row: dict[str, Any]) -> dict[str, Any]:
    """One short line per measurement for the printed table (details go to the JSON)."""
    case = row["case"]
    if case == "cpu-latency":
        return {"case": case, "variant": f"{row['model']} {row['variant']}", "setting": f"batch {row['batch']}",
                "value": f"{row['ms']:.3f} ms",
                "vs_baseline": f"{row['x_faster_vs_fastest_fp32']:.2f}× vs fastest fp32"}
    if case == "sparse-size":
        return {"case": case, "variant": row["variant"], "setting": f"acc {row['accuracy']:.3f}",
                "value": f"{row['gzip_bytes']:,} B gzip", "vs_baseline": f"{row['x_smaller_gzip']:.2f}× smaller"}
    if case == "qat":
        return {"case": case, "variant": " ".join(filter(None, (row["variant"], row["weight_scales"]))),
                "setting": row["model"],
                "value": f"acc {row['accuracy']:.3f}", "vs_baseline": f"{row['points_vs_fp32']:+.2f} points"}
    if case == "structured":
        return {"case": case, "variant": f"{row['model']} {row['variant']}", "setting": f"{row['parameters']:,} params",
                "value": f"{row['ort_ms_b64']:.3f} ms b64 (ORT)",
                "vs_baseline": f"{row['x_smaller_file']:.2f}× smaller, {row['x_faster_ort']:.2f}× faster"}
    if case == "qat-recovery":
        return {"case": case, "variant": row["variant"], "setting": f"outliers ×{row['outlier_scale']:g}",
                "value": f"acc {row['accuracy']:.3f}", "vs_baseline": f"{row['points_vs_fp32']:+.2f} points"}
    return {"case": case, "variant": row["variant"], "setting": row["shape"],
            "value": f"{row['ms']:.3f} ms", "vs_baseline": f"{row['speedup_vs_bf16']:.2f}× faster"}


def _plot(axes, rows) -> None:
    bars = [(f"{r['model']} {r['variant']} b{r['batch']}", r["x_faster_vs_fastest_fp32"]) for r in rows
            if r["case"] == "cpu-latency"]
    bars += [(f"gpu {r['variant']} {r['shape']}", r["speedup_vs_bf16"]) for r in rows
             if r["case"] == "gpu-matmul"]
    axes.barh([b[0] for b in bars], [b[1] for b in bars])
    axes.axvline(1.0, color="black", linewidth=0.8)
    axes.set_xlabel("speedup vs the fastest fp32 path (CPU) / bf16 (GPU)")
    axes.tick_params(axis="y", labelsize=7)


def _write_cases(out_dir: Path, rows, skipped) -> None:
    """``cases.md``: one table per case with every detail column (``report.md``, written
    by the bench runner, has the headline rows only)."""
    lines = ["# hpmodel bench compress: every case", ""]
    for case in dict.fromkeys(r["case"] for r in rows):
        chosen = [{k: v for k, v in r.items() if k != "case"} for r in rows if r["case"] == case]
        lines += [f"## {case}", "", *markdown_table(chosen), ""]
    lines += [f"- skipped {case}: {why}" for case, why in skipped.items()]
    lines += ["", "![speedups](compress.png)", ""]
    atomic_write_bytes(Path(out_dir) / "cases.md", "\n".join(lines).encode())


__all__ = ["add_outliers", "relu_mlp", "run_bench", "train_reference", "train_run"]
