"""``hpmodel bench trainer``: every contender runs the same steps (no timing is asserted)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from hpmodel.bench import _trainer_contenders as contenders
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


def test_every_round_and_paired_ratios_are_written(tmp_path, capsys):
    result = bench.run_bench(tmp_path, quick=True, models=["mlp"], contenders=["pytorch eager", "hpmodel"],
                             steps=2, warmup=1, repeats=2)
    saved = json.loads((tmp_path / "trainer.json").read_text())
    rounds = saved["rounds"]["mlp"]
    assert set(rounds) == {"pytorch eager", "hpmodel"}
    assert all(len(rates) == 2 and all(r > 0 for r in rates) for rates in rounds.values())
    eager = next(r for r in result["rows"] if r["contender"] == "pytorch eager")
    assert eager["examples/s"] == pytest.approx(sum(rounds["pytorch eager"]) / 2, abs=0.1)  # the median
    pair = saved["paired"]["mlp"]["hpmodel / pytorch eager"]
    expected = [round(a / b, 4) for a, b in zip(rounds["hpmodel"], rounds["pytorch eager"])]
    assert pair["per_round"] == expected and pair["min"] <= pair["median"] <= pair["max"]
    assert "mlp · hpmodel / pytorch eager, paired by round:" in capsys.readouterr().out


def test_max_autotune_contenders_are_opt_in_and_pass_their_mode(tmp_path, monkeypatch):
    assert not set(bench.OPT_IN) & set(bench.CONTENDERS) and set(bench.OPT_IN) <= set(bench.RUNNERS)
    modes = []

    def fake_compile(fn, **kwargs):  # records the mode, runs eagerly (no minutes of autotuning)
        modes.append(kwargs.get("mode"))
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    names = ["pytorch compile", "hpmodel compile", *bench.OPT_IN]
    result = bench.run_bench(tmp_path, quick=True, models=["gpt"], contenders=names, steps=2, warmup=1)
    assert sorted(modes, key=str) == sorted([None, None, contenders.AUTOTUNE_MODE, contenders.AUTOTUNE_MODE], key=str)
    assert all(not row["note"] for row in result["rows"]), result["rows"]
    paired = result["paired"]["gpt"]
    assert set(paired) == {"hpmodel compile / pytorch compile",
                           "hpmodel compile max-autotune / pytorch compile max-autotune"}
    assert len(paired["hpmodel compile / pytorch compile"]["per_round"]) == 1
