import pytest
import torch
from torch import nn

from hpmodel.config import ModelConfig
from hpmodel.kernel.errors import ConfigError
from hpmodel.models import build_model


@pytest.mark.parametrize("name", ["mlp", "cnn", "cnn1d", "transformer"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (64,)])
def test_reference_models_classify_any_input_shape(name, shape):
    if name == "cnn" and shape == (64,):
        shape = (64,)  # a square flat vector is read as one 8×8 channel
    model = build_model(ModelConfig(name=name, width=16, depth=2, heads=2), shape, 10)
    assert isinstance(model, nn.Sequential) and len(model) >= 3  # blocks, for pipeline stages
    assert model(torch.randn(5, *shape)).shape == (5, 10)


def build_tiny(input_shape, num_classes, hidden=8):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


def test_user_model_by_import_path():
    model = build_model(ModelConfig(target="test_models:build_tiny", options={"hidden": 4}), (1, 8, 8), 3)
    assert model[1].out_features == 4


def test_bad_import_path_is_named():
    with pytest.raises(ConfigError, match="cannot be imported"):
        build_model(ModelConfig(target="nowhere.models:build"), (4,), 2)
