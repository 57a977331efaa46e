"""A backup written by Mirrored on 2 processes, killed with SIGKILL, resumes on 1 process
(Mirrored) and on 4 processes under Sharded (FSDP2): DCP reshards model and optimizer,
every step after the resume reads the same global batch, element by element, as a run
that never stopped, and the final weights equal that run's within 1e-5 relative (the
reduction order differs). A changed global batch is refused in one line.

Four launches of ``hpmodel train`` in all: the reference and the killed run (once per
module), then one per resume; the refusal runs in this process.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, hpmodel_env
from hpmodel.config import load_config
from hpmodel.data import from_tensors
from hpmodel.kernel.errors import HpmodelError
from hpmodel.runs.train import train_from_config
from hpmodel.train.backup_format import fingerprint_mismatch
from hpmodel.train.backup_world import excused, layout_problem, moved_data_state

HERE = Path(__file__).resolve().parent
STEPS_PER_EPOCH, EPOCHS, KILL_STEP = 9, 2, 10  # 576 training examples / global batch 64
CONFIG = """
seed = 3
[data]
name = "npz"
path = "{npz}"
batch_size = 32
val_fraction = 0.1
[model]
target = "resume_models:indexed_mlp"
[optimizer]
name = "adamw"
lr = 0.01
[schedule]
name = "cosine"
warmup_steps = 3
[train]
epochs = 2
progress = false
log_every_steps = 100
[strategy]
name = "mirrored"
devices = 2
device = "cpu"
[backup]
every_steps = 4
every_epoch = false
"""


def write_arrays(path: Path) -> None:
    """640 training examples whose column 0 is their index (576 train + 64 validation)."""
    generator = np.random.default_rng(0)
    features = generator.normal(size=(704, 8)).astype(np.float32)
    labels = (features[:, :4].sum(1) > 0).astype(np.int64) + 2 * (features[:, 4] > 0)
    x = np.concatenate([np.arange(704, dtype=np.float32)[:, None], features], axis=1)
    np.savez(path, x_train=x[:640], y_train=labels[:640], x_test=x[640:], y_test=labels[640:])


def train(tmp: Path, name: str, *options: str, backup: Path | None = None) -> subprocess.CompletedProcess:
    env = hpmodel_env()
    env["PYTHONPATH"] = str(HERE) + os.pathsep + env["PYTHONPATH"]
    env["INDEX_LOG"] = str(tmp / f"{name}.indices")
    settings = [f'backup.dir="{backup}"'] if backup else []
    command = [sys.executable, "-m", "hpmodel", "train", str(tmp / "run.toml"), "--out", str(tmp / name),
               *[arg for s in settings for arg in ("--set", s)], *options]
    return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)


def global_batches(tmp: Path, name: str, complete: bool = True) -> list[list[int]]:
    """The example indices of every step's global batch: rank 0's slice, then rank 1's …
    (``complete=False``: a killed run, whose ranks stopped at different steps)."""
    logs = sorted(tmp.glob(f"{name}.indices.rank*"), key=lambda p: int(p.name.rsplit("rank", 1)[1]))
    per_rank = [[json.loads(line) for line in p.read_text().splitlines()] for p in logs]
    assert not complete or len({len(lines) for lines in per_rank}) == 1, [len(x) for x in per_rank]
    return [sum(slices, []) for slices in zip(*per_rank)]


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """(folder, reference batches, reference weights, newest backup step) of a 2-process
    Mirrored run and of the same run SIGKILLed at step 10, its backups copied aside."""
    tmp = tmp_path_factory.mktemp("elsewhere")
    write_arrays(tmp / "data.npz")
    (tmp / "run.toml").write_text(CONFIG.format(npz=tmp / "data.npz"))
    reference = train(tmp, "reference")
    assert reference.returncode == 0, reference.stderr[-3000:]
    batches = global_batches(tmp, "reference")
    assert len(batches) == STEPS_PER_EPOCH * EPOCHS and all(len(b) == 64 for b in batches)

    victim = train(tmp, "victim", "--set", f"train.inject_kill=[1, {KILL_STEP}]", backup=tmp / "backup")
    assert victim.returncode != 0 and "SIGKILL" in victim.stderr, victim.stderr[-3000:]
    steps = sorted(int(p.name.split("-")[1]) for p in (tmp / "backup").iterdir()
                   if (p / "manifest.json").is_file())
    assert steps and steps[-1] in (4, 8), steps
    assert global_batches(tmp, "victim", complete=False)[:KILL_STEP] == batches[:KILL_STEP]
    return tmp, batches, load_file(str(tmp / "reference" / "model.safetensors")), steps[-1]


@pytest.mark.parametrize("name, options", [
    ("one", ["--devices", "1", "--set", "data.batch_size=64"]),
    # Another world size and another strategy at once, to keep the suite at four launches.
    ("sharded-four", ["--strategy", "sharded", "--devices", "4", "--set", "train.hold_global_batch=true",
                      "--set", "data.batch_size=64"]),
])
def test_resume_elsewhere_continues_the_global_order_and_the_weights(killed, name, options):
    tmp, reference, expected, saved_step = killed
    backup = tmp / f"backup-{name}"
    shutil.copytree(tmp / "backup", backup)
    resumed = train(tmp, name, *options, backup=backup)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"step {saved_step}, written by Mirrored on 2 process(es), resharded" in resumed.stderr
    summary = json.loads((tmp / name / "summary.json").read_text())
    assert (summary["resumed_at_step"], summary["steps"]) == (saved_step, STEPS_PER_EPOCH * EPOCHS)
    assert global_batches(tmp, name) == reference[saved_step:]  # element by element, in order
    actual = load_file(str(tmp / name / "model.safetensors"))
    assert actual.keys() == expected.keys()
    for key in expected:
        error = (actual[key] - expected[key]).norm() / expected[key].norm()
        assert error <= 1e-5, (key, float(error))


def test_a_changed_global_batch_is_refused_in_one_line(killed, monkeypatch):
    tmp, _, _, saved_step = killed
    backup = tmp / "backup-refused"
    shutil.copytree(tmp / "backup", backup)
    monkeypatch.syspath_prepend(str(HERE))
    cfg = load_config(tmp / "run.toml", overrides=[f'backup.dir="{backup}"', 'strategy.name="one-device"',
                                                     "strategy.devices=1"])
    with pytest.raises(HpmodelError) as error:  # 32 × 1 replica is not the backup's 64
        train_from_config(cfg, tmp / "refused")
    message = str(error.value)
    assert "\n" not in message and "global batch of 64" in message and "is 32" in message, message
    assert (backup / f"step-{saved_step:09d}" / "manifest.json").is_file()  # nothing removed


# -- the decisions alone, without launching anything -------------------------------------------
MIRRORED_2 = {"strategy": "Mirrored", "world_size": 2, "global_batch": 64}


@pytest.mark.parametrize("here, refused", [
    ({"strategy": "Mirrored", "world_size": 2, "global_batch": 64}, None),
    ({"strategy": "Sharded", "world_size": 4, "global_batch": 64}, None),
    ({"strategy": "OneDevice", "world_size": 1, "global_batch": 64}, None),
    ({"strategy": "Mirrored", "world_size": 1, "global_batch": 32}, "global batch of 64"),
    ({"strategy": "PipelineParallel", "world_size": 4, "global_batch": 64}, "cannot load it"),
    ({"strategy": "Mirrored", "world_size": 4, "global_batch": None}, "cannot load it"),
])
def test_which_layouts_may_load_a_mirrored_backup(here, refused):
    problem = layout_problem(MIRRORED_2, here, Path("ckpt/step-000000008"))
    assert problem is None if refused is None else (refused in problem and "\n" not in problem), problem


def test_an_older_backup_without_a_layout_resumes_only_where_it_was_written():
    old = {"world_size": 2}  # written before backups stored strategy and global batch
    assert layout_problem(old, MIRRORED_2, Path("f")) is None
    assert "cannot load it" in layout_problem(old, {**MIRRORED_2, "world_size": 1}, Path("f"))


def test_placement_and_batch_settings_are_excused_the_rest_is_not():
    stored = {"config": {"strategy.name": "mirrored", "strategy.devices": 2, "strategy.bucket_mb": 25,
                         "data.batch_size": 32, "model.width": 16}}
    current = {"config": {"strategy.name": "sharded", "strategy.devices": 4, "strategy.cpu_offload": False,
                          "data.batch_size": 16, "model.width": 32}}
    differences = fingerprint_mismatch(stored, current)
    assert excused(differences, stored, current, MIRRORED_2) == ["config.model.width"]
    unknown_batch = {**MIRRORED_2, "global_batch": None}  # then the batch size must not change
    assert "config.data.batch_size" in excused(differences, stored, current, unknown_batch)


def test_the_data_position_moves_to_a_pipeline_sharded_otherwise():
    saved = {"version": 1, "epoch": 1, "position": 5, "seeds": [7], "stages": ["source", "filter", "batch"],
             "global_batch": 8}
    here = {"version": 1, "epoch": 0, "position": 0, "seeds": [3],
            "stages": ["source", "filter", "shard", "batch"], "global_batch": 8}
    assert moved_data_state(saved, here) == {**here, "epoch": 1, "position": 5, "seeds": [7]}
    with pytest.raises(HpmodelError, match="stages"):
        moved_data_state(saved, {**here, "stages": ["source", "map", "batch"]})


def test_a_pipeline_states_its_global_batch_at_any_number_of_ranks():
    whole = from_tensors(torch.arange(100.0)).shuffle(100, seed=1).batch(64)
    filtered = from_tensors(torch.arange(100.0)).filter(lambda x: True).batch(8)  # a shard stage
    for pipe, size in ((whole, 64), (filtered, 8)):
        assert [pipe.shard(n, n - 1, mode="batch").state_dict()["global_batch"] for n in (1, 2, 4)] == [size] * 3
        assert pipe.state_dict()["global_batch"] == size
