"""Run directories: a finished run is kept without --overwrite, a failing run changes
nothing already written, lock files on --out and backup.dir say who holds them, and
metrics.jsonl holds each step once after a resume."""

import json
import os
import socket
import subprocess
import sys

import pytest

from conftest import ROOT, hpmodel_env
from hpmodel.cli import main
from hpmodel.kernel.locks import LOCK_NAME, DirectoryLock
from hpmodel.train.callbacks import MetricsLogger

TINY = ["--set", 'model.name="mlp"', "--set", "model.width=8", "--set", "model.depth=1",
        "--set", "train.progress=false", "--set", "train.max_steps=6", "--set", "train.log_every_steps=1"]


def train(out, *extra):
    return main(["train", "examples/digits.toml", "--out", str(out), *TINY, *extra])


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def files_of(run):
    return {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}


def test_a_finished_run_needs_overwrite_and_a_failing_run_changes_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    assert train(run) == 0
    before = files_of(run)
    assert {"config.toml", "metrics.jsonl", "model.safetensors", "summary.json"} <= set(before)
    assert train(run, "--set", "train.max_steps=3") == 2
    assert "holds a finished run (summary.json): pass --overwrite" in one_line(capsys)
    # lr = 1e6 makes the loss non-finite: the run stops, and the finished run is as it was
    assert train(run, "--overwrite", "--set", "optimizer.lr=1e6", "--set", "train.max_steps=30") == 2
    assert files_of(run) == before
    assert train(run, "--overwrite", "--set", "train.max_steps=3") == 0
    assert json.loads((run / "summary.json").read_text())["steps"] == 3
    assert not (run / ".partial").exists() and not (run / LOCK_NAME).exists()


@pytest.mark.parametrize("where", ["out", "backup"])
def test_a_second_run_on_a_locked_directory_says_who_holds_it(tmp_path, capsys, where):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        locked = tmp_path / where
        locked.mkdir()
        (locked / LOCK_NAME).write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(),
                                                    "command": "hpmodel train other.toml",
                                                    "started": "2026-12-01 10:00:00"}))
        code = train(tmp_path / "out", "--set", f'backup.dir="{tmp_path / "backup"}"')
        message = one_line(capsys)
        assert code == 2 and f"is in use by pid {holder.pid}" in message
        assert "hpmodel train other.toml" in message and (locked / LOCK_NAME).exists()
        assert not (tmp_path / "out" / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    tmp_path.joinpath(LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    with DirectoryLock(tmp_path, "run directory", fix="give another --out") as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
        with pytest.raises(Exception, match="in use by this process"):
            DirectoryLock(tmp_path, "run directory", fix="give another --out").acquire()
    assert not lock.path.exists()


@pytest.mark.parametrize("case, expected", [
    ("out-file", "--out '{t}/file' is a file, not a directory"),
    ("backup-file", "backup.dir '{t}/file' is a file, not a directory"),
    ("backup-under-file", "backup.dir '{t}/file/sub' cannot be created"),
])
def test_out_and_backup_dir_that_cannot_be_directories(tmp_path, capsys, case, expected):
    (tmp_path / "file").write_text("precious")
    out = tmp_path / ("file" if case == "out-file" else "out")
    backup = {"backup-file": tmp_path / "file", "backup-under-file": tmp_path / "file" / "sub"}.get(case)
    extra = ["--set", f'backup.dir="{backup}"'] if backup else []
    assert train(out, *extra) == 2
    assert expected.format(t=tmp_path) in one_line(capsys)
    assert (tmp_path / "file").read_text() == "precious"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_an_unwritable_backup_dir_is_one_line(tmp_path, capsys):
    backup = tmp_path / "ro"
    backup.mkdir(mode=0o500)
    assert train(tmp_path / "out", "--set", f'backup.dir="{backup}"') == 2
    assert "is not writable" in one_line(capsys)


class FakeStrategy:
    is_main = True


class FakeState:
    strategy, epoch = FakeStrategy(), 0

    def __init__(self, step):
        self.global_step = step


def test_metrics_after_a_resume_hold_each_record_once(tmp_path):
    first = MetricsLogger(tmp_path, tensorboard=False)
    first.on_train_begin(FakeState(0))
    for step in range(1, 8):  # killed after step 7; the backup was at step 4, an epoch's end
        first.on_step_end(FakeState(step), {"loss": float(step)})
        if step == 4:
            first.on_epoch_end(FakeState(4), {"train_loss": 1.0})
    with (tmp_path / "metrics.jsonl").open("a") as out:
        out.write('{"kind": "step", "st')  # the line the kill cut
    resumed = MetricsLogger(tmp_path, tensorboard=False)
    resumed.on_train_begin(FakeState(0))
    resumed.on_epoch_begin(FakeState(4))  # the backup restored step 4
    resumed.on_epoch_end(FakeState(4), {"train_loss": 1.0})  # an epoch's end redone: not twice
    for step in range(5, 9):
        resumed.on_step_end(FakeState(step), {"loss": float(step)})
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r["kind"] == "step"]
    assert steps == list(range(1, 9))
    assert [r["step"] for r in records if r["kind"] == "epoch"] == [4]


def test_a_killed_run_resumes_with_metrics_once_and_its_files_in_place(tmp_path):
    out, backup = tmp_path / "run", tmp_path / "backup"
    args = [sys.executable, "-m", "hpmodel", "train", "examples/digits.toml", "--out", str(out), *TINY,
            "--set", "train.max_steps=10", "--set", f'backup.dir="{backup}"', "--set", "backup.every_steps=3",
            "--set", "train.inject_kill=[0, 7]"]
    killed = subprocess.run(args, env=hpmodel_env(), cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (out / "metrics.jsonl").exists() and (out / ".partial" / "metrics.jsonl").exists()
    assert (out / LOCK_NAME).exists()  # a SIGKILLed run leaves its lock: stale, taken over
    # as after a restart by the launcher: the same config, KillOnce does not fire again
    env = {**hpmodel_env(), "TORCHELASTIC_RESTART_COUNT": "1"}
    resumed = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    # the step-6 backup's manifest is written by a background thread the kill may beat
    assert json.loads((out / "summary.json").read_text())["resumed_at_step"] in (3, 6)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "step"] == list(range(1, 11))
