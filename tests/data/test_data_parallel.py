"""Process workers, AUTOTUNE and the statistics of hpmodel.data (real threads/processes)."""

from __future__ import annotations

import os
import signal
import stat
import time

import pytest
import torch

import hpmodel.data as hd
from data_helpers import run_epoch
from hpmodel.data.parallel import Tuner
from hpmodel.data.workers import ProcessRunner

X = torch.arange(64)


def test_tuner_raises_while_starved_and_reverts_a_useless_raise():
    tuner = Tuner(start=1, low=1, high=8, period=0.0)
    for _ in range(4):
        tuner.record(waited=1.0)  # starved: raise
    assert tuner.value > 1
    raised = tuner.value
    time.sleep(0.01)
    for _ in range(4):
        tuner.record(waited=1.0)  # the rate did not improve: back off
    assert tuner.value < raised


def test_autotuned_map_and_prefetch_keep_order_and_report_choices():
    def slow(v):
        time.sleep(0.002)  # releases the GIL, so more threads help
        return int(v)

    pipe = hd.from_tensors(X).map(slow, num_parallel_calls=hd.AUTOTUNE).prefetch(hd.AUTOTUNE)
    assert run_epoch(pipe) == list(range(64))
    stages = {s["stage"]: s for s in pipe.stats()["stages"]}
    assert stages["map"]["workers"] >= 1 and stages["map"]["window"] >= 1
    assert stages["prefetch"]["buffer_size"] >= 1


def test_cpu_budget_bounds_autotuned_workers():
    pipe = hd.from_tensors(X).map(int, num_parallel_calls=hd.AUTOTUNE).with_options(cpu_budget=1)
    run_epoch(pipe)
    assert pipe.stats()["stages"][1]["workers"] == 1


def test_process_workers_persist_across_epochs_and_survive_an_aborted_epoch():
    pipe = hd.from_tensors((X, X)).shuffle(64, seed=0).map(
        lambda e: (e[0] * 2, os.getpid()), num_parallel_calls=2, use_processes=True).batch(8)
    first = run_epoch(pipe, epoch=0)
    pids = {p for batch in first for p in batch[1]}
    it = iter(pipe)  # abort the next epoch after one batch
    next(it)
    it.close()
    again = run_epoch(pipe, epoch=0)
    assert [b[0] for b in again] == [b[0] for b in first]
    assert {p for batch in again for p in batch[1]} == pids and os.getpid() not in pids


def test_process_worker_errors_and_deaths_are_reported():
    def fail(v):
        if int(v) == 9:
            raise KeyError("element 9 is bad")
        return v

    with pytest.raises(KeyError, match="element 9"):
        run_epoch(hd.from_tensors(X).map(fail, num_parallel_calls=2, use_processes=True))

    def die(v):
        if int(v) == 5:
            os.kill(os.getpid(), signal.SIGKILL)
        return v

    with pytest.raises(RuntimeError, match="exited unexpectedly"):
        run_epoch(hd.from_tensors(X).map(die, num_parallel_calls=2, use_processes=True))


def test_stats_report_stage_times_and_input_bound_fraction():
    pipe = hd.from_tensors(X).map(lambda v: time.sleep(0.001) or v).batch(8)
    for _ in pipe:
        time.sleep(0.002)  # the consumer's own work
    stats = pipe.stats()
    assert [s["stage"] for s in stats["stages"]] == ["source", "map", "batch"]
    map_stage = stats["stages"][1]
    assert map_stage["elements"] == 64 and map_stage["busy_seconds"] >= 0.05
    assert 0.3 < stats["input_bound_fraction"] < 1.0
    assert stats["elements"] == 8 and stats["wall_seconds"] >= stats["wait_seconds"]


def test_process_workers_draw_different_random_numbers():
    pipe = hd.from_tensors(X).map(lambda v: float(torch.rand(())), num_parallel_calls=2,
                                  use_processes=True, chunk_size=1)
    draws = run_epoch(pipe)
    assert len(set(draws)) == len(draws)



def _sockets(pid: int) -> set[str]:
    """The sockets process ``pid`` has open (``socket:[inode]`` links under /proc)."""
    folder = f"/proc/{pid}/fd"
    links = set()
    for name in os.listdir(folder):
        try:
            links.add(os.readlink(os.path.join(folder, name)))
        except OSError:  # closed meanwhile
            continue
    return {link for link in links if link.startswith("socket:")}


def _double_all(chunk):
    return [x * 2 for x in chunk]


def test_process_worker_pipes_are_anonymous_fifos_and_nothing_listens():
    """The pickled messages between map workers travel only over anonymous pipes: no
    socket or named path another process could write into (the trust boundary of the
    ``pickle.loads`` calls in hpmodel.data.workers)."""
    before = _sockets(os.getpid())
    runner = ProcessRunner(_double_all, workers=2)
    try:
        assert runner.result(runner.submit([1, 2, 3]))[0] == [2, 4, 6]
        for connection in runner.tasks + runner.results:
            assert stat.S_ISFIFO(os.fstat(connection.fileno()).st_mode)
        assert _sockets(os.getpid()) <= before
        for proc in runner.procs:  # a forked worker holds only sockets it inherited
            assert _sockets(proc.pid) <= before
    finally:
        runner.close()
