"""QAT of the depthwise-separable CNNs: structure, BN folding, fake-quant rounding, export,
and the bench's ``qat`` case (MobileNetV1, per-tensor weights) on a tiny size."""

from __future__ import annotations

import copy

import torch
from torch import nn

from hpmodel.bench._compress_qat import depthwise_range_spread, qat_cnn_rows
from hpmodel.bench._compress_runs import train_run
from hpmodel.compress import fake_quant
from hpmodel.compress.mobilenet import Resize, mobilenet, mobilenet_v1

MOBILENET = ['model.target="hpmodel.compress.mobilenet:mobilenet"']
from hpmodel.compress.variant_load import evaluate_variant
from hpmodel.compress.variants import CompressOptions, build_variant, load_source, qat_model


def test_mobilenet_is_depthwise_separable():
    model = mobilenet((1, 8, 8), 10, width=8, depth=3)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    depthwise = [c for c in convs if c.groups == c.in_channels > 1]
    pointwise = [c for c in convs if c.kernel_size == (1, 1)]
    assert len(depthwise) == len(pointwise) == 3
    assert sum(isinstance(m, nn.ReLU6) for m in model.modules()) == 4
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_folding_keeps_outputs_and_state_keys():
    torch.manual_seed(0)
    model = mobilenet((1, 8, 8), 10, width=8, depth=2)
    model.train()(torch.randn(32, 1, 8, 8))  # non-trivial running statistics
    x = torch.randn(4, 1, 8, 8)
    before = model.eval()(x)
    keys = set(model.state_dict())
    folded = fake_quant.fold_batch_norm(model)
    assert torch.allclose(folded(x), before, atol=1e-5)
    assert keys <= set(folded.state_dict())  # plus the folded conv biases
    fresh = fake_quant.add_folded_biases(mobilenet((1, 8, 8), 10, width=8, depth=2), folded.state_dict())
    fresh.load_state_dict(folded.state_dict())
    assert torch.allclose(fresh.eval()(x), before, atol=1e-4)


def test_weight_fake_quant_is_on_the_int8_grid_with_straight_through_gradient():
    weight = torch.randn(4, 1, 3, 3, requires_grad=True)
    quantized = fake_quant.fake_quantize_weight(weight)
    scale = weight.detach().flatten(1).abs().amax(1).reshape(-1, 1, 1, 1) / 127
    steps = quantized.detach() / scale
    assert torch.allclose(steps, steps.round(), atol=1e-3) and steps.abs().max() <= 127.001
    quantized.sum().backward()
    assert torch.equal(weight.grad, torch.ones_like(weight))


def test_qat_runs_and_exports(tmp_path):
    run = train_run(tmp_path / "run", MOBILENET[:1] + ["model.options={width=4, depth=2}", "optimizer.lr=0.01",
                                                    "data.num_examples=256"], epochs=1)
    source = load_source(run)
    options = CompressOptions(modes=["qat"], fine_tune_epochs=1, calibration_batches=2)
    prepared = fake_quant.prepare(fake_quant.fold_batch_norm(source.fresh_model().eval()))
    assert sum(isinstance(m, fake_quant.FakeQuantized) for m in prepared.modules()) == 6  # 5 convs + linear
    model, kind = qat_model(source, options)
    assert "conv" in kind and not any(isinstance(m, fake_quant.FakeQuantized) for m in model.modules())
    folder = build_variant(source, "qat", tmp_path / "variants", options)
    assert (folder / "model.onnx").is_file()
    assert 0.0 <= evaluate_variant(folder)["test_accuracy"] <= 1.0


