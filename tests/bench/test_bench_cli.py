"""``hpmodel bench NAME`` writes the benchmark's JSON, plot and a report with both."""

import json

from conftest import run_cli


def test_bench_command_writes_json_plot_and_report(tmp_path):
    run_cli("bench", "checkpoint", "--quick", "--out", str(tmp_path), check=True)
    result = json.loads((tmp_path / "checkpoint.json").read_text())
    modes = {row["mode"] for row in result["rows"]}
    assert {"none", "sync", "async"} <= modes
    report = (tmp_path / "report.md").read_text()
    assert "hpmodel bench checkpoint" in report and "checkpoint.png" in report
    assert (tmp_path / "checkpoint.png").stat().st_size > 1000


def test_unknown_benchmark_option_is_one_clear_line(tmp_path):
    proc = run_cli("bench", "checkpoint", "--quick", "--out", str(tmp_path), "--set", "nonsense=1")
    assert proc.returncode == 2 and "nonsense" in proc.stderr and "Traceback" not in proc.stderr
