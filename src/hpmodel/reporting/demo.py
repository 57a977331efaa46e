"""The demo's report: every number comes from the summary.json files the stages wrote.

Sections: the headline results, the teacher's training curves and input-pipeline wait,
the resume event, teacher vs student vs compressed variants, and the commands that
reproduce each stage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hpmodel.reporting import Report, plot_training_curves
from hpmodel.kernel.files import write_json
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the Agg backend

TEACHER_KEYS = ("test_accuracy", "test_loss", "steps", "epochs", "examples_per_second",
                "parameters", "strategy", "restarts", "resumed_at_step")
STUDENT_KEYS = ("model", "test_accuracy", "test_accuracy_std", "test_errors", "parameters",
                "file_bytes", "latency_ms_batch1", "latency_ms_batch64")
VARIANT_KEYS = ("mode", "test_accuracy", "parameters", "bytes", "gzip_bytes", "x_smaller_gzip",
                "ort_cpu_ms_b1", "ort_cpu_ms_b64", "torch_cpu_ms_b64", "torch_gpu_ms_b64")


def load_summaries(out: Path) -> dict[str, Any]:
    """The three stages' summary.json files (the report's only source of numbers)."""
    return {name: json.loads((out / name / "summary.json").read_text())
            for name in ("teacher", "student", "compressed")}


def plot_wait_fraction(history: list[dict], path: Path) -> Path | None:
    """Per-epoch fraction of the training loop spent waiting for input."""
    points = [(row["epoch"], row["input_wait_fraction"]) for row in history if "input_wait_fraction" in row]
    if not points:
        return None
    figure, axes = plt.subplots(figsize=(6, 3))
    axes.bar([p[0] for p in points], [100 * p[1] for p in points], color="#7cb342")
    axes.set_xlabel("epoch")
    axes.set_xticks([p[0] for p in points])
    axes.set_ylabel("% of step time waiting for data")
    axes.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_demo_report(out: Path, timings: dict[str, float], kill_step: int) -> Path:
    """Write ``out/report.md`` and ``out/report.html``; returns the HTML path."""
    write_json(out / "summary.json", {"stage_seconds": timings, "kill_after_step": kill_step})
    summaries = load_summaries(out)
    teacher, student, compressed = summaries["teacher"], summaries["student"], summaries["compressed"]
    report = Report("hpmodel demo: train, survive a failure, distill, compress")
    report.headline(f"teacher test accuracy {teacher['test_accuracy']:.4f} with {teacher['strategy']}; "
                    f"distilled student {student['test_accuracy']:.4f} vs "
                    f"{student.get('scratch_test_accuracy', float('nan')):.4f} from scratch")
    report.heading("1. Teacher, trained with the Mirrored strategy")
    report.table([{"metric": k, "value": teacher[k]} for k in TEACHER_KEYS if k in teacher])
    report.image(plot_training_curves(out / "teacher" / "metrics.jsonl", out / "teacher_curves.png"),
                 "teacher: loss and accuracy per step (train) and per epoch (validation)")
    report.image(plot_wait_fraction(teacher.get("history", []), out / "input_wait.png"),
                 "input pipeline: share of each epoch the training loop waited for its next batch")
    report.heading("2. A worker killed on purpose, and the resume")
    if teacher.get("restarts"):
        report.headline(f"rank 1 was SIGKILLed after step {kill_step}; the elastic launcher restarted "
                        f"the group ({teacher['restarts']} restart) and every worker resumed from "
                        f"backup {Path(teacher.get('resumed_from', '?')).name} at step "
                        f"{teacher.get('resumed_at_step')}")
    else:
        report.text("No restart happened: the injected failure did not fire.")
    report.heading("3. Distillation: teacher, student from scratch, distilled student")
    report.table([{k: row.get(k) for k in STUDENT_KEYS} for row in student.get("report", [])])
    if student.get("gap_recovered") is not None:
        report.headline(f"the distilled student recovered {100 * student['gap_recovered']:.0f}% of the "
                        "teacher − scratch gap")
    report.heading("4. The student, compressed")
    variants = [{k: row[k] for k in VARIANT_KEYS if k in row} for row in compressed.get("variants", [])]
    report.table(variants)
    report.image(out / "compressed" / "accuracy_vs_size.png", "accuracy against file size")
    report.image(out / "compressed" / "accuracy_vs_latency.png", "accuracy against CPU latency")
    report.heading("Reproduce each stage")
    report.code(reproduce_commands(out, teacher_config(out)))
    report.table([{"stage": name, "seconds": seconds} for name, seconds in timings.items()])
    _, page = report.write(out)
    return page


def teacher_config(out: Path) -> str:
    return str(out / "teacher" / "config.toml")


def reproduce_commands(out: Path, teacher_toml: str) -> str:
    return "\n".join([
        f"hpmodel train {teacher_toml} --out {out / 'teacher'}",
        f"hpmodel distill examples/student.toml --teacher {out / 'teacher'} --out {out / 'student'}",
        f"hpmodel compress {out / 'student'} --out {out / 'compressed'}",
        f"hpmodel evaluate {out / 'student'}",
    ])