def test_per_tensor_weights_in_fake_quant_and_in_the_int8_file(tmp_path):
    import onnx
    from onnx import numpy_helper

    weight = torch.randn(4, 1, 3, 3) * torch.tensor([1.0, 0.01, 0.1, 10.0]).reshape(-1, 1, 1, 1)
    quantized = fake_quant.fake_quantize_weight(weight, per_channel=False)
    steps = quantized / (weight.abs().max() / 127)  # one scale: the small channels round to 0
    assert torch.allclose(steps, steps.round(), atol=1e-3)
    assert torch.count_nonzero(quantized[1]) == 0 < torch.count_nonzero(fake_quant.fake_quantize_weight(weight)[1])
    run = train_run(tmp_path / "run", MOBILENET[:1] + ["model.options={width=4, depth=2}", "optimizer.lr=0.01",
                                                    "data.num_examples=256"], epochs=1)
    source = load_source(run)
    scales = {}
    for kind in ("per-channel", "per-tensor"):
        options = CompressOptions(modes=["qat"], fine_tune_epochs=1, calibration_batches=2, weight_scales=kind)
        folder = build_variant(source, "static-int8", tmp_path / kind, options)
        graph = onnx.load(str(folder / "model.onnx")).graph
        weights = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.INT8}
        dq = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in weights]
        values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        scales[kind] = [values[n.input[1]].size for n in dq]
        assert 0.0 <= evaluate_variant(folder)["test_accuracy"] <= 1.0
    assert max(scales["per-tensor"]) == 1 < max(scales["per-channel"])
    options = CompressOptions(modes=["qat"], fine_tune_epochs=1, weight_scales="per-tensor")
    assert "per-tensor" in qat_model(source, options)[1]


def test_mobilenet_v1_layout():
    model = mobilenet_v1((1, 8, 8), 10, width=4, input_size=32)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    depthwise = [c for c in convs if c.groups == c.in_channels > 1]
    assert len(depthwise) == 7 and [c.stride[0] for c in depthwise] == [1, 2, 1, 2, 1, 2, 1]
    assert [c.out_channels for c in depthwise] == [4, 4, 8, 8, 16, 16, 32]
    assert sum(isinstance(m, nn.ReLU6) for m in model.modules()) == 1 + 2 * 7  # after every conv
    assert isinstance(model[1], Resize) and model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    small = mobilenet_v1((64,), 10, width=4, input_size=0, blocks=3)  # flat digits, no resize
    assert not any(isinstance(m, Resize) for m in small.modules())
    assert small(torch.zeros(2, 64)).shape == (2, 10)


def test_a_dead_depthwise_channel_breaks_per_tensor_scales_only():
    """The bench case's mechanism without training: a channel whose input is always 0 has a
    BatchNorm variance near 0, so folding scales its weights by γ/√ε ≈ 316."""
    torch.manual_seed(0)
    model = mobilenet_v1((1, 8, 8), 10, width=4, input_size=16, blocks=2).eval()
    norm = model[3][1]  # the first block's depthwise BatchNorm
    with torch.no_grad():
        norm.running_var.fill_(0.5)
        norm.running_var[0] = 1e-20
    assert depthwise_range_spread(copy.deepcopy(model)) > 100
    folded = fake_quant.fold_batch_norm(copy.deepcopy(model))[3][0].weight.detach()
    live = folded[1:]
    per_tensor = fake_quant.fake_quantize_weight(folded, per_channel=False)[1:]
    per_channel = fake_quant.fake_quantize_weight(folded)[1:]
    assert (per_channel - live).abs().max() < (per_tensor - live).abs().max() / 10
    healthy = mobilenet_v1((1, 8, 8), 10, width=4, input_size=16, blocks=2)
    assert depthwise_range_spread(healthy) < 100  # fresh BatchNorms: every channel alike


def test_bench_qat_case_runs_and_reports_the_control(tmp_path):
    rows = qat_cnn_rows(tmp_path, quick=True, seed=1)
    variants = [(r["variant"], r["weight_scales"]) for r in rows]
    assert variants == [("fp32", ""), ("static-int8", "per-channel"), ("static-int8", "per-tensor"),
                        ("qat", "per-tensor"), ("fp32 fine-tuned", ""),
                        ("fp32 fine-tuned → static-int8", "per-tensor")]
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["seed"] == 1 for r in rows)
    qat = rows[3]
    loss = rows[0]["accuracy"] - rows[2]["accuracy"]
    assert abs(qat["static_int8_loss_points"] - 100 * loss) < 1e-6
    if loss > 0:
        expected = (qat["accuracy"] - rows[5]["accuracy"]) / loss
        assert abs(qat["qat_beyond_control_fraction"] - expected) < 1e-6
    assert isinstance(qat["meets_issue_19"], bool) and rows[0]["meets_issue_19"] is None
    assert rows[0]["depthwise_range_spread"] >= 1.0
