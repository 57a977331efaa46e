"""End to end on digits: multi-teacher, many-on-many, noisy student (unlabeled pool), the CLI."""

import json

import pytest
import torch

from conftest import run_cli
from hpmodel.compress.distill import Ensemble, load_teacher
from hpmodel.compress.noisy_student import Noise, StochasticDepth, noisy_student, random_shift
from hpmodel.runs.distill import (distill_from_config, load_distill_config,
                                          split_pool)
from hpmodel.config import ModelConfig, load_config
from hpmodel.datasets import load_splits
from hpmodel.kernel.errors import HpmodelError
from hpmodel.models import build_model, count_parameters
from hpmodel.runs.train import train_from_config

BASE = """seed = 0
[data]
name = "digits"
batch_size = 64
[model]
name = "{name}"
width = {width}
depth = {depth}
[train]
epochs = {epochs}
progress = false
log_every_steps = 5
[strategy]
name = "one-device"
device = "cpu"
"""


def write_config(path, name="mlp", width=32, depth=1, epochs=3, distill=""):
    path.write_text(BASE.format(name=name, width=width, depth=depth, epochs=epochs) + distill)
    return path


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    root = tmp_path_factory.mktemp("teachers")
    dirs = []
    for name, width in (("cnn", 8), ("mlp", 64)):
        cfg = load_config(write_config(root / f"{name}.toml", name=name, width=width, depth=2,
                                       epochs=3))
        train_from_config(cfg, root / name)
        dirs.append(root / name)
    return dirs


def test_multi_teacher_run_writes_report(teachers, tmp_path):
    config = write_config(tmp_path / "s.toml", distill="[distill]\ntemperature = 2.0\n"
                          "teacher_weights = [2, 1]\nlatency_repeats = 3\nseeds = [0, 1]\n")
    cfg, dcfg = load_distill_config(config)
    out = tmp_path / "run"
    summary = distill_from_config(cfg, dcfg, [str(d) for d in teachers], out)
    for name in ("model.safetensors", "config.toml", "summary.json", "report.md", "metrics.jsonl",
                 "scratch/model.safetensors"):
        assert (out / name).is_file(), name
    written = json.loads((out / "summary.json").read_text())
    assert written["test_accuracy"] == pytest.approx(summary["test_accuracy"])  # returned = written
    models = [row["model"] for row in written["report"]]
    assert models[-3:] == ["teachers (ensemble)", "student from scratch", "distilled student (average)"]
    assert 0.3 < written["test_accuracy"] <= 1 and written["gap_recovered"] is not None
    for row in written["report"]:
        assert row["parameters"] > 0 and row["latency_ms_batch64"] > 0 and row["file_bytes"] > 0
    assert "gap recovered" in (out / "report.md").read_text()
    seeds = written["seeds"]  # per seed, and mean ± std over them (#21)
    assert [r["seed"] for r in seeds] == [0, 1] and "distilled_test_accuracy" in written["std"]
    assert written["mean"]["distilled_test_accuracy"] == pytest.approx(
        sum(r["distilled_test_accuracy"] for r in seeds) / 2)
    assert written["test_accuracy"] == pytest.approx(seeds[0]["distilled_test_accuracy"])
    # The distilled student is a plain run directory: 'hpmodel evaluate' re-scores it.
    from hpmodel.runs.train import evaluate_run
    assert evaluate_run(out)["test_accuracy"] == pytest.approx(written["test_accuracy"], abs=1e-9)


def test_many_on_many_trains_one_student_per_teacher(teachers, tmp_path):
    config = write_config(tmp_path / "s.toml", distill='[distill]\nmode = "many-on-many"\n'
                          "baseline = false\ncache_teacher = false\nlatency_repeats = 2\n")
    cfg, dcfg = load_distill_config(config)
    summary = distill_from_config(cfg, dcfg, [str(d) for d in teachers], tmp_path / "run")
    for index in (0, 1):
        student, _ = load_teacher(tmp_path / "run" / f"student_{index}")
        assert student is not None
    ensemble_row = summary["report"][-1]
    assert ensemble_row["model"] == "distilled student (many-on-many)"
    assert ensemble_row["parameters"] == 2 * count_parameters(build_model(cfg.model, (1, 8, 8), 10))
    assert [row["model"] for row in summary["report"][:3]] == [
        f"teacher {teachers[0].name}", f"teacher {teachers[1].name}", "teachers (ensemble)"]


