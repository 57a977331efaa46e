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
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from hpmodel.models import count_parameters
from hpmodel.kernel.files import atomic_write_bytes, write_json
from hpmodel.kernel.timing import timed


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
    return 1e3 * timed(lambda: model(x), repeats, warmup=3)


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
    if isinstance(summary.get("seeds"), list) and summary["seeds"]:
        text += "\n" + seed_table(summary)
    atomic_write_bytes(out_dir / "report.md", text.encode())


def seed_table(summary: dict[str, Any]) -> str:
    """Per-seed accuracies of a classifier's distillation, and which one was saved."""
    lines = ["| seed | scratch | distilled | gap recovered |", "|---:|---:|---:|---:|"]
    for r in summary["seeds"]:
        scratch = f"{r['scratch_test_accuracy']:.4f}" if r["scratch_test_accuracy"] is not None else "—"
        gap = f"{r['gap_recovered']:.2f}" if r["gap_recovered"] is not None else "—"
        lines.append(f"| {r['seed']} | {scratch} | {r['distilled_test_accuracy']:.4f} | {gap} |")
    return ("\n".join(lines) + f"\n\n`test_accuracy` = {summary['test_accuracy']:.4f} in summary.json "
            f"is {summary.get('test_metrics_of', 'the saved model')}, not the mean.\n")





# -- language models: bits per byte, per seed ------------------------------------------------
LM_METRICS = ("bits_per_byte", "perplexity", "loss", "accuracy")
FIT_METRICS = ("steps", "tokens_per_second", "examples_per_second", "wall_seconds")


def _scores(test: dict[str, float], fit: dict[str, Any] | None = None) -> dict[str, Any]:
    out = {k: test[k] for k in LM_METRICS if k in test}
    out.update({k: fit[k] for k in FIT_METRICS if fit and k in fit})
    return out


def lm_seed_record(seed: int, teacher: dict, distilled: dict, scratch) -> dict[str, Any]:
    """One seed's figures: teacher, scratch and each distilled student (``name → (test
    metrics, fit summary)``), the gap recovered and the quality ratio (teacher bpb / student bpb).

    Example::

        lm_seed_record(0, teacher_test, {"top-32": (test, fit.summary)}, (test, fit.summary))
    """
    record: dict[str, Any] = {"seed": seed, "teacher": _scores(teacher),
                              "scratch": _scores(*scratch) if scratch else None,
                              "distilled": {n: _scores(*pair) for n, pair in distilled.items()},
                              "gap_recovered": {}, "quality_ratio": {}}
    for name, scores in record["distilled"].items():
        bpb = scores["bits_per_byte"]
        record["quality_ratio"][name] = teacher["bits_per_byte"] / bpb
        record["gap_recovered"][name] = (gap_recovered(-teacher["bits_per_byte"],
                                                       -record["scratch"]["bits_per_byte"], -bpb)
                                         if scratch else None)
    return record


def flat_record(record: dict[str, Any]) -> dict[str, float]:
    """A seed's record as ``name_metric → value`` (what mean and std are taken over)."""
    flat = {f"teacher_{k}": v for k, v in record["teacher"].items()}
    flat.update({f"scratch_{k}": v for k, v in (record["scratch"] or {}).items()})
    for name, scores in record["distilled"].items():
        flat.update({f"{name}_{k}": v for k, v in scores.items()})
        flat[f"{name}_quality_ratio"] = record["quality_ratio"][name]
        flat[f"{name}_gap_recovered"] = record["gap_recovered"][name]
    return {k: v for k, v in flat.items() if isinstance(v, (int, float))}


