"""Range checks: every numeric config key out of range is one ConfigError naming the key."""

import pytest

from hpmodel.cli import main
from hpmodel.config import config_from_dict
from hpmodel.kernel.errors import ConfigError


@pytest.mark.parametrize("table, expected", [
    ({"train": {"clip_grad_norm": -1.0}}, "train.clip_grad_norm = -1.0 must be 0 (off)"),
    ({"train": {"clip_grad_norm": float("inf")}}, "train.clip_grad_norm = inf"),
    ({"optimizer": {"lr": float("nan")}}, "optimizer.lr = nan must be a positive finite number"),
    ({"optimizer": {"lr": float("inf")}}, "optimizer.lr = inf"),
    ({"optimizer": {"lr": 0.0}}, "optimizer.lr = 0.0"),
    ({"optimizer": {"weight_decay": -0.1}}, "optimizer.weight_decay = -0.1"),
    ({"optimizer": {"momentum": 1.0}}, "optimizer.momentum = 1.0 must be in [0, 1)"),
    ({"optimizer": {"momentum": -0.5}}, "optimizer.momentum = -0.5"),
    ({"schedule": {"warmup_steps": -1}}, "schedule.warmup_steps = -1"),
    ({"schedule": {"min_lr_ratio": 1.5}}, "schedule.min_lr_ratio = 1.5"),
    ({"schedule": {"min_lr_ratio": float("nan")}}, "schedule.min_lr_ratio = nan"),
    ({"train": {"log_every_steps": 0}}, "train.log_every_steps = 0 must be at least 1"),
    ({"train": {"max_steps": -5}}, "train.max_steps = -5"),
    ({"train": {"epochs": -1}}, "train.epochs = -1"),
    ({"train": {"epochs": 0}}, "train.epochs = 0 and train.max_steps = 0 train nothing"),
    ({"train": {"early_stopping_patience": -1}}, "train.early_stopping_patience = -1"),
    ({"train": {"grad_accum": 0}}, "train.grad_accum = 0"),
    ({"backup": {"every_steps": -1}}, "backup.every_steps = -1"),
    ({"data": {"batch_size": 0}}, "data.batch_size = 0"),
    ({"data": {"val_fraction": 1.0}}, "data.val_fraction = 1.0"),
    ({"data": {"test_fraction": 0.0}}, "data.test_fraction = 0.0"),
    ({"data": {"name": "synthetic", "num_examples": 0}}, "data.num_examples = 0"),
    ({"data": {"name": "synthetic", "num_examples": -3}}, "data.num_examples = -3"),
    ({"data": {"name": "synthetic", "num_classes": 0}}, "data.num_classes = 0 must be at least 2"),
    ({"data": {"name": "synthetic", "noise": -1.0}}, "data.noise = -1.0"),
    ({"data": {"name": "synthetic", "shape": []}}, "data.shape = [] must be a non-empty list"),
    ({"data": {"name": "synthetic", "shape": ["a"]}}, "data.shape = ['a']"),
    ({"data": {"name": "synthetic", "shape": [-4]}}, "data.shape = [-4]"),
    ({"data": {"name": "synthetic", "shape": [4.5]}}, "data.shape = [4.5]"),
    ({"model": {"dropout": 1.0}}, "model.dropout = 1.0"),
    ({"model": {"depth": -1}}, "model.depth = -1 must be 0 (a linear model)"),
    ({"model": {"width": 0}}, "model.width = 0"),
    ({"model": {"name": "transformer", "width": 30, "heads": 4}},
     "model.width = 30 is not divisible by model.heads = 4"),
    ({"model": {"name": "gpt", "width": 64, "heads": 5}}, "e.g. model.heads = 4"),
    ({"train": {"inject_kill": [1]}}, "train.inject_kill = [1] must be [rank, step]"),
    ({"train": {"inject_kill": ["a", 3]}}, "train.inject_kill = ['a', 3]"),
    ({"train": {"inject_kill": [0, 0]}}, "train.inject_kill = [0, 0]"),
    ({"seed": -1}, "seed = -1"),
])
def test_out_of_range_values_are_one_line_naming_the_key(table, expected):
    with pytest.raises(ConfigError) as error:
        config_from_dict(table)
    message = str(error.value)
    assert expected in message and "\n" not in message
    assert "--set" in message or "e.g." in message or "set train" in message  # the fix


@pytest.mark.parametrize("table", [
    {"model": {"depth": 0}},  # a linear model
    {"train": {"epochs": 0, "max_steps": 5}},
    {"data": {"name": "digits", "shape": []}},  # shape is read by synthetic data only
    {"model": {"name": "transformer", "width": 32, "heads": 4}},
    {"train": {"inject_kill": [1, 3]}, "optimizer": {"momentum": 0.0}, "schedule": {"min_lr_ratio": 1.0}},
])
def test_values_at_the_edges_are_allowed(table):
    config_from_dict(table)


def test_the_cli_prints_the_range_error_in_one_line_and_exits_2(tmp_path, capsys, example_config):
    code = main(["train", str(example_config), "--out", str(tmp_path / "run"),
                 "--set", "train.clip_grad_norm=-1"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "train.clip_grad_norm = -1.0" in err
    assert not (tmp_path / "run").exists()
