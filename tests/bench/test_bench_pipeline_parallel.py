"""``hpmodel bench pipeline --quick`` runs on 2 Gloo processes and writes its results."""

import json

from conftest import run_cli


def test_pipeline_bench_quick_writes_table_json_and_plot(tmp_path):
    proc = run_cli("bench", "pipeline", "--out", str(tmp_path), "--quick", timeout=240, check=True)
    result = json.loads((tmp_path / "pipeline.json").read_text())
    rows = [r for r in result["rows"] if r["part"] == "throughput"]
    assert {(r["schedule"], r["microbatches"]) for r in rows} == {
        (s, m) for s in ("gpipe", "1f1b") for m in (1, 2, 4, 8, 16)}
    naive = next(r for r in rows if r["schedule"] == "gpipe" and r["microbatches"] == 1)
    assert naive["speedup_vs_naive"] == 1.0 and naive["bubble_bound"] == 1.0
    assert all(r["examples_per_second"] > 0 for r in rows)
    assert (tmp_path / "pipeline.png").stat().st_size > 0
    assert "hpmodel bench pipeline" in proc.stdout
    assert "pipeline partition (time-balanced)" in proc.stdout  # the strategy's own partitioner


def test_pipeline_bench_runs_stages_times_replicas(tmp_path):
    # Pipeline × data parallel: 2 stages × 2 replicas = 4 Gloo processes.
    run_cli("bench", "pipeline", "--out", str(tmp_path), "--quick", "--set", "replicas=2",
            timeout=300, check=True)
    result = json.loads((tmp_path / "pipeline.json").read_text())
    assert (result["stages"], result["replicas"]) == (2, 2)
    rows = [r for r in result["rows"] if r["part"] == "throughput"]
    assert len(rows) == 10 and all(r["examples_per_second"] > 0 for r in rows)


def test_pipeline_bench_names_a_wrong_partition(tmp_path):
    proc = run_cli("bench", "pipeline", "--out", str(tmp_path), "--quick", "--set", "partition=even",
                   timeout=60)
    assert proc.returncode == 2
    assert "partition = 'even' is unknown" in proc.stderr + proc.stdout
