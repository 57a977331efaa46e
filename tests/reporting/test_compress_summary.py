"""The compress summary says how latencies were taken (median after warm-up, at each batch
size) and that compress has no seeds; latency_ms warms up before it times."""

import json

import torch

from hpmodel.compress.measure import latency_ms
from hpmodel.reporting.compress import write_report

ROWS = [{"mode": "fp32", "test_accuracy": 0.9, "parameters": 10, "bytes": 400, "gzip_bytes": 380,
         "ort_cpu_ms_b1": 0.02, "ort_cpu_ms_b64": 0.05},
        {"mode": "dynamic-int8", "test_accuracy": 0.89, "parameters": 10, "bytes": 150,
         "gzip_bytes": 140, "ort_cpu_ms_b1": 0.03, "ort_cpu_ms_b64": 0.04}]


def test_summary_records_latency_method_and_seed(tmp_path):
    summary = write_report(tmp_path, [dict(r) for r in ROWS], {}, repeats=7, seed=3)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["latency"]["statistic"] == "median" and saved["latency"]["timed_calls"] == 7
    assert saved["seeds"]["used"] == [3] and saved["seeds"]["per_seed_results"] is False
    assert summary["variants"][1]["x_smaller_gzip"] == 380 / 140
    md = (tmp_path / "report.md").read_text()
    assert "of 7 timed calls after warm-up calls at each batch size" in md
    assert "seed 3" in md


def test_latency_is_timed_only_after_warm_up_calls_at_every_batch():
    calls: list[int] = []
    for batch in (1, 64):
        latency_ms(lambda x: calls.append(x.shape[0]), torch.zeros(batch, 2), repeats=5)
    # each batch size gets its own warm-up before its 5 timed calls
    assert calls.count(1) == calls.count(64) > 5
