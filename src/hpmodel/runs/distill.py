"""Distill from a configuration: the code path behind ``hpmodel distill``, usable from Python.

The CONFIG is a training config for the *student* plus a ``[distill]`` table
(:class:`DistillConfig`). Teachers are run directories written by ``hpmodel train``; they
must share the student's data and seed, so that the test split is the one the teachers
never trained on. The run trains the student from scratch (the baseline) and distilled,
with the same budget and seeds, then writes the report (:mod:`distill_report`).

Example::

    cfg, dcfg = load_distill_config("student.toml", ["distill.temperature=2"])
    summary = distill_from_config(cfg, dcfg, ["runs/teacher"], "runs/distilled")
    summary["gap_recovered"]
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from hpmodel.compress.distill import Ensemble, distill, load_teacher, soft_targets
from hpmodel.reporting.distill import accuracy, gap_recovered, mean_and_std, measure, write_report
from hpmodel.compress.lm_distill import HIDDEN_LOSSES, TOPK_REST
from hpmodel.compress.noisy_student import Noise, noisy_student
from hpmodel.compress.topk import INDEX_DTYPES, VALUE_DTYPES
from hpmodel.config import RunConfig, config_from_dict
from hpmodel.kernel.schema import check_type, read_toml, to_toml
from hpmodel.datasets import load_splits
from hpmodel.kernel.errors import ConfigError, HpmodelError
from hpmodel.train.callbacks import MetricsLogger
from hpmodel.train.optim import optimizer_factory
from hpmodel.runs.common import ModelFactory, build_strategy, build_trainer
from hpmodel.runs.distill_lm import distill_lm
from hpmodel.kernel.files import atomic_write_bytes, save_weights
from hpmodel.kernel.locks import DirectoryLock, make_directory

MODES = ("average", "many-on-many", "noisy-student")


@dataclass
class DistillConfig:
    """The ``[distill]`` table. α weights the soft (teacher) term; see docs/distillation.md."""

    mode: str = "average"  # average | many-on-many | noisy-student
    temperature: float = 4.0
    alpha: float = 0.9
    teacher_weights: list = field(default_factory=list)  # empty: equal weights
    cache_teacher: bool = True  # soft targets computed once (True) or by the teachers per batch
    labeled_fraction: float = 1.0  # the rest of the train split is an unlabeled pool
    seeds: list = field(default_factory=list)  # empty: the config's seed only
    baseline: bool = True  # also train the student from scratch for the report
    rounds: int = 2  # noisy-student rounds
    pseudo_labels: str = "soft"  # soft | hard (noisy-student)
    confidence_threshold: float = 0.0  # noisy-student: keep pool examples at least this sure
    noise_shift: int = 1  # noisy-student input shift, pixels
    noise_std: float = 0.05  # noisy-student input Gaussian noise
    stochastic_depth: float = 0.1  # noisy-student, on residual blocks (GPT: every block)
    token_noise: float = 0.1  # noisy-student GPT: share of input tokens replaced at random
    latency_repeats: int = 20
    # Language models (train.task = "causal-lm"): docs/distillation.md, "GPT students".
    student_init: str = "teacher"  # teacher: copy embeddings, chosen blocks and head | random
    student_layers: list = field(default_factory=list)  # teacher blocks; empty: model.depth spread evenly
    hard_weight: float = -1.0  # weight of the LM (hard-label) loss; below 0: 1 - alpha
    hidden_weight: float = 0.0  # weight of hidden-state matching (online teachers only)
    hidden_loss: str = "cosine"  # cosine | mse
    topk: int = 0  # > 0: write the teachers' top-k log-probabilities first, train from them
    topk_values: str = "float16"  # float16 | float32
    topk_indices: str = "int16"  # int16 | int32
    topk_rest: str = "bucket"  # bucket: the mass outside the top-k as one category | drop
    topk_dir: str = ""  # where the top-k shards go; empty: OUT/teacher-topk
    compare_full: bool = True  # with topk > 0, also train a full-logit student for the report

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"distill.mode = '{self.mode}' is unknown: allowed values are "
                              f"{', '.join(MODES)}")
        if self.pseudo_labels not in ("soft", "hard"):
            raise ConfigError(f"distill.pseudo_labels = '{self.pseudo_labels}' is unknown: use soft or hard")
        if not 0 < self.labeled_fraction <= 1:
            raise ConfigError(f"distill.labeled_fraction = {self.labeled_fraction} must be in (0, 1]")
        for key, allowed in (("student_init", ("teacher", "random")), ("hidden_loss", HIDDEN_LOSSES),
                             ("topk_rest", TOPK_REST), ("topk_values", tuple(VALUE_DTYPES)),
                             ("topk_indices", tuple(INDEX_DTYPES))):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"distill.{key} = '{getattr(self, key)}' is unknown: allowed "
                                  f"values are {', '.join(allowed)}")
        if self.topk < 0 or self.hidden_weight < 0:
            raise ConfigError("distill.topk (0: full logits) and distill.hidden_weight must not "
                              "be negative")
        if self.temperature <= 0 or not 0 <= self.alpha <= 1:
            raise ConfigError("distill.temperature must be positive and distill.alpha in [0, 1]")


def distill_config_from_dict(raw: Any) -> DistillConfig:
    """Validate the raw ``[distill]`` table into a :class:`DistillConfig`."""
    if not isinstance(raw, dict):
        raise ConfigError("'distill' must be a table")
    kinds = {f.name: f.type for f in dataclasses.fields(DistillConfig)}
    for key in raw:
        if key not in kinds:
            raise ConfigError(f"unknown key 'distill.{key}': allowed keys are {', '.join(sorted(kinds))}")
    types = {"str": str, "float": float, "int": int, "bool": bool, "list": list}
    config = DistillConfig(**{k: check_type(f"distill.{k}", v, types[kinds[k]]) for k, v in raw.items()})
    config.validate()
    return config


def load_distill_config(path: str | Path, overrides: list[str] | None = None):
    """The student's RunConfig and the DistillConfig from one TOML file (+ ``key=value`` overrides)."""
    raw = read_toml(path, overrides)
    distill_raw = raw.pop("distill", {})
    return config_from_dict(raw), distill_config_from_dict(distill_raw)


