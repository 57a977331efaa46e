"""``hpmodel demo``: the whole journey on embedded data, in one command.

1. train a teacher with the Mirrored strategy (2 CPU processes, or every GPU) and backups;
2. kill one worker on purpose mid-epoch: the elastic launcher restarts the group and
   training resumes from the newest backup;
3. distill a small student from the teacher, and train it from scratch for comparison;
4. prune and quantize the student (the ``compress`` variants);
5. write ``report.html`` (self-contained) and ``report.md`` from the runs' summary files.

Each stage calls the same public API as its command; the report lists those commands.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from hpmodel.config import load_config
from hpmodel.reporting.console import print_summary
from hpmodel.runs.distill import distill_from_config, load_distill_config
from hpmodel.runs.compress import compress_run
from hpmodel.compress.variants import CompressOptions
from hpmodel.reporting.demo import write_demo_report
from hpmodel.runs.train import train_from_config

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"  # src/hpmodel/examples
QUICK_COMPRESS_MODES = ["dynamic-int8", "static-int8", "qat", "prune"]  # qat: torchao is imported
COMPRESS_MODES = ["dynamic-int8", "static-int8", "float16", "qat", "prune", "prune-int8", "structured"]


def teacher_devices() -> tuple[int, list[str]]:
    """Every GPU when there are two or more; otherwise two CPU processes on Gloo."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus >= 2:
        return gpus, []
    return 2, ['strategy.device="cpu"']


def teacher_overrides(out: Path, quick: bool) -> tuple[list[str], int, int]:
    """The teacher's config overrides, its process count and the step at which rank 1 dies."""
    devices, extra = teacher_devices()
    kill_step = 12 if quick else 30  # mid-epoch: an epoch has ⌈1164 / (32·devices)⌉ steps
    overrides = ['strategy.name="mirrored"', f"strategy.devices={devices}", "strategy.max_restarts=1",
                 f'backup.dir="{out / "teacher" / "backup"}"', "backup.every_steps=5",
                 f"train.inject_kill=[1, {kill_step}]", "train.progress=false", *extra]
    if quick:
        overrides.append("train.epochs=3")
    return overrides, devices, kill_step


def stage(number: int, text: str) -> float:
    print(f"\n[{number}/5] {text}", flush=True)
    return time.perf_counter()


def run_demo(out: Path, quick: bool = False) -> dict[str, Any]:
    """Run the five stages into ``out``; returns what the report was built from."""

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    overrides, devices, kill_step = teacher_overrides(out, quick)
    start = stage(1, f"train the teacher (cnn) on digits with strategy 'mirrored' on {devices} "
                     "processes, backups every 5 steps")
    print(f"[2/5] ...and kill worker rank 1 on purpose after step {kill_step}: the job restarts "
          "itself and resumes from its newest backup", flush=True)
    teacher_cfg = load_config(EXAMPLES / "digits.toml", overrides)
    teacher = train_from_config(teacher_cfg, out / "teacher")
    timings["teacher"] = time.perf_counter() - start
    print(f"      teacher: test accuracy {teacher['test_accuracy']:.4f}; restarts "
          f"{teacher.get('restarts', 0)}, resumed at step {teacher.get('resumed_at_step')}", flush=True)

    start = stage(3, "distill a small mlp student from the teacher, and train it from scratch")
    student_overrides = ["train.progress=false"] + (["distill.seeds=[0]", "train.max_steps=120"] if quick else [])
    student_cfg, distill_cfg = load_distill_config(EXAMPLES / "student.toml", student_overrides)
    student = distill_from_config(student_cfg, distill_cfg, [out / "teacher"], out / "student")
    timings["distill"] = time.perf_counter() - start
    print(f"      student: distilled {student['test_accuracy']:.4f} vs scratch "
          f"{student.get('scratch_test_accuracy', float('nan')):.4f}", flush=True)

    start = stage(4, "prune and quantize the student (ONNX Runtime int8, pruning, ...)")
    modes = QUICK_COMPRESS_MODES if quick else COMPRESS_MODES
    compressed = compress_run(out / "student", out / "compressed", CompressOptions(modes=modes),
                              repeats=5 if quick else 20)
    timings["compress"] = time.perf_counter() - start

    stage(5, "write the report")
    page = write_demo_report(out, timings, kill_step)
    print_summary({"teacher_test_accuracy": teacher["test_accuracy"],
                   "student_test_accuracy": student["test_accuracy"],
                   "scratch_test_accuracy": student.get("scratch_test_accuracy", float("nan")),
                   "resumed_at_step": teacher.get("resumed_at_step", -1),
                   "report": str(page)}, title="hpmodel demo")
    return {"teacher": teacher, "student": student, "compressed": compressed, "report": page}
