"""``hpmodel compress`` end to end: variants, report, plots, and ``hpmodel evaluate`` round trips."""

import json
import shutil

import pytest

from compress_fixtures import train_mlp
from conftest import run_cli
from hpmodel.cli import main


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    run = train_mlp(tmp_path_factory.mktemp("fp32"))
    out = tmp_path_factory.mktemp("compressed")
    assert main(["compress", str(run), "--out", str(out), "--modes", "dynamic-int8,structured,fp8",
                 "--epochs", "2", "--repeats", "3"]) == 0
    return run, out


def test_report_table_and_plots(compressed):
    _, out = compressed
    summary = json.loads((out / "summary.json").read_text())
    modes = [row["mode"] for row in summary["variants"]]
    assert modes == ["fp32", "dynamic-int8", "structured"]
    for row in summary["variants"]:
        for key in ("test_accuracy", "parameters", "bytes", "gzip_bytes", "ort_cpu_ms_b1", "ort_cpu_ms_b64"):
            assert key in row, (row["mode"], key)
    assert "fp8" in summary["skipped"]  # no GPU here
    report = (out / "report.md").read_text()
    assert "| dynamic-int8 |" in report and "skipped `fp8`" in report
    assert (out / "accuracy_vs_size.png").stat().st_size > 1000
    assert (out / "accuracy_vs_latency.png").stat().st_size > 1000


def test_evaluate_reads_variants(compressed, capsys):
    _, out = compressed
    summary = json.loads((out / "summary.json").read_text())
    proc = run_cli("evaluate", str(out / "dynamic-int8"), check=True)  # one real process
    scores = {"dynamic-int8": json.loads(proc.stdout.strip().splitlines()[-1])}
    for mode in ("fp32", "structured"):
        capsys.readouterr()
        assert main(["evaluate", str(out / mode)]) == 0
        scores[mode] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for row in summary["variants"]:
        assert scores[row["mode"]]["test_accuracy"] == pytest.approx(row["test_accuracy"], abs=1e-9)


def test_corrupt_variant_and_foreign_weights_exit_2(compressed, tmp_path, capsys):
    run, out = compressed
    broken = tmp_path / "broken"
    shutil.copytree(out / "dynamic-int8", broken)
    (broken / "model.onnx").write_bytes(b"garbage")
    proc = run_cli("evaluate", str(broken))
    assert proc.returncode == 2 and "corrupt or not an ONNX model" in proc.stderr
    foreign = tmp_path / "foreign"
    shutil.copytree(run, foreign)
    shutil.copyfile(out / "structured" / "model.safetensors", foreign / "model.safetensors")
    (foreign / "config.toml").write_text((foreign / "config.toml").read_text().replace(
        'name = "mlp"', 'name = "cnn"'))
    capsys.readouterr()
    assert main(["compress", str(foreign), "--out", str(tmp_path / "c"), "--modes", "dynamic-int8"]) == 2
    assert "does not fit the model" in capsys.readouterr().err


def test_bench_compress_quick_writes_every_case(tmp_path):
    from hpmodel.bench import run_benchmark

    result = run_benchmark("compress", tmp_path, quick=True)
    cases = {row["case"] for row in result["details"]}
    assert {"cpu-latency", "sparse-size", "qat-recovery", "qat", "structured"} <= cases
    qat = {(r["variant"], r["weight_scales"]) for r in result["details"] if r["case"] == "qat"}
    assert {("static-int8", "per-tensor"), ("qat", "per-tensor"),
            ("fp32 fine-tuned → static-int8", "per-tensor")} <= qat  # the control stays in
    pruned = [r for r in result["details"] if r["case"] == "structured" and r["variant"] != "dense"]
    assert {r["model"] for r in pruned} == {"cnn", "mlp", "transformer"}
    assert all(r["x_smaller_file"] > 1.5 for r in pruned)
    latency = [r for r in result["details"] if r["case"] == "cpu-latency"]
    assert latency[0]["parameters"] >= 1_000_000
    assert {r["variant"] for r in latency} >= {"onnxruntime dynamic-int8", "onnxruntime static-int8"}
    sparse = {r["variant"]: r for r in result["details"] if r["case"] == "sparse-size"}
    assert sparse["prune"]["gzip_bytes"] < sparse["fp32"]["gzip_bytes"]
    for name in ("compress.json", "compress.png", "report.md"):
        assert (tmp_path / name).is_file()