# The [data] keys that decide which examples are in the test split (batching may differ).
SPLIT_KEYS = ("name", "path", "shards", "val_fraction", "test_fraction", "num_examples", "shape",
              "num_classes", "noise")


def check_teacher_data(cfg: RunConfig, teacher_cfg: RunConfig, run_dir) -> None:
    """The teachers' test split must be the student's, or the report would be meaningless."""
    differing = [key for key in SPLIT_KEYS
                 if getattr(teacher_cfg.data, key) != getattr(cfg.data, key)]
    if teacher_cfg.seed != cfg.seed:
        differing.insert(0, "seed")
    if differing:
        raise HpmodelError(f"teacher '{run_dir}' was trained on other data or another split "
                           f"({', '.join(differing)} differ from the config): set seed and [data] "
                           "as in its config.toml, and vary the training seed with distill.seeds")


def split_pool(train, fraction: float, seed: int):
    """(labeled, unlabeled x): the first ``fraction`` of a seeded permutation keeps its labels."""
    order = torch.randperm(len(train.y), generator=torch.Generator().manual_seed(seed + 7))
    n_labeled = max(1, int(round(len(order) * fraction)))
    labeled, pool = order[:n_labeled], order[n_labeled:]
    return (train.x[labeled], train.y[labeled]), train.x[pool]


def train_distilled(dcfg: DistillConfig, teachers, factory, trainer, optimizer, epochs, labeled,
                    pool_x, val):
    """One distilled student (or ensemble of students) for the configured mode."""
    x, y = labeled
    if dcfg.mode == "noisy-student":
        teacher = teachers[0] if len(teachers) == 1 else Ensemble(teachers, dcfg.teacher_weights)
        noise = Noise(dcfg.noise_shift, dcfg.noise_std, dcfg.stochastic_depth)
        rounds = noisy_student(teacher, factory, labeled, pool_x, rounds=dcfg.rounds, noise=noise,
                               temperature=dcfg.temperature, alpha=dcfg.alpha,
                               hard=dcfg.pseudo_labels == "hard",
                               threshold=dcfg.confidence_threshold, trainer=trainer,
                               optimizer=optimizer, epochs=epochs, val_data=val)
        return rounds[-1].model, rounds[-1], [r.pseudo_labeled for r in rounds]
    if len(pool_x):  # the unlabeled pool joins the transfer set under the teachers' top labels
        pseudo = soft_targets(teachers, pool_x, 1.0, dcfg.teacher_weights).argmax(-1)
        x, y = torch.cat([x, pool_x]), torch.cat([y, pseudo])
    groups = ([[t] for t in teachers] if dcfg.mode == "many-on-many" else [teachers])
    weights = None if dcfg.mode == "many-on-many" else dcfg.teacher_weights
    results = [distill(group, factory, (x, y), temperature=dcfg.temperature, alpha=dcfg.alpha,
                       weights=weights, cache_teacher=dcfg.cache_teacher, trainer=trainer,
                       optimizer=optimizer, epochs=epochs, val_data=val) for group in groups]
    model = results[0].model if len(results) == 1 else Ensemble([r.model for r in results])
    return model, results[0], None