def summarize_seeds(records: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """``{"mean": ..., "std": ...}`` of every figure over the seeds (std 0 for one seed).

    Example::

        summarize_seeds(records)["mean"]["top-32_bits_per_byte"]
    """
    flats = [flat_record(r) for r in records]
    keys = [k for k in flats[0] if all(k in f for f in flats)]
    return mean_and_std({k: [float(f[k]) for f in flats] for k in keys})


def mean_and_std(values: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """``{"mean": …, "std": …}`` of each key's values over seeds (std 0 for one seed)."""
    return {"mean": {k: statistics.mean(v) for k, v in values.items()},
            "std": {k: statistics.stdev(v) if len(v) > 1 else 0.0 for k, v in values.items()}}


@torch.inference_mode()
def tokens_per_second(model: nn.Module, batch: int = 32, repeats: int = 10,
                      device: str | torch.device = "cpu", bf16: bool = False) -> float:
    """Inference tokens per second of a GPT on ``device`` (the CPU by default; bf16 autocast
    on a GPU when ``bf16``): (batch, seq_len) random tokens, the median of ``repeats`` timed
    forwards after 2 warm-up calls."""
    device = torch.device(device)
    model = model.to(device).eval()
    ids = torch.randint(0, model.config.vocab_size, (batch, model.config.seq_len), device=device)

    def forward():
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16,
                                             enabled=bf16 and device.type == "cuda"):
            model(ids)
    return ids.numel() / timed(forward, repeats, warmup=2)


def _cell(summary: dict, key: str, digits: int = 4) -> str:
    mean, std = summary["mean"].get(key), summary["std"].get(key)
    if mean is None:
        return "—"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if len(summary["seeds"]) > 1 else f"{mean:.{digits}f}"


def lm_markdown(summary: dict[str, Any]) -> str:
    """The mean ± std table over seeds, then one row per seed and student."""
    names = list(summary["seeds"][0]["distilled"])
    lines = ["| model | bits per byte | perplexity | teacher bpb / bpb | gap recovered "
             "| train tokens/s |", "|---|---:|---:|---:|---:|---:|",
             f"| teacher | {_cell(summary, 'teacher_bits_per_byte')} | "
             f"{_cell(summary, 'teacher_perplexity', 3)} | 1 | — | — |"]
    if summary["seeds"][0]["scratch"]:
        lines.append(f"| student from scratch | {_cell(summary, 'scratch_bits_per_byte')} | "
                     f"{_cell(summary, 'scratch_perplexity', 3)} | — | 0 | "
                     f"{_cell(summary, 'scratch_tokens_per_second', 0)} |")
    for n in names:
        lines.append(f"| distilled ({n}) | {_cell(summary, f'{n}_bits_per_byte')} | "
                     f"{_cell(summary, f'{n}_perplexity', 3)} | "
                     f"{_cell(summary, f'{n}_quality_ratio', 3)} | "
                     f"{_cell(summary, f'{n}_gap_recovered', 3)} | "
                     f"{_cell(summary, f'{n}_tokens_per_second', 0)} |")
    lines += ["", "| seed | teacher bpb | scratch bpb | " + " | ".join(f"{n} bpb" for n in names)
              + " |", "|---:|---:|---:|" + "---:|" * len(names)]
    for r in summary["seeds"]:
        scratch = f"{r['scratch']['bits_per_byte']:.4f}" if r["scratch"] else "—"
        lines.append(f"| {r['seed']} | {r['teacher']['bits_per_byte']:.4f} | {scratch} | "
                     + " | ".join(f"{r['distilled'][n]['bits_per_byte']:.4f}" for n in names) + " |")
    return "\n".join(lines)


def write_lm_report(out_dir: str | Path, summary: dict[str, Any],
                    title: str = "Distillation report") -> None:
    """Write ``summary.json`` and ``report.md`` of a language-model distillation."""
    out_dir = Path(out_dir)
    write_json(out_dir / "summary.json", summary)
    params = summary["parameters"]
    text = (f"# {title}\n\n{lm_markdown(summary)}\n\nParameters: teacher {params['teacher']:,}, "
            f"student {params['student']:,} (blocks {summary['student_layers']} of the teacher). "
            f"Inference on {summary['inference_tokens_per_second'].get('device', 'cpu')}: "
            f"student {summary['speedup']:.2f}× the teacher's tokens/s. "
            f"`test_bits_per_byte` = {summary['test_bits_per_byte']:.4f} is "
            f"{summary['test_metrics_of']}, not the mean.\n")
    if "topk" in summary:
        topk = summary["topk"]
        text += (f"\nTop-{topk['k']} teacher outputs ({topk['value_dtype']} values, "
                 f"{topk['index_dtype']} indices): {topk['bytes'] / 2**20:.1f} MiB of shards for "
                 f"{topk['records']:,} examples, against {summary['teacher_parameter_bytes'] / 2**20:.1f}"
                 f" MiB of teacher parameters kept out of training memory.\n")
    atomic_write_bytes(out_dir / "report.md", text.encode())


__all__ = ["accuracy", "flat_record", "gap_recovered", "latency_ms", "lm_markdown", "lm_seed_record",
           "markdown_table", "mean_and_std", "measure", "summarize_seeds", "tokens_per_second", "write_lm_report",
           "write_report"]
