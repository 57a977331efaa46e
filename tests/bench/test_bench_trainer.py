"""``hpmodel bench trainer``: every contender runs the same steps (no timing is asserted)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from hpmodel.bench import trainer as bench
from hpmodel.models.gpt import GPTConfig

TINY = bench.Workload("gpt", batch=4, steps=2, warmup=1, lr=1e-3,
                      gpt=GPTConfig(seq_len=8, width=16, depth=1, heads=2))


def test_contenders_train_the_same_model_on_the_same_batches():
    device = torch.device("cpu")
    x, y = TINY.data(device)
    assert x.shape == (12, 8) and torch.equal(x[:, 1:], y[:, :-1])  # 3 distinct batches, next tokens
    for name in ("pytorch eager", "hpmodel"):
        assert bench.RUNNERS[name](TINY, device, (x, y)) > 0


def test_rows_ratios_and_skips(tmp_path):
    result = bench.run_bench(tmp_path, quick=True, models=["gpt", "mlp"],
                             contenders=["pytorch eager", "hpmodel", "hpmodel compile",
                                         "lightning fabric"], steps=2, warmup=1)
    rows = {(r["model"], r["contender"]): r for r in result["rows"]}
    eager = rows[("gpt", "pytorch eager")]
    assert eager["vs pytorch eager"] == 1.0 and eager["tokens/s"] == pytest.approx(eager["examples/s"] * 64, rel=0.01)
    assert rows[("mlp", "hpmodel")]["tokens/s"] is None
    assert math.isfinite(rows[("gpt", "hpmodel")]["vs fastest peer"])
    for row in result["rows"]:
        assert row["note"] or math.isfinite(row["examples/s"]), row
    assert not rows[("gpt", "hpmodel compile")]["note"]  # train.compile exists: the row ran
    saved = json.loads((tmp_path / "trainer.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))
    assert (tmp_path / "trainer.png").stat().st_size > 0