def test_noisy_student_uses_the_unlabeled_pool(teachers, tmp_path):
    config = write_config(tmp_path / "s.toml", width=64, distill=(
        '[distill]\nmode = "noisy-student"\nlabeled_fraction = 0.3\nrounds = 2\ntemperature = 1.0\n'
        "alpha = 1.0\nconfidence_threshold = 0.3\nlatency_repeats = 2\nbaseline = false\n"))
    cfg, dcfg = load_distill_config(config)
    summary = distill_from_config(cfg, dcfg, [str(teachers[0])], tmp_path / "run")
    splits = load_splits(cfg.data, cfg.seed)
    (x_lab, _), pool = split_pool(splits.train, 0.3, cfg.seed)
    assert len(x_lab) + len(pool) == len(splits.train.y)
    kept = summary["pseudo_labeled"]
    assert len(kept) == 2 and all(0 < k <= len(pool) for k in kept)
    assert summary["test_accuracy"] > 0.3


def test_noise_hooks_shift_and_drop_only_in_training():
    torch.manual_seed(0)
    x = torch.arange(2 * 16, dtype=torch.float32).view(2, 1, 4, 4) + 1
    shifted = random_shift(x, 1)
    assert shifted.shape == x.shape
    assert all(set(s.unique().tolist()) - {0.0} <= set(o.unique().tolist())
               for s, o in zip(shifted, x))
    layer = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    layer.register_forward_hook(StochasticDepth(0.5))
    tokens = torch.randn(64, 3, 8)
    out = layer(tokens)
    skipped = [(o == t).all().item() for o, t in zip(out, tokens)]
    assert 0 < sum(skipped) < 64  # about half the examples skip the block
    layer.eval()
    assert not any((o == t).all().item() for o, t in zip(layer(tokens), tokens))


def test_noisy_student_from_python_with_transformer(tmp_path):
    torch.manual_seed(0)
    splits = load_splits(load_config().data, 0)
    model_cfg = ModelConfig(name="transformer", width=16, depth=1, heads=2)
    factory = lambda: build_model(model_cfg, (1, 8, 8), 10)  # noqa: E731
    teacher = build_model(model_cfg, (1, 8, 8), 10)
    rounds = noisy_student(teacher, factory, (splits.train.x[:100], splits.train.y[:100]),
                           splits.train.x[100:300], rounds=1,
                           noise=Noise(shift=1, std=0.05, stochastic_depth=0.2), epochs=1)
    assert rounds[0].pseudo_labeled == 200
    assert not rounds[0].model._forward_pre_hooks  # the returned student is clean


def test_distill_cli_and_its_errors(teachers, tmp_path):
    config = write_config(tmp_path / "s.toml", distill="[distill]\nlatency_repeats = 2\n")
    out = tmp_path / "cli"
    proc = run_cli("distill", str(config), "--teacher", str(teachers[0]), "--out", str(out),
                   "--set", "distill.baseline=false", check=True)
    assert (out / "report.md").is_file() and "distilled student" in proc.stdout
    proc = run_cli("distill", str(config), "--teacher", str(teachers[0]), "--out", str(out),
                   "--set", "distill.mode=\"ensemble\"")
    assert proc.returncode == 2 and "distill.mode" in proc.stderr
    proc = run_cli("distill", str(config), "--teacher", str(teachers[0]), "--out", str(out),
                   "--set", "seed=3")
    assert proc.returncode == 2 and "another split" in proc.stderr
    with pytest.raises(HpmodelError, match="no config.toml"):
        load_teacher(tmp_path)
    assert isinstance(Ensemble([torch.nn.Linear(2, 2)]), torch.nn.Module)