def distill_from_config(cfg: RunConfig, dcfg: DistillConfig, teacher_dirs: list,
                        out_dir: str | Path, *, trust_model_target: bool = False) -> dict[str, Any]:
    """Distill as configured into ``out_dir``; returns ``summary.json``'s content.

    A teacher's ``model.target`` is imported only with ``trust_model_target``
    (``--trust-model-target``); the student's config is the caller's own. ``out_dir`` is
    locked while the run lasts.
    """
    if not teacher_dirs:
        raise HpmodelError("hpmodel distill needs at least one --teacher RUN_DIR")
    out_dir = make_directory(out_dir, "--out", "give a directory for the distilled run")
    with DirectoryLock(out_dir, "run directory (--out)", fix="give another --out"):
        return _distill(cfg, dcfg, teacher_dirs, out_dir, trust_model_target)


def _distill(cfg: RunConfig, dcfg: DistillConfig, teacher_dirs: list, out_dir: Path,
             trust_model_target: bool) -> dict[str, Any]:
    started = time.perf_counter()
    loaded = [load_teacher(d, trust_model_target) for d in teacher_dirs]
    for (_, teacher_cfg), run_dir in zip(loaded, teacher_dirs):
        check_teacher_data(cfg, teacher_cfg, run_dir)
    if cfg.train.task == "causal-lm":
        return distill_lm(cfg, dcfg, loaded, teacher_dirs, out_dir, started)
    if dcfg.mode == "noisy-student" and dcfg.labeled_fraction == 1:
        raise ConfigError("distill.mode = 'noisy-student' needs an unlabeled pool: set "
                          "distill.labeled_fraction below 1 (e.g. 0.5)")
    teachers = [model for model, _ in loaded]
    splits = load_splits(cfg.data, cfg.seed)
    labeled, pool_x = split_pool(splits.train, dcfg.labeled_fraction, cfg.seed)
    factory = ModelFactory(cfg, splits.input_shape, splits.num_classes)
    strategy, optimizer = build_strategy(cfg), optimizer_factory(cfg.optimizer)
    seeds = [int(s) for s in dcfg.seeds] or [cfg.seed]
    scratch_scores, distilled_scores, first = [], [], {}
    for seed in seeds:  # the first seed's students are the ones saved (and summarized)
        trainer = build_trainer(dataclasses.replace(cfg, seed=seed), strategy,
                                [MetricsLogger(out_dir)] if not first else [])
        model, result, pseudo = train_distilled(dcfg, teachers, factory, trainer, optimizer,
                                                cfg.train.epochs, labeled, pool_x, splits.val)
        distilled_scores.append(accuracy(model, splits.test))
        if dcfg.baseline:
            scratch = build_trainer(dataclasses.replace(cfg, seed=seed), strategy).fit(
                factory, optimizer, labeled, epochs=cfg.train.epochs, val_data=splits.val).model
            scratch_scores.append(accuracy(scratch, splits.test))
        if not first:
            first = {"model": model, "result": result, "pseudo": pseudo, "seed": seed,
                     "scratch": scratch if dcfg.baseline else None}
    files = save_students(out_dir, cfg, first["model"], first["scratch"])
    rows, teacher_accuracy = teacher_rows(loaded, teacher_dirs, dcfg, splits.test)
    if dcfg.baseline:
        rows.append(measure("student from scratch", first["scratch"], splits.test, files["scratch"],
                            dcfg.latency_repeats, scratch_scores))
    rows.append(measure(f"distilled student ({dcfg.mode})", first["model"], splits.test,
                        files["distilled"], dcfg.latency_repeats, distilled_scores))
    if files.get("ensemble_bytes"):
        rows[-1]["file_bytes"] = files["ensemble_bytes"]
    summary = build_summary(cfg, dcfg, first, rows, teacher_accuracy, teacher_dirs, splits, started)
    summary.update(seed_results(seeds, teacher_accuracy, distilled_scores, scratch_scores))
    write_report(out_dir, rows, summary, title=f"hpmodel distill → {out_dir}")
    return {**summary, "report": rows}


