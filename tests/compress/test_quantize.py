"""Quantization modes keep digits accuracy within 1 point of fp32 and shrink int8 files ≥ 3.5×."""

import json

import pytest
import torch

from compress_fixtures import fp32, source, train_mlp  # noqa: F401 (fixtures)
from hpmodel.compress import quantize
from hpmodel.compress.variant_load import load_variant
from hpmodel.compress.variants import CompressOptions, build_variant
from hpmodel.runs.train import evaluate_run


@pytest.mark.parametrize("mode", ["dynamic-int8", "static-int8"])
def test_int8_is_small_and_accurate(source, fp32, mode, tmp_path):
    folder = build_variant(source, mode, tmp_path)
    info = json.loads((folder / "variant.json").read_text())
    assert info["format"] == "onnx" and info["dtype"] == "int8"
    ratio = (source.run_dir / "model.safetensors").stat().st_size / (folder / "model.onnx").stat().st_size
    assert ratio >= 3.5, ratio
    accuracy = evaluate_run(folder)["test_accuracy"]  # the hpmodel evaluate path, through ORT
    assert accuracy >= fp32 - 0.01, (accuracy, fp32)


@pytest.mark.parametrize("mode", ["float16", "bf16"])
def test_half_precision_is_accurate(source, fp32, mode, tmp_path):
    folder = build_variant(source, mode, tmp_path)
    assert evaluate_run(folder)["test_accuracy"] >= fp32 - 0.01
    predict, _ = load_variant(folder)
    assert predict.dtype == (torch.float16 if mode == "float16" else torch.bfloat16)
    size = (folder / "model.safetensors").stat().st_size
    assert size < 0.51 * (source.run_dir / "model.safetensors").stat().st_size


def test_qat_fine_tunes_with_fake_quant_and_stays_accurate(source, fp32, tmp_path):
    prepared = quantize.qat_prepare(source.fresh_model())
    assert any("FakeQuantized" in type(m).__name__ for m in prepared.modules())
    assert not any("FakeQuantized" in type(m).__name__ for m in quantize.qat_convert(prepared).modules())
    folder = build_variant(source, "qat", tmp_path, CompressOptions(fine_tune_epochs=1))
    assert evaluate_run(folder)["test_accuracy"] >= fp32 - 0.01


def test_onnx_float16_file_is_half_size(source, tmp_path):
    folder = build_variant(source, "float16", tmp_path)
    fp32_size = (source.run_dir / "model.safetensors").stat().st_size
    assert (folder / "model.onnx").stat().st_size < 0.51 * fp32_size


def test_wrong_input_shape_is_a_clear_error(source, tmp_path):
    from hpmodel.kernel.errors import HpmodelError

    for mode in ("dynamic-int8", "bf16"):
        predict, _ = load_variant(build_variant(source, mode, tmp_path))
        with pytest.raises(HpmodelError, match="does not fit"):
            predict(torch.randn(3, 10))


def test_fp8_needs_a_gpu_on_cpu_machines(source):
    from hpmodel.kernel.errors import HpmodelError

    if quantize.fp8_supported():
        pytest.skip("this machine has fp8 tensor cores")
    with pytest.raises(HpmodelError, match="compute capability"):
        quantize.to_float8(source.fresh_model())


@pytest.mark.gpu
def test_fp8_linear_matches_bf16():
    if not quantize.fp8_supported():
        pytest.skip("needs a CUDA GPU with compute capability >= 8.9")
    layer = torch.nn.Linear(512, 256).cuda().bfloat16()
    x = torch.randn(64, 512, device="cuda", dtype=torch.bfloat16)
    fp8 = quantize.Float8Linear.from_linear(layer)
    error = (fp8(x).float() - layer(x).float()).norm() / layer(x).float().norm()
    assert error < 0.08, error
