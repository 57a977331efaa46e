"""``hpmodel distill`` for a GPT (``train.task = "causal-lm"``): a student of fewer blocks
initialised from the teacher's (DistilBERT), trained with soft targets, the LM loss and
hidden-state matching — online from the teachers, or offline from their top-k shards —
against the same student trained from scratch for the same steps, for every seed.

The heavy lifting is :mod:`hpmodel.compress.lm_distill` (losses), :mod:`.student`
(initialisation), :mod:`.topk` (offline targets) and the Trainer; this module decides what
to train, evaluates it and writes the run directory.

Example::

    cfg, dcfg = load_distill_config("examples/gpt_student.toml")
    summary = distill_from_config(cfg, dcfg, ["runs/gpt-teacher"], "runs/gpt-student")
    summary["test_bits_per_byte"], summary["mean"]["distilled_bits_per_byte"]
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from hpmodel.compress.distill import freeze
from hpmodel.compress.lm_distill import LMDistiller
from hpmodel.compress.lm_noisy import add_lm_noise
from hpmodel.compress.student import check_layers, every_other, student_from_teacher
from hpmodel.compress.topk import TopKSplit, write_topk
from hpmodel.config import RunConfig
from hpmodel.datasets import load_splits
from hpmodel.kernel.errors import ConfigError
from hpmodel.kernel.files import atomic_write_bytes, save_weights
from hpmodel.kernel.schema import to_toml
from hpmodel.models import count_parameters
from hpmodel.models.gpt import GPT
from hpmodel.reporting.distill import (lm_seed_record, summarize_seeds, tokens_per_second,
                                      write_lm_report)
from hpmodel.runs.common import ModelFactory, build_strategy, build_trainer
from hpmodel.strategies import get_strategy
from hpmodel.train.backup import BackupAndRestore, config_fingerprint
from hpmodel.train.callbacks import MetricsLogger
from hpmodel.train.optim import optimizer_factory
from hpmodel.train.trainer import Trainer


def student_run_config(cfg: RunConfig, dcfg, teacher: GPT) -> tuple[RunConfig, list[int]]:
    """The student's RunConfig (its ``[model]`` as saved beside its weights) and the teacher
    blocks it starts from: ``distill.student_layers``, else ``model.depth`` blocks spread
    evenly (every other one when ``model.depth`` is half the teacher's)."""
    depth = teacher.config.depth
    layers = (check_layers(dcfg.student_layers, depth) if dcfg.student_layers
              else every_other(depth, min(cfg.model.depth, depth) or None))
    if dcfg.student_init != "teacher":
        return cfg, layers
    t = teacher.config
    options = {**cfg.model.options, "seq_len": t.seq_len, "vocab_size": t.vocab_size,
               "tie_embeddings": t.tie_embeddings, "bias": t.bias}
    model = dataclasses.replace(cfg.model, width=t.width, heads=t.heads, depth=len(layers),
                                options=options)
    return dataclasses.replace(cfg, model=model), layers


class DistillerFactory:
    """A picklable ``() -> LMDistiller``: the student (from the teacher's blocks or random)
    wrapped with its losses; ``teachers`` empty when the targets come from top-k shards;
    ``noisy``: the student trains with token noise and stochastic depth (noisy student)."""

    def __init__(self, dcfg, student_factory, teachers, layers, online: bool, noisy: bool = False):
        self.dcfg, self.student_factory, self.layers = dcfg, student_factory, layers
        self.teachers, self.online, self.noisy = list(teachers), online, noisy

    def __call__(self) -> LMDistiller:
        d = self.dcfg
        if d.student_init == "teacher":
            student = student_from_teacher(self.teachers[0], self.layers)
        else:
            student = self.student_factory()
        if self.noisy:
            student = add_lm_noise(student, d.token_noise, d.stochastic_depth)
        hard = 1 - d.alpha if d.hard_weight < 0 else d.hard_weight
        return LMDistiller(student, self.teachers if self.online else [],
                           temperature=d.temperature, soft=d.alpha, hard=hard,
                           hidden=d.hidden_weight if self.online else 0.0,
                           hidden_loss=d.hidden_loss, teacher_weights=d.teacher_weights or None,
                           topk_rest=d.topk_rest)


def run_device(strategy) -> torch.device:
    """Where this run's models compute: the strategy's device (a GPU run's teachers write
    their top-k and are timed there; for several processes, the first process's), else the CPU."""
    try:
        return torch.device(strategy.device)
    except (AttributeError, RuntimeError):
        return torch.device("cpu")


def evaluate_lm(model: torch.nn.Module, test) -> dict[str, float]:
    """Loss, perplexity, bits per byte and token accuracy of ``model`` on ``test``, on one
    device (a GPU when there is one)."""
    trainer = Trainer(strategy=get_strategy("one-device"), batch_size=64, progress=False,
                      task="causal-lm", precision="fp32")
    module, _ = trainer.strategy.setup(model, None)
    return trainer.evaluate_model(module, test)


def variants(dcfg) -> list[tuple[str, bool]]:
    """``(name, online)`` of each distilled student to train: top-k first when asked for
    (mode ``average``; the other modes train online students, see :func:`train_students`)."""
    names = []
    if dcfg.topk:
        names.append((f"top-{dcfg.topk}", False))
    if not dcfg.topk or dcfg.compare_full:
        names.append(("full logits", True))
    return names


def callbacks_for(cfg: RunConfig, dcfg, out_dir: Path, seed: int, name: str, log: bool) -> list:
    """The metrics log (first seed's first student) and, with ``backup.dir``, a backup per
    seed and student, so a killed run resumes where it stopped. A noisy student's round
    keeps its backup until the run ends (:func:`remove_round_backups`): a run killed in
    round 2 resumes round 1 at its end instead of retraining it (bit-exact on the CPU only)."""
    callbacks: list = [MetricsLogger(out_dir)] if log else []
    if cfg.backup.dir:
        fingerprint = {**config_fingerprint(cfg),
                       **{f"distill.{k}": str(v) for k, v in dataclasses.asdict(dcfg).items()}}
        folder = Path(cfg.backup.dir) / f"seed-{seed}-{name.replace(' ', '-')}"
        callbacks.append(BackupAndRestore(folder, every_steps=cfg.backup.every_steps,
                                          every_epoch=cfg.backup.every_epoch,
                                          fresh_if_corrupt=cfg.backup.fresh_if_corrupt,
                                          fingerprint=fingerprint,
                                          keep=name.startswith("noisy round")))
    return callbacks


def remove_round_backups(cfg: RunConfig, dcfg) -> None:
    """At the end of a noisy-student run: the rounds' backups, kept until now, go."""
    if cfg.backup.dir and dcfg.mode == "noisy-student":
        for folder in Path(cfg.backup.dir).glob("seed-*-noisy-round-*"):
            shutil.rmtree(folder, ignore_errors=True)


def distill_lm(cfg: RunConfig, dcfg, loaded, teacher_dirs, out_dir: Path,
               started: float) -> dict[str, Any]:
    """The GPT distillation run (see the module docstring); returns summary.json's content."""
    check_lm_modes(dcfg)
    teachers = [model for model, _ in loaded]
    if not all(isinstance(t, GPT) for t in teachers):
        raise ConfigError("train.task = 'causal-lm' distills GPT teachers: give --teacher runs "
                          "of model.name = 'gpt'")
    splits = load_splits(cfg.data, cfg.seed)
    student_cfg, layers = student_run_config(cfg, dcfg, teachers[0])
    random_student = ModelFactory(student_cfg, splits.input_shape, splits.num_classes)
    strategy, optimizer = build_strategy(cfg), optimizer_factory(cfg.optimizer)
    device, bf16 = run_device(strategy), cfg.train.precision == "bf16"
    topk = None
    if dcfg.topk:
        topk_dir = Path(dcfg.topk_dir) if dcfg.topk_dir else out_dir / "teacher-topk"
        topk = write_topk(teachers, splits.train, topk_dir, k=dcfg.topk,
                          temperature=dcfg.temperature, weights=dcfg.teacher_weights or None,
                          value_dtype=dcfg.topk_values, index_dtype=dcfg.topk_indices,
                          describe={"teachers": [str(d) for d in teacher_dirs]},
                          device=device, bf16=bf16, batch_size=max(cfg.data.batch_size, 64))
        topk["dir"] = str(topk_dir)
    teacher_scores = evaluate_lm(teachers[0], splits.test)
    records, saved = [], {}
    for seed in [int(s) for s in dcfg.seeds] or [cfg.seed]:
        run_cfg = dataclasses.replace(cfg, seed=seed)
        trained = train_students(cfg, dcfg, run_cfg, strategy, optimizer, random_student, teachers,
                                 layers, splits, topk, out_dir, log=not records)
        scores = {name: (test, summary) for name, (test, summary, _) in trained.items()}
        for name, (_, _, student) in trained.items():
            saved.setdefault(name, student)
        scratch = None
        if dcfg.baseline:
            result = build_trainer(run_cfg, strategy, callbacks_for(
                cfg, dcfg, out_dir, seed, "scratch", log=False)).fit(
                random_student, optimizer, splits.train, epochs=cfg.train.epochs)
            scratch = (evaluate_lm(result.model, splits.test), result.summary)
            saved.setdefault("scratch", result.model)
        records.append(lm_seed_record(seed, teacher_scores, scores, scratch))
    primary = primary_student(dcfg, list(records[0]["distilled"]))
    files = save_lm_students(out_dir, student_cfg, saved, primary)
    speed = {name: tokens_per_second(model, cfg.data.batch_size, device=device, bf16=bf16)
             for name, model in (("teacher", teachers[0]), ("student", saved[primary]))}
    speed["device"] = str(device)
    summary = lm_summary(cfg, dcfg, records, teachers, saved, speed, topk, layers, files,
                         teacher_dirs, started, primary)
    write_lm_report(out_dir, summary, title=f"hpmodel distill → {out_dir}")
    remove_round_backups(cfg, dcfg)
    return summary


def train_students(cfg, dcfg, run_cfg, strategy, optimizer, random_student, teachers, layers,
                   splits, topk, out_dir: Path, log: bool) -> dict[str, tuple]:
    """``name → (test metrics, fit summary, clean student)`` of every distilled student of one
    seed, by ``distill.mode``: ``average`` (top-k and/or full logits of the teachers'
    average), ``many-on-many`` (one student per teacher) or ``noisy-student`` (``rounds``
    noised students, each the next one's teacher)."""

    logged = dcfg.rounds - 1 if dcfg.mode == "noisy-student" else 0  # the saved student's

    def fit(name: str, factory: DistillerFactory, data, index: int) -> tuple:
        trainer = build_trainer(run_cfg, strategy, callbacks_for(
            cfg, dcfg, out_dir, run_cfg.seed, name, log=log and index == logged))
        result = trainer.fit(factory, optimizer, data, epochs=cfg.train.epochs)
        student = result.model.student
        if factory.noisy:  # the same weights without the noise hooks
            student = random_student()
            student.load_state_dict(result.model.student.state_dict())
        return evaluate_lm(student, splits.test), result.summary, student

    trained: dict[str, tuple] = {}
    if dcfg.mode == "noisy-student":
        current = teachers
        for index in range(dcfg.rounds):
            name = f"noisy round {index + 1}"
            trained[name] = fit(name, DistillerFactory(dcfg, random_student, current, layers,
                                                       online=True, noisy=True), splits.train, index)
            current = [freeze(trained[name][2])]
    elif dcfg.mode == "many-on-many":
        for index, teacher in enumerate(teachers):
            name = f"from teacher {index + 1}"
            trained[name] = fit(name, DistillerFactory(dcfg, random_student, [teacher], layers,
                                                       online=True), splits.train, index)
    else:
        for index, (name, online) in enumerate(variants(dcfg)):
            data = splits.train if online else TopKSplit(splits.train, topk["dir"])
            trained[name] = fit(name, DistillerFactory(dcfg, random_student, teachers, layers,
                                                       online), data, index)
    return trained


def primary_student(dcfg, names: list[str]) -> str:
    """The student saved as the run's model: the last noisy round, else the first student."""
    return names[-1] if dcfg.mode == "noisy-student" else names[0]


def check_lm_modes(dcfg) -> None:
    """One line for the combinations a GPT distillation does not run."""
    if dcfg.mode != "average" and dcfg.topk:
        raise ConfigError(f"distill.topk works with distill.mode = 'average', not '{dcfg.mode}': "
                          "set distill.topk = 0 (full logits)")
    if dcfg.mode == "noisy-student" and dcfg.student_init != "random":
        raise ConfigError("distill.mode = 'noisy-student' trains each round's student from "
                          "scratch (as large as the teacher or larger): set "
                          "distill.student_init = 'random'")


def save_lm_students(out_dir: Path, student_cfg: RunConfig, saved: dict, primary: str) -> dict:
    """The first seed's students: the primary one as the run's model, the others in folders."""
    files = {}
    for name, model in saved.items():
        folder = out_dir if name == primary else out_dir / name.replace(" ", "-")
        atomic_write_bytes(folder / "config.toml", to_toml(student_cfg.to_dict()).encode())
        save_weights(folder / "model.safetensors", model.state_dict(),
                     metadata={"model": student_cfg.model.name, "hpmodel": "1"})
        files[name] = str(folder / "model.safetensors")
    return files


def parameter_bytes(model: torch.nn.Module) -> int:
    """Bytes of a model's parameters (tied ones once): what a teacher costs in memory."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def lm_summary(cfg, dcfg, records, teachers, saved, speed, topk, layers, files, teacher_dirs,
               started, primary: str) -> dict[str, Any]:
    """summary.json: the first seed's figures at the top (they are the saved model's), every
    seed in ``seeds``, mean and std over seeds, sizes, speeds and the top-k memory."""
    first = records[0]
    model = saved[primary]
    summary = {"task": "causal-lm", "steps": first["distilled"][primary]["steps"],
               "test_bits_per_byte": first["distilled"][primary]["bits_per_byte"],
               "test_perplexity": first["distilled"][primary]["perplexity"],
               "test_loss": first["distilled"][primary]["loss"],
               "test_accuracy": first["distilled"][primary]["accuracy"],
               "test_metrics_of": f"seed {first['seed']}'s {primary} student (model.safetensors)",
               "examples_per_second": first["distilled"][primary]["examples_per_second"],
               "wall_seconds": first["distilled"][primary]["wall_seconds"],
               "teacher_test_bits_per_byte": first["teacher"]["bits_per_byte"],
               "primary": primary, "student_layers": layers, "seeds": records,
               **summarize_seeds(records),
               "parameters": {"teacher": count_parameters(teachers[0]),
                              "student": count_parameters(model)},
               "inference_tokens_per_second": speed,
               "speedup": speed["student"] / max(speed["teacher"], 1e-9),
               "teacher_parameter_bytes": parameter_bytes(teachers[0]), "files": files,
               "teachers": [str(d) for d in teacher_dirs],
               "distill": dataclasses.asdict(dcfg), "strategy": build_strategy(cfg).describe()}
    if topk:
        summary["topk"] = {k: topk[k] for k in ("k", "value_dtype", "index_dtype", "bytes",
                                                 "records", "dir")}
        summary["topk"]["bytes_per_teacher_byte"] = topk["bytes"] / summary["teacher_parameter_bytes"]
    summary["total_seconds"] = time.perf_counter() - started
    return summary


__all__ = ["DistillerFactory", "distill_lm", "evaluate_lm", "student_run_config", "train_students"]