def teacher_rows(loaded, teacher_dirs, dcfg: DistillConfig, test):
    """One row per teacher, plus their ensemble when there are several."""
    rows = [measure(f"teacher {Path(d).name}", model, test, Path(d) / "model.safetensors",
                    dcfg.latency_repeats) for (model, _), d in zip(loaded, teacher_dirs)]
    if len(loaded) > 1:
        ensemble = Ensemble([m for m, _ in loaded], dcfg.teacher_weights or None)
        row = measure("teachers (ensemble)", ensemble, test, None, dcfg.latency_repeats)
        row["file_bytes"] = sum(r["file_bytes"] or 0 for r in rows)
        rows.append(row)
    return rows, rows[-1]["test_accuracy"]


def save_students(out_dir: Path, cfg: RunConfig, model, scratch) -> dict[str, Any]:
    """Weights + config.toml, so ``hpmodel evaluate`` re-scores them (ensemble members apart)."""
    files: dict[str, Any] = {"scratch": None, "distilled": out_dir / "model.safetensors"}
    members = list(model.members) if isinstance(model, Ensemble) else [model]
    targets = [out_dir] if len(members) == 1 else [out_dir / f"student_{i}" for i in range(len(members))]
    for member, target in zip(members, targets):
        atomic_write_bytes(target / "config.toml", to_toml(cfg.to_dict()).encode())
        save_weights(target / "model.safetensors", member.state_dict(),
                     metadata={"model": cfg.model.name, "hpmodel": "1"})
    if len(members) > 1:  # the ensemble's size is its members' sum
        files["distilled"] = None
        files["ensemble_bytes"] = sum((t / "model.safetensors").stat().st_size for t in targets)
    if scratch is not None:
        atomic_write_bytes(out_dir / "scratch" / "config.toml", to_toml(cfg.to_dict()).encode())
        files["scratch"] = out_dir / "scratch" / "model.safetensors"
        save_weights(files["scratch"], scratch.state_dict(), metadata={"model": cfg.model.name})
    return files


def seed_results(seeds, teacher_accuracy, distilled, scratch) -> dict[str, Any]:
    """Every seed's accuracies and gap recovered, and their mean and std over seeds."""
    records = []
    for index, seed in enumerate(seeds):
        s = scratch[index] if scratch else None
        records.append({"seed": seed, "distilled_test_accuracy": distilled[index],
                        "scratch_test_accuracy": s, "teacher_test_accuracy": teacher_accuracy,
                        "gap_recovered": gap_recovered(teacher_accuracy, s, distilled[index])
                        if s is not None else None})
    keys = [k for k in records[0] if k != "seed" and all(r[k] is not None for r in records)]
    return {"seeds": records, **mean_and_std({k: [float(r[k]) for r in records] for k in keys})}


def build_summary(cfg, dcfg, first, rows, teacher_accuracy, teacher_dirs, splits, started):
    """summary.json: ``test_accuracy`` and ``test_loss`` are those of the saved model (the
    first seed's distilled student), not the mean over seeds (that is ``mean``)."""
    scratch = accuracy(first["scratch"], splits.test) if dcfg.baseline else None
    with torch.no_grad():
        model = first["model"].cpu().eval()
        test_loss = F.cross_entropy(model(splits.test.x).float(), splits.test.y).item()
    distilled = {"test_accuracy": accuracy(model, splits.test)}
    result = first["result"]
    return {**{k: result.summary[k] for k in ("steps", "examples_per_second", "wall_seconds")},
            "test_accuracy": distilled["test_accuracy"], "test_loss": test_loss,
            "scratch_test_accuracy": scratch, "teacher_test_accuracy": teacher_accuracy,
            "gap_recovered": gap_recovered(teacher_accuracy, scratch, distilled["test_accuracy"])
            if scratch is not None else None,
            "test_metrics_of": f"seed {first['seed']}'s distilled student (model.safetensors)",
            "teachers": [str(d) for d in teacher_dirs], "pseudo_labeled": first["pseudo"],
            "distill": dataclasses.asdict(dcfg), "strategy": build_strategy(cfg).describe(),
            "total_seconds": time.perf_counter() - started}


__all__ = ["DistillConfig", "distill_config_from_dict", "distill_from_config", "load_distill_config",
           "split_pool"]
