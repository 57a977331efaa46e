"""Every Conv and Linear weight of the digits CNN is int8 in both int8 modes; the files shrink
by the per-channel arithmetic; dynamic int8 asks ORT to fold its weight-only convolutions."""

import json

import onnx
import pytest
from onnx import TensorProto

from hpmodel.bench.compress import train_reference
from hpmodel.compress import export, onnx_graph
from hpmodel.compress.variants import build_variant, load_source
from hpmodel.config import load_config
from hpmodel.runs.train import evaluate_run


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    cfg = load_config("examples/digits.toml", ["train.epochs=3", "train.progress=false"])
    return load_source(train_reference(cfg, tmp_path_factory.mktemp("cnn")))


def _float_weights(path) -> list[str]:
    """Names of float initializers feeding a Conv / Gemm / MatMul weight slot directly."""
    graph = onnx.load(str(path)).graph
    floats = {t.name for t in graph.initializer if t.data_type == TensorProto.FLOAT and len(t.dims) >= 2}
    return [n.input[1] for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul") and n.input[1] in floats]


@pytest.mark.parametrize("mode, floor", [("dynamic-int8", 3.5), ("static-int8", 3.85)])
def test_every_weight_is_int8(cnn, mode, floor, tmp_path):
    folder = build_variant(cnn, mode, tmp_path)
    path = folder / "model.onnx"
    assert _float_weights(path) == []
    fp32 = export.export_onnx(cnn.model, cnn.splits.input_shape, tmp_path / "fp32.onnx")
    ratio = onnx_graph.weight_bytes(fp32) / onnx_graph.weight_bytes(path)
    assert ratio >= floor, ratio
    info = json.loads((folder / "variant.json").read_text())
    assert info["weight_bytes"] == onnx_graph.weight_bytes(path)
    graph = onnx.load(str(path))
    ops = {n.op_type for n in graph.graph.node}
    assert "ConvInteger" not in ops  # the slow kernel is never chosen
    config = {p.key: p.value for p in graph.metadata_props}.get(export.SESSION_CONFIG_KEY)
    assert (config is not None) == (mode == "dynamic-int8")
    fp32_accuracy = evaluate_run(cnn.run_dir)["test_accuracy"]
    assert evaluate_run(folder)["test_accuracy"] >= fp32_accuracy - 0.01


def test_integer_conv_kernel_still_available(cnn, tmp_path):
    from hpmodel.compress import quantize

    fp32 = export.export_onnx(cnn.model, cnn.splits.input_shape, tmp_path / "fp32.onnx")
    path = quantize.quantize_onnx_dynamic(fp32, tmp_path / "int.onnx", conv_kernel="integer")
    assert "ConvInteger" in {n.op_type for n in onnx.load(str(path)).graph.node}
    from hpmodel.kernel.errors import HpmodelError

    with pytest.raises(HpmodelError, match="conv kernel"):
        quantize.quantize_onnx_dynamic(fp32, tmp_path / "x.onnx", conv_kernel="fast")
