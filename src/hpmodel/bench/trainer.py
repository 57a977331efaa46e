"""``hpmodel bench trainer``: one model, one data set, one optimizer and one precision
through the training loops a user would pick instead of hpmodel's, in one run.

Contenders (:mod:`._trainer_contenders`): plain PyTorch eager, plain PyTorch +
``torch.compile`` (of the forward and the loss together), Lightning Fabric
(``lightning.fabric.Fabric``), HF Accelerate (``accelerate.Accelerator``) — each skipped
with a note when its package is missing — and hpmodel's :class:`~hpmodel.train.Trainer`,
eager and compiled (``train.compile``: the whole step). Opt-in, as they autotune for
minutes: ``pytorch compile max-autotune`` and ``hpmodel compile max-autotune`` (both
``mode="max-autotune-no-cudagraphs"``). Data are random tokens (or random features)
already on the device; AdamW (fused on CUDA); bf16 autocast on CUDA, fp32 on the CPU.
The rate is steady state: warm-up steps (compilation included) are not timed, and CUDA is
synchronised at both ends of the timed steps. ``vs fastest peer`` is a row's median rate
over the fastest non-hpmodel contender's on the same model.

Every round's rate per contender is in the JSON (``rounds``), and so are paired ratios
of hpmodel over its plain loop in the same round (``paired``: ``hpmodel compile`` /
``pytorch compile`` and the like, per round with min, median and max), printed under the
table: a slow or fast spell of the machine moves both rates of one round, so the paired
ratio varies less than a ratio of medians taken from different rounds.

Workloads: on a GPU the GPT at 98M parameters (12 layers × 768, vocab 8,192, untied,
seq 512, batch 64); on the CPU (and with ``--quick``) a tiny GPT and the reference
``cnn1d`` and ``mlp``.

Options (``--set KEY=VALUE``): ``models`` (e.g. ``["gpt"]``), ``contenders``, ``steps``,
``warmup``, ``repeats`` (rounds, contender order rotated; the median rate is reported),
``batch``, ``peak_tflops`` (for MFU; default 989 on H100/H200, bf16 dense), ``threads``
(CPU intra-op threads, default 1; 0 keeps torch's default).

Example::

    hpmodel bench trainer --out runs/bench-trainer            # one GPU: the 98M GPT
    hpmodel bench trainer --out runs/bench-trainer --quick    # CPU, small models, < 1 min
    hpmodel bench trainer --out runs/bench-autotune --set repeats=3 \
        --set 'contenders=["pytorch compile","hpmodel compile","pytorch compile max-autotune","hpmodel compile max-autotune"]'
"""

from __future__ import annotations

import dataclasses
import gc
import math
import statistics
from pathlib import Path
from typing import Any

import torch

from hpmodel.bench._trainer_contenders import (CONTENDERS, OPT_IN, PEERS, RUNNERS, Skipped,
                                               Workload)
from hpmodel.bench.common import write_results
from hpmodel.config import ModelConfig
from hpmodel.kernel.errors import HpmodelError
from hpmodel.kernel.timing import peak_tflops as device_peak_tflops
from hpmodel.models import count_parameters
from hpmodel.models.gpt import GPTConfig, flops_per_token

GPU_WORKLOADS = {
    "gpt": Workload("gpt", batch=64, steps=50, warmup=10, lr=3e-4,
                    gpt=GPTConfig(vocab_size=8192, seq_len=512, width=768, depth=12, heads=12,
                                  tie_embeddings=False)),
}
CPU_WORKLOADS = {
    "gpt": Workload("gpt", batch=16, steps=30, warmup=5, lr=1e-3,
                    gpt=GPTConfig(seq_len=64, width=64, depth=2, heads=2)),
    "cnn1d": Workload("cnn1d", batch=64, steps=60, warmup=5, model=ModelConfig(name="cnn1d", width=32, depth=2),
                      input_shape=(1, 256), lr=1e-3),
    "mlp": Workload("mlp", batch=256, steps=150, warmup=5, model=ModelConfig(name="mlp", width=256, depth=3),
                    input_shape=(64,), lr=1e-3),
}
# hpmodel's contender over the plain loop it should match, paired round by round
PAIRS = (("hpmodel compile", "pytorch compile"), ("hpmodel", "pytorch eager"),
         ("hpmodel compile max-autotune", "pytorch compile max-autotune"))


