"""``hpmodel bench compress`` case ``structured``: is a Torch-Pruning model physically smaller
and faster than the dense one on the CPU?

For the reference cnn, mlp and transformer (width 256, depth 2, digits-shaped input) it removes
half the parameters with :func:`hpmodel.compress.structured.prune_to_ratio` and times dense and
pruned in ONNX Runtime and PyTorch eager at batch 64 (median of ``repeats`` calls after warm-up),
with the ONNX file size. Untrained weights: this case is about size and speed, not accuracy.

Example::

    structured_rows(Path("/tmp/work"), threads=1, repeats=50)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hpmodel.compress import export, structured
from hpmodel.config import ModelConfig
from hpmodel.kernel.timing import timed
from hpmodel.models import build_model, count_parameters

SHAPE = (1, 8, 8)


def structured_rows(work: Path, threads: int, repeats: int, amount: float = 0.5) -> list[dict[str, Any]]:
    """One row per model and variant (dense, pruned): parameters, ONNX bytes, latency."""
    torch.set_num_threads(threads)
    rows = []
    x = torch.randn(64, *SHAPE)
    for name in ("cnn", "mlp", "transformer"):
        torch.manual_seed(0)
        config = ModelConfig(name=name, width=256 if name != "cnn" else 64, depth=2, heads=4)
        dense = build_model(config, SHAPE, 10).eval()
        pruned = structured.prune_to_ratio(build_model(config, SHAPE, 10), amount, torch.zeros(1, *SHAPE)).eval()
        base = {}
        for variant, model in (("dense", dense), (f"pruned {amount:.0%}", pruned)):
            path = export.export_onnx(model, SHAPE, work / f"structured-{name}-{variant[:5]}.onnx")
            session = export.OnnxModel(path, threads)
            with torch.inference_mode():
                eager = 1000 * timed(lambda: model(x), repeats=repeats, warmup=10)
            ort = 1000 * timed(lambda: session.run_numpy(x.numpy()), repeats=repeats, warmup=10)
            base = base or {"ort": ort, "eager": eager, "bytes": path.stat().st_size}
            rows.append({"case": "structured", "model": name, "variant": variant,
                         "parameters": count_parameters(model), "onnx_bytes": path.stat().st_size,
                         "x_smaller_file": base["bytes"] / path.stat().st_size,
                         "ort_ms_b64": ort, "x_faster_ort": base["ort"] / ort,
                         "eager_ms_b64": eager, "x_faster_eager": base["eager"] / eager,
                         "pruner": "torch_pruning" if structured.available() else "fallback"})
    return rows


__all__ = ["structured_rows"]
