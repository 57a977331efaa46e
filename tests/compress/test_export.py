"""ONNX export matches PyTorch; corrupt, foreign and mis-shaped inputs give one clear error."""

import pytest
import torch

from hpmodel.compress.export import OnnxModel, export_onnx
from hpmodel.config import ModelConfig
from hpmodel.kernel.errors import HpmodelError
from hpmodel.models import build_model


@pytest.mark.parametrize("name", ["mlp", "cnn", "cnn1d"])
def test_onnx_runtime_matches_pytorch(name, tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, width=16, depth=2), (1, 8, 8), 10).eval()
    path = export_onnx(model, (1, 8, 8), tmp_path / "model.onnx")
    runner = OnnxModel(path)
    for batch in (1, 7):  # the batch axis is dynamic
        x = torch.randn(batch, 1, 8, 8)
        torch.testing.assert_close(runner(x), model(x), atol=1e-5, rtol=1e-4)


def test_corrupt_and_foreign_files_are_clear_errors(tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x00not an onnx protobuf" * 10)
    with pytest.raises(HpmodelError, match="corrupt or not an ONNX model"):
        OnnxModel(broken)
    with pytest.raises(HpmodelError, match="does not exist"):
        OnnxModel(tmp_path / "missing.onnx")


def test_wrong_input_shape_is_a_clear_error(tmp_path):
    model = build_model(ModelConfig(name="mlp", width=8, depth=1), (1, 8, 8), 10).eval()
    runner = OnnxModel(export_onnx(model, (1, 8, 8), tmp_path / "model.onnx"))
    with pytest.raises(HpmodelError, match=r"expects \(batch, 1, 8, 8\)"):
        runner(torch.randn(2, 64))