# -- the run -------------------------------------------------------------------------------
def run_bench(out_dir: Path, quick: bool = False, models=None, contenders=None, steps: int = 0,
              warmup: int = -1, repeats: int = 0, batch: int = 0, peak_tflops: float = 0.0,
              threads: int = 1) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() and not quick else "cpu")
    catalogue = GPU_WORKLOADS if device.type == "cuda" else CPU_WORKLOADS
    models, contenders = list(models or catalogue), list(contenders or CONTENDERS)
    for key, chosen, known in (("models", models, catalogue), ("contenders", contenders, RUNNERS)):
        unknown = [v for v in chosen if v not in known]
        if unknown:
            opt_in = f" (not in the default race: {', '.join(OPT_IN)})" if key == "contenders" else ""
            raise HpmodelError(f"{key} {unknown} unknown here ({device.type}): choose from "
                               f"{', '.join(known)}{opt_in}")
    repeats = repeats or (1 if quick or device.type == "cuda" else 5)
    peak = peak_tflops or device_peak_tflops(device)
    rows, errors, rounds = [], {}, {}
    workloads = [_sized(catalogue[name], quick, steps, warmup, batch) for name in models]
    previous = used_threads = torch.get_num_threads()
    try:
        if device.type == "cpu" and threads:
            # One intra-op thread by default: on a shared CPU, OpenMP's spinning threads turn
            # the ratio into a scheduling lottery (5x swings measured on 2 busy cores).
            torch.set_num_threads(threads)
            used_threads = threads
        for work in workloads:
            rates, notes = race(work, device, contenders, repeats, errors)
            rounds[work.name] = rates
            rows += workload_rows(work, rates, notes, peak)
    finally:
        torch.set_num_threads(previous)
    add_ratios(rows)
    paired = {model: paired_ratios(rates) for model, rates in rounds.items()}
    title = f"hpmodel bench trainer ({device.type}, {repeats} round(s), median)"
    result = write_results(out_dir, "trainer", rows, plot=lambda ax: plot(ax, rows), title=title,
                           extra={"device_type": device.type, "quick": quick, "repeats": repeats,
                                  "peak_tflops": peak or None, "errors": errors,
                                  "cpu_threads": used_threads, "rounds": rounds, "paired": paired,
                                  "workloads": {w.name: dataclasses.asdict(w) for w in workloads}})
    print_paired(paired)
    for key, message in errors.items():
        print(f"{key} failed: {message}")
    return result


