"""Config validation: each kind of bad input gives one clear line and exit status 2."""

import pytest

from conftest import run_cli
from hpmodel.cli import main
from hpmodel.config import config_from_dict, load_config
from hpmodel.kernel.schema import to_toml
import tomllib


def write(tmp_path, text):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("text, expected", [
    ("[train]\nepoch = 3\n", "unknown key 'train.epoch'"),
    ("[train]\nepochs = 'three'\n", "train.epochs = 'three' has the wrong type"),
    ("[model]\nname = 'resnet'\n", "model.name = 'resnet' is unknown: allowed values are mlp"),
    ("[optimizer]\nname = 'lion'\n", "optimizer.name = 'lion' is unknown"),
    ("[strategy]\nname = 'warp'\n", "strategy 'warp' is unknown: registered strategies are"),
    ("[strategy]\nname = 'one-device'\nwarp = 1\n", "unknown key 'strategy.warp'"),
    ("[data]\nname = 'npz'\npath = 'missing.npz'\n", "data.path 'missing.npz' does not exist"),
    ("[train\n", "is not valid TOML"),
    ("[train]\ncompile_mode = 'fast'\n", "train.compile_mode = 'fast' is unknown: allowed values are "
     "default, reduce-overhead, max-autotune, max-autotune-no-cudagraphs"),
    ("[train]\ncompile = true\ncompile_mode = 'reduce-overhead'\ngrad_accum = 2\n",
     "train.compile_mode = 'reduce-overhead' replays CUDA graphs, which cannot accumulate gradients"),
])
def test_bad_config_gives_one_clear_line_and_status_2(tmp_path, capsys, text, expected):
    code = main(["train", write(tmp_path, text), "--out", str(tmp_path / "out"),
                 "--set", "train.epochs=1"] if "epochs" not in text else
                ["train", write(tmp_path, text), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert expected in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_bad_config_exit_status_as_a_real_process(tmp_path):
    proc = run_cli("train", write(tmp_path, "[model]\nname = 'resnet'\n"), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert "model.name = 'resnet' is unknown" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_config_file(capsys, tmp_path):
    assert main(["train", str(tmp_path / "nope.toml"), "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_set_overrides_any_key_and_config_round_trips(example_config):
    cfg = load_config(example_config, ["train.epochs=3", "model.name=mlp", "data.shape=[4, 4]"])
    assert (cfg.train.epochs, cfg.model.name, cfg.data.shape) == (3, "mlp", [4, 4])
    again = config_from_dict(tomllib.loads(to_toml(cfg.to_dict())))
    assert again == cfg


def test_compile_mode_round_trips_and_reaches_the_trainer(example_config):
    from hpmodel.runs.common import build_strategy, build_trainer

    cfg = load_config(example_config, ["train.compile=true", "train.compile_mode=max-autotune"])
    assert cfg.train.compile_mode == "max-autotune" and load_config(example_config).train.compile_mode == "default"
    assert config_from_dict(tomllib.loads(to_toml(cfg.to_dict()))) == cfg
    assert build_trainer(cfg, build_strategy(cfg)).compile_mode == "max-autotune"


def test_too_many_devices_for_one_device(capsys, tmp_path, example_config):
    code = main(["train", str(example_config), "--devices", "3", "--out", str(tmp_path)])
    assert code == 2
    assert "uses exactly 1 device" in capsys.readouterr().err
