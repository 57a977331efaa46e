"""``hpmodel train`` on text: byte-level token shards of real files, a GPT with dict batches
and the causal-lm task, the gzip baseline beside its bits per byte, and a SIGKILLed run
that resumes bit-exactly."""

import json
import signal
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, assert_same_weights, gpt_toml, hpmodel_env, stdlib_text_shards
from hpmodel.datasets.text import gzip_bits_per_byte


def corpus(tmp_path: Path) -> Path:
    return stdlib_text_shards(tmp_path / "shards", 6, seq_len=32, val_fraction=0.3,
                              measures={"gzip_bits_per_byte": gzip_bits_per_byte})


def run(tmp_path, name, *sets):
    config = tmp_path / "gpt.toml"
    config.write_text(gpt_toml(corpus_dir(tmp_path), width=32, depth=2, seq_len=32, batch_size=16,
                               lr=0.003, max_steps=12, log_every=4, cpu=False))
    cmd = [sys.executable, "-m", "hpmodel", "train", str(config), "--out", str(tmp_path / name)]
    for item in sets:
        cmd += ["--set", item]
    return subprocess.run(cmd, env=hpmodel_env(), cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def corpus_dir(tmp_path):
    return tmp_path / "shards"


def test_gpt_on_text_reports_bits_per_byte_and_resumes_bit_exactly(tmp_path):
    corpus(tmp_path)
    reference = run(tmp_path, "reference")
    assert reference.returncode == 0, reference.stderr[-2000:]
    summary = json.loads((tmp_path / "reference" / "summary.json").read_text())
    assert summary["steps"] == 12 and summary["test_tokens"] > 0
    assert summary["test_bits_per_byte"] > 0 and summary["baseline_gzip_bits_per_byte"] > 0

    backup = f'backup.dir="{tmp_path / "backup"}"'
    killed = run(tmp_path, "resumed", backup, "backup.every_steps=3", "train.inject_kill=[0, 8]")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    rerun = run(tmp_path, "resumed", backup, "backup.every_steps=3")
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resumed from backup" in rerun.stderr
    assert_same_weights(tmp_path / "reference", tmp_path / "resumed")