def _sized(work: Workload, quick: bool, steps: int, warmup: int, batch: int) -> Workload:
    changes: dict[str, Any] = {"steps": max(10, work.steps // 3), "warmup": 3} if quick else {}
    changes.update({k: v for k, v in (("steps", steps), ("batch", batch)) if v})
    if warmup >= 0:
        changes["warmup"] = warmup
    return dataclasses.replace(work, **changes)


def race(work: Workload, device: torch.device, contenders: list[str], repeats: int,
         errors: dict[str, str]) -> tuple[dict[str, list[float | None]], dict[str, str]]:
    """Every contender's examples/s in each of ``repeats`` rounds, contender order rotated
    (None in a round it did not run), and a note for each contender that was skipped or
    failed (its message goes to ``errors``)."""
    data = work.data(device)
    rates: dict[str, list[float | None]] = {name: [] for name in contenders}
    notes: dict[str, str] = {}
    for round_index in range(repeats):
        order = contenders[round_index % len(contenders):] + contenders[:round_index % len(contenders)]
        for name in order:
            rate = None
            rates[name].append(None)
            if name in notes:
                continue
            try:
                rate = work.batch * work.steps / RUNNERS[name](work, device, data)
                rates[name][-1] = rate
            except Skipped as skipped:
                notes[name] = str(skipped)
            except Exception as error:  # one broken contender must not lose the others
                notes[name] = f"failed: {type(error).__name__}"
                errors[f"{work.name} · {name}"] = (str(error).splitlines() or [""])[0][:300]
            finally:
                _release(device)
            print(f"  {work.name:6s} {name:28s} round {round_index + 1}: "
                  f"{math.nan if rate is None else rate:,.1f} examples/s {notes.get(name, '')}", flush=True)
    return rates, notes


def workload_rows(work: Workload, rates: dict[str, list[float | None]], notes: dict[str, str],
                  peak: float) -> list[dict[str, Any]]:
    """One row per contender: the median examples/s over the rounds it ran."""
    parameters = count_parameters(work.build())
    rows = []
    for name, per_round in rates.items():
        ran = [rate for rate in per_round if rate is not None]
        rate = statistics.median(ran) if ran else math.nan
        row: dict[str, Any] = {"model": work.name, "contender": name, "examples/s": rate,
                               "tokens/s": rate * work.tokens_per_example if work.gpt else None,
                               "vs fastest peer": None, "vs pytorch eager": None}
        if work.gpt is not None and peak:
            row["MFU"] = flops_per_token(work.gpt) * row["tokens/s"] / (peak * 1e12)
        row.update({"params (M)": round(parameters / 1e6, 2), "note": notes.get(name, "")})
        rows.append(row)
    return rows


def paired_ratios(rates: dict[str, list[float | None]]) -> dict[str, dict[str, Any]]:
    """For each of :data:`PAIRS` that both ran: hpmodel's rate over its plain loop's in the
    same round, per round (None where either missed it), with min, median and max."""
    paired = {}
    for mine, plain in PAIRS:
        if mine not in rates or plain not in rates:
            continue
        per_round = [round(a / b, 4) if a is not None and b else None
                     for a, b in zip(rates[mine], rates[plain])]
        known = [ratio for ratio in per_round if ratio is not None]
        paired[f"{mine} / {plain}"] = {
            "per_round": per_round, "min": min(known, default=None),
            "median": statistics.median(known) if known else None, "max": max(known, default=None)}
    return paired


def print_paired(paired: dict[str, dict[str, dict[str, Any]]]) -> None:
    """The paired ratios, one line per model and pair, under the table."""
    for model, pairs in paired.items():
        for name, ratio in pairs.items():
            rounds = " ".join("–" if r is None else f"{r:.3f}" for r in ratio["per_round"])
            summary = ("no round with both" if ratio["median"] is None else
                       f"min {ratio['min']:.3f}, median {ratio['median']:.3f}, max {ratio['max']:.3f}")
            print(f"{model} · {name}, paired by round: {rounds} → {summary}")


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """``vs fastest peer``: rate over the fastest non-hpmodel contender's on the same model;
    ``vs pytorch eager``: over the plain eager loop's."""
    for model in {row["model"] for row in rows}:
        mine = [row for row in rows if row["model"] == model]
        peers = [row["examples/s"] for row in mine if row["contender"] in PEERS
                 and math.isfinite(row["examples/s"])]
        fastest = max(peers, default=math.nan)
        eager = next((row["examples/s"] for row in mine if row["contender"] == "pytorch eager"), math.nan)
        for row in mine:
            row["vs fastest peer"] = round(row["examples/s"] / fastest, 3)
            row["vs pytorch eager"] = round(row["examples/s"] / eager, 3)
            row["examples/s"] = round(row["examples/s"], 1)
            if row["tokens/s"] is not None:
                row["tokens/s"] = round(row["tokens/s"], 0)
            if "MFU" in row:
                row["MFU"] = round(row["MFU"], 4)


def plot(ax, rows: list[dict[str, Any]]) -> None:
    """Bars of each contender's rate over plain PyTorch eager, grouped by model."""
    models = list(dict.fromkeys(row["model"] for row in rows))
    names = list(dict.fromkeys(row["contender"] for row in rows))
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        values = [next((r["vs pytorch eager"] for r in rows if r["model"] == m and r["contender"] == name),
                       math.nan) for m in models]
        ax.bar([j + i * width for j in range(len(models))], [0 if math.isnan(v) else v for v in values],
               width, label=name)
    ax.axhline(1.0, color="k", linestyle="--", linewidth=1)
    ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(models))], models)
    ax.set_ylabel("examples/s over plain PyTorch eager")
    ax.legend(fontsize=7)
