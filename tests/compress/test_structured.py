"""Dependency-aware structured pruning (Torch-Pruning): smaller models, same outputs' shape,
ONNX export, reload into a freshly built model, and the fallback without torch_pruning."""

from __future__ import annotations

import logging

import pytest
import torch

from hpmodel.compress import export, structured
from hpmodel.config import ModelConfig
from hpmodel.models import build_model, count_parameters

needs_torch_pruning = pytest.mark.skipif(not structured.available(), reason="torch_pruning not installed")
SHAPE = (1, 8, 8)


def _model(name: str):
    torch.manual_seed(0)
    return build_model(ModelConfig(name=name, width=64, depth=2, heads=4), SHAPE, 10)


@needs_torch_pruning
@pytest.mark.parametrize("name", ["cnn", "mlp", "transformer"])
def test_pruned_model_is_smaller_keeps_outputs_and_exports(name, tmp_path):
    model = _model(name)
    dense = count_parameters(model)
    pruned = structured.prune_to_ratio(model, 0.5, torch.zeros(1, *SHAPE))
    assert count_parameters(pruned) == pytest.approx(0.5 * dense, rel=0.1)
    x = torch.randn(3, *SHAPE)
    assert pruned.eval()(x).shape == (3, 10)
    onnx_file = export.export_onnx(pruned, SHAPE, tmp_path / "pruned.onnx")
    dense_file = export.export_onnx(_model(name), SHAPE, tmp_path / "dense.onnx")
    assert onnx_file.stat().st_size < 0.6 * dense_file.stat().st_size
    fresh = structured.resize_to_state(_model(name), pruned.state_dict())
    fresh.load_state_dict(pruned.state_dict(), strict=True)
    assert torch.allclose(fresh.eval()(x), pruned(x), atol=1e-5)


@needs_torch_pruning
def test_attention_heads_shrink_alike():
    pruned = structured.prune_to_ratio(_model("transformer"), 0.4, torch.zeros(1, *SHAPE))
    attention = [m for m in pruned.modules() if isinstance(m, torch.nn.MultiheadAttention)]
    assert all(m.num_heads == 4 and m.embed_dim == 4 * m.head_dim < 64 for m in attention)


def test_without_torch_pruning_falls_back_with_one_line(monkeypatch, caplog):
    monkeypatch.setattr(structured, "available", lambda: False)
    model = _model("mlp")
    dense = count_parameters(model)
    with caplog.at_level(logging.WARNING, logger="hpmodel.compress.structured"):
        pruned = structured.prune_to_ratio(model, 0.5, torch.zeros(1, *SHAPE))
    assert [r.getMessage() for r in caplog.records] == [structured.FALLBACK]
    assert count_parameters(pruned) < 0.7 * dense
    assert pruned(torch.zeros(2, *SHAPE)).shape == (2, 10)
