"""The parameter server resumes its backup only when it was written from the same model,
data, optimizer and schedule (the fingerprint BackupAndRestore uses); a stale backup is
refused with one line instead of resuming zero steps next to new weights."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import digits_mlp_toml, run_cli
from hpmodel.config import OptimizerConfig, load_config
from hpmodel.kernel.errors import HpmodelError
from hpmodel.parameter_server.config import ParameterServerConfig
from hpmodel.parameter_server.server import ServerSpec, ShardServer
from hpmodel.runs.parameter_server import backup_fingerprint
from hpmodel.train.optim import optimizer_factory

CONFIG = digits_mlp_toml(strategy=False, max_steps=12)


def server(backup_dir, fingerprint) -> ShardServer:
    torch.manual_seed(0)
    return ShardServer(ServerSpec(index=0, tensors={"w": torch.randn(4, 3)}, backup_dir=str(backup_dir),
                                  optimizer_factory=optimizer_factory(OptimizerConfig(name="adamw", lr=0.1)),
                                  fingerprint=fingerprint))


def test_a_backup_resumes_only_under_its_own_fingerprint(tmp_path):
    first = server(tmp_path, {"model.width": 16, "optimizer.lr": 0.003})
    first.push(0, {"w": torch.ones(4, 3)}, read_version=0)
    first.write_backup()
    again = server(tmp_path, {"model.width": 16, "optimizer.lr": 0.003})
    assert again.version == 1 and again.applied == {0}
    with pytest.raises(HpmodelError, match=r"another configuration \(differs in optimizer\.lr\): delete"):
        server(tmp_path, {"model.width": 16, "optimizer.lr": 0.01})
    meta = tmp_path / "server0.json"
    stored = json.loads(meta.read_text())
    del stored["fingerprint"]  # written by an hpmodel that stored none
    meta.write_text(json.dumps(stored))
    with pytest.raises(HpmodelError, match="it has no fingerprint"):
        server(tmp_path, {"model.width": 16})


def test_the_fingerprint_holds_model_data_optimizer_not_progress(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(CONFIG)
    base = backup_fingerprint(load_config(path), ParameterServerConfig())
    assert base["model.width"] == 16 and base["optimizer.lr"] == 0.003 and base["data.batch_size"] == 32
    assert base == backup_fingerprint(load_config(path, ["train.progress=true", "train.epochs=3"]),
                                      ParameterServerConfig(connect_timeout_s=90))
    assert base != backup_fingerprint(load_config(path, ["model.width=32"]), ParameterServerConfig())


@pytest.mark.slow
def test_a_stale_backup_is_refused_through_the_cli(tmp_path):
    config = tmp_path / "ps.toml"
    config.write_text(CONFIG)
    out = tmp_path / "ps"
    args = ["train", str(config), "--strategy", "parameter-server", "--workers", "1", "--servers", "1",
            "--set", "strategy.connect_timeout_s=90", "--set",
            f'strategy.backup_dir="{tmp_path / "ps-backup"}"', "--overwrite", "--out", str(out)]
    run_cli(*args, timeout=240, check=True)
    stale = run_cli(*args, "--set", "optimizer.lr=0.01", timeout=240)
    assert stale.returncode == 2, stale.stderr[-3000:]
    last = stale.stderr.strip().splitlines()[-1]
    assert "was written by another configuration (differs in optimizer.lr)" in last
    assert "Traceback" not in stale.stderr
    same = run_cli(*args, timeout=240, check=True)
    assert json.loads((out / "summary.json").read_text())["resumed_steps"] == 12, same.stderr[-2000:]
