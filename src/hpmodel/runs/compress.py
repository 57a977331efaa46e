"""``compress_run``: every requested variant of a run, measured and reported in one call.

Example::

    summary = compress_run("runs/digits", "runs/digits-compressed",
                           CompressOptions(modes=["fp32", "dynamic-int8", "prune"]))
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterator

import torch

from hpmodel.compress import variants
from hpmodel.compress.int4 import is_language_model
from hpmodel.compress.measure import measure_variant
from hpmodel.kernel.locks import DirectoryLock, make_directory
from hpmodel.kernel.quiet import quiet_compress
from hpmodel.reporting.compress import write_report
from hpmodel.reporting.console import print_rows
from tqdm import tqdm


def compress_run(run_dir: str | Path, out_dir: str | Path, options: variants.CompressOptions | None = None,
                 repeats: int = 20, *, trust_model_target: bool = False) -> dict[str, Any]:
    """Build, score and time each mode of ``options`` (fp32 is always included as the baseline).

    A ``model.target`` in the run's config.toml is imported only with ``trust_model_target``
    (``--trust-model-target``); ``out_dir`` is locked while the variants are written.
    """

    options = options or variants.CompressOptions()
    out_dir = make_directory(out_dir, "--out", "give a directory for the variants")
    with DirectoryLock(out_dir, "compress output (--out)", fix="give another --out"):
        return _compress(run_dir, out_dir, options, repeats, trust_model_target)


def _compress(run_dir, out_dir: Path, options, repeats: int, trust_model_target: bool) -> dict[str, Any]:
    source = variants.load_source(run_dir, trust_model_target)
    modes = ["fp32"] + [m for m in options.modes if m != "fp32"]
    rows, skipped = [], {}
    language_model = is_language_model(source.cfg)
    for mode in progress(modes):
        if language_model != (mode in variants.LM_MODES) and mode != "fp32":
            skipped[mode] = (f"not built for GPT (causal-lm) runs yet: use --modes {','.join(variants.LM_MODES)}"
                             if language_model else "weight-only int4 is for GPT (causal-lm) runs")
            continue
        if mode in variants.GPU_MODES and not torch.cuda.is_available():
            skipped[mode] = "needs a CUDA GPU (run on the GPU machine)"
            continue
        if variants.missing_packages(mode):
            skipped[mode] = f"needs {', '.join(variants.missing_packages(mode))} (pip install hpmodel[compress])"
            continue
        with quiet_compress():  # torchao's and ONNX Runtime's notices about this machine
            folder = variants.build_variant(source, mode, out_dir, options)
            rows.append(measure_variant(folder, repeats=repeats, trust_model_target=trust_model_target))
    for mode, why in skipped.items():
        print(f"compress: skipped {mode}: {why}", file=sys.stderr, flush=True)
    summary = write_report(out_dir, rows, skipped, title=f"hpmodel compress {run_dir}",
                           repeats=repeats, seed=source.cfg.seed)
    columns = ("mode", "test_accuracy", "test_bits_per_byte", "test_perplexity", "parameters", "bytes",
               "gzip_bytes", "ort_cpu_ms_b64", "torch_cpu_ms_b64", "x_smaller_gzip", "x_smaller_weights")
    print_rows([{k: r.get(k) for k in columns if k in r} for r in rows], title=f"hpmodel compress → {out_dir}")
    return summary


def progress(modes: list[str]) -> Iterator[str]:
    """A tqdm bar on a terminal; elsewhere (a log, a pipe) one plain line per variant."""
    if sys.stderr.isatty():
        yield from tqdm(modes, desc="compress", unit="variant")
        return
    for index, mode in enumerate(modes, 1):
        print(f"compress: variant {index}/{len(modes)} {mode}", file=sys.stderr, flush=True)
        yield mode


__all__ = ["compress_run"]
