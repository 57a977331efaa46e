"""Bad inputs end in one line naming cause and fix, exit 2: npz files, run directories
whose weights do not fit, an untrusted model.target, broken backup manifests."""

import json

import numpy as np
import pytest

from hpmodel.cli import main
from hpmodel.config import DataConfig, ModelConfig
from hpmodel.datasets import load_splits
from hpmodel.kernel.errors import ConfigError
from hpmodel.kernel.files import save_weights
from hpmodel.kernel.schema import to_toml
from hpmodel.config import config_from_dict
from hpmodel.models import build_model
from hpmodel.train.backup_format import find_backup

GOOD = {"x_train": np.zeros((10, 4), np.float32), "y_train": np.arange(10) % 3,
        "x_test": np.zeros((5, 4), np.float32), "y_test": np.arange(5) % 3}


@pytest.mark.parametrize("change, expected", [
    ({"x_train": np.array(["a"] * 10)}, "x_train has dtype <U1, not numbers"),
    ({"x_test": np.zeros((0, 4), np.float32)}, "x_test is empty"),
    ({"y_train": -np.ones(10, np.int64)}, "y_train holds the negative label -1"),
    ({"y_test": np.array([0, 1, 2, 3, 10**10])}, "beyond 1,000,000 classes"),  # nothing allocated
    ({"y_train": np.zeros((10, 3))}, "y_train has shape (10, 3)"),
    ({"y_train": np.zeros(9, np.int64)}, "x_train has 10 examples but y_train 9 labels"),
    ({"y_train": np.linspace(0, 1, 10)}, "y_train holds fractional labels"),
    ({"y_test": np.array([0, 1, np.nan, 1, 0])}, "y_test holds NaN or infinite labels"),
    ({"x_test": np.zeros((5, 3), np.float32)}, "x_train examples have shape (4,) but x_test (3,)"),
])
def test_a_bad_npz_is_one_line(tmp_path, change, expected):
    path = tmp_path / "d.npz"
    np.savez(path, **{**GOOD, **change})
    with pytest.raises(ConfigError) as error:
        load_splits(DataConfig(name="npz", path=str(path)))
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_object_arrays_and_float_integer_labels(tmp_path, capsys):
    path = tmp_path / "o.npz"
    np.savez(path, **{**GOOD, "x_train": np.array([{"a": 1}] * 10, dtype=object)})
    assert main(["train", "examples/digits.toml", "--out", str(tmp_path / "run"), "--set", "data.name=npz",
                 "--set", f'data.path="{path}"']) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "is not a readable .npz file" in err
    np.savez(path, **{**GOOD, "y_train": (np.arange(10) % 3).astype(np.float64)})  # 0.0, 1.0: fine
    assert load_splits(DataConfig(name="npz", path=str(path))).num_classes == 3


def write_run(run_dir, table, weights_of=None):
    """A run directory by hand: config.toml and (optionally) weights of another model."""
    run_dir.mkdir(parents=True)
    cfg = config_from_dict(table)
    (run_dir / "config.toml").write_text(to_toml(cfg.to_dict()))
    if weights_of is not None:
        save_weights(run_dir / "model.safetensors", weights_of.state_dict())
    return run_dir


def test_evaluate_of_weights_that_do_not_fit_is_one_line(tmp_path, capsys):
    mlp = {"data": {"name": "digits"}, "model": {"name": "mlp", "width": 8, "depth": 1}}
    other_width = build_model(ModelConfig(name="mlp", width=16, depth=1), (1, 8, 8), 10)
    other_depth = build_model(ModelConfig(name="mlp", width=8, depth=2), (1, 8, 8), 10)
    for name, model, expected in (("wide", other_width, "size mismatch"), ("deep", other_depth, "unexpected")):
        run = write_run(tmp_path / name, mlp, weights_of=model)
        assert main(["evaluate", str(run)]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "does not fit the model of its config.toml" in err
        assert expected in err and "train again" in err


EVIL = '''import pathlib
pathlib.Path({marker!r}).write_text("imported")
def build(input_shape, num_classes, **options):
    raise SystemExit("built")
'''


@pytest.mark.parametrize("command", ["evaluate", "compress", "distill"])
def test_a_run_directory_model_target_is_imported_only_when_trusted(tmp_path, monkeypatch, capsys, command):
    marker = tmp_path / "imported.txt"
    module = f"evil_target_{command}"  # a fresh module each time (imports are cached)
    (tmp_path / f"{module}.py").write_text(EVIL.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path))
    run = write_run(tmp_path / "run", {"data": {"name": "digits"}, "model": {"target": f"{module}:build"}})
    args = {"evaluate": ["evaluate", str(run)],
            "compress": ["compress", str(run), "--out", str(tmp_path / "c"), "--modes", "fp32"],
            "distill": ["distill", "src/hpmodel/examples/student.toml", "--teacher", str(run),
                        "--out", str(tmp_path / "d")]}[command]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert f"model.target = '{module}:build'" in err and "--trust-model-target" in err
    assert not marker.exists()
    with pytest.raises(SystemExit, match="built"):  # trusted: the user's own code runs
        main(args + ["--trust-model-target"])
    assert marker.read_text() == "imported"


@pytest.mark.parametrize("manifest", ["[]", "{}", '{"format": 1, "files": null}', "not json",
                                      '{"format": 1, "files": {"x": null}}'])
def test_a_broken_manifest_skips_the_backup_with_a_reason(tmp_path, manifest):
    folder = tmp_path / "step-00000004"
    folder.mkdir()
    (folder / "x").write_bytes(b"1")
    (folder / "manifest.json").write_text(manifest)
    found, _, problems = find_backup(tmp_path)
    assert found is None and len(problems) == 1 and "skipped" in problems[0]
    assert "\n" not in problems[0]
    json.dumps(problems)
