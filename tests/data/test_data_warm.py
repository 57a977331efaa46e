"""Warm start: the next epoch prepared during this one's tail (real processes and threads)."""

from __future__ import annotations

import os

import pytest
import torch

import hpmodel as hm
import hpmodel.data as hd
from data_helpers import plain, run_epoch
from hpmodel.data.core import Context, Node
from hpmodel.data.warm import PreparedEpoch, lookahead

X, Y = torch.arange(96.0).view(48, 2), torch.arange(48)


def with_pid(element):
    x, y = element
    return x * 2, y, torch.tensor(os.getpid())


def processes(warm: bool) -> hd.Pipeline:
    pipe = (hd.from_tensors((X, Y)).shuffle(48, seed=3)
            .map(with_pid, num_parallel_calls=2, use_processes=True).batch(4).prefetch(2))
    return pipe.with_options(warm_start=warm)


def labels(pipe, epoch=None) -> list:
    return [b[1] for b in run_epoch(pipe, epoch)]


def test_prepared_epochs_equal_cold_ones_and_reuse_the_same_workers():
    warm, cold = processes(True), processes(False)
    pids = []
    for epoch in range(3):
        batches = run_epoch(warm)  # the pipeline advances its epoch by itself
        assert [b[1] for b in batches] == labels(cold, epoch)
        assert warm.stats()["warm_start"] == (epoch > 0)
        assert not cold.stats()["warm_start"]
        pids.append({p for b in batches for p in b[2]})
    assert pids[0] == pids[1] == pids[2] and len(pids[0]) <= 2  # nothing forked again
    warm.close()


def test_a_different_epoch_or_a_resumed_position_drops_the_prepared_epoch():
    warm, cold = processes(True), processes(False)
    run_epoch(warm, 0)  # epoch 1 is now prepared
    assert labels(warm, 5) == labels(cold, 5) and not warm.stats()["warm_start"]
    saved = None
    for i, _ in enumerate(warm):  # epoch 6; epoch 7 gets prepared near the end
        if i == 2:
            saved = warm.state_dict()
    warm.load_state_dict(saved)
    assert [b[1] for b in (plain(b) for b in warm)] == labels(cold, 6)[3:]
    assert not warm.stats()["warm_start"]
    warm.close()


def test_a_filling_cache_is_never_read_twice_at_once():
    calls = []

    def count(v):
        calls.append(int(v))
        return int(v)

    # the cache fills as the consumer reads, so it is incomplete when epoch 1 would start
    pipe = (hd.from_tensors(torch.arange(40)).shuffle(40, seed=1)
            .map(count, num_parallel_calls=2).cache().with_options(warm_start=True))
    first = run_epoch(hd.from_tensors(torch.arange(40)).shuffle(40, seed=1), 0)
    assert run_epoch(pipe) == first
    assert run_epoch(pipe) == first and not pipe.stats()["warm_start"]
    assert run_epoch(pipe) == first and pipe.stats()["warm_start"]  # complete by then
    assert sorted(calls) == list(range(40))  # the map ran once per element, ever


def test_two_iterations_share_the_process_workers_without_mixing_answers():
    pipe = processes(False)
    expected = labels(processes(False), 0)
    pipe.set_epoch(0)
    first, second = iter(pipe), iter(pipe)
    pairs = list(zip(first, second))
    assert [plain(a[1]) for a, _ in pairs] == expected == [plain(b[1]) for _, b in pairs]
    pipe.close()


class _Failing(Node):
    kind = "boom"

    def iterate(self, ctx, skip=0):
        raise ValueError("shard 3 is corrupt")
        yield  # noqa: unreachable - makes this a generator


class _Counting(Node):
    kind = "count"
    closed = False

    def iterate(self, ctx, skip=0):
        try:
            yield from range(ctx.epoch, ctx.epoch + 100)
        finally:
            _Counting.closed = True


def test_a_prepared_epoch_raises_its_error_where_it_is_consumed_and_closes_when_dropped():
    prepared = PreparedEpoch(1, _Failing(), Context(epoch=1))
    assert prepared.matches(1, prepared.node, 0) and not prepared.matches(1, prepared.node, 2)
    with pytest.raises(ValueError, match="shard 3"):
        next(prepared.take())
    dropped = PreparedEpoch(2, _Counting(), Context(epoch=2))
    dropped.thread.join()
    dropped.drop()
    assert _Counting.closed
    assert list(PreparedEpoch(4, _Counting(), Context(epoch=4)).take())[:2] == [4, 5]
    assert lookahead(100) == 8 and lookahead(3) == 1


def test_trainer_over_warm_epochs_equals_training_over_a_sequential_pipeline():
    torch.manual_seed(0)
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))

    def ident(element):
        return element

    def fit(pipe):
        torch.manual_seed(1)
        model = torch.nn.Linear(6, 3)
        trainer = hm.Trainer(strategy=hm.get_strategy("one-device", device="cpu"),
                             progress=False)
        trainer.fit(model, torch.optim.SGD(model.parameters(), lr=0.1), pipe, epochs=3)
        return model.weight.detach().clone(), pipe

    source = hd.from_tensors((x, y)).shuffle(64, seed=2)
    warm, pipe = fit(source.map(ident, num_parallel_calls=2, use_processes=True)
                     .batch(8).prefetch(2))
    sequential, _ = fit(source.map(ident).batch(8))
    assert torch.equal(warm, sequential)


class _SeenWarm(hm.Callback):
    def __init__(self):
        self.seen = []

    def on_epoch_end(self, state, logs):
        self.seen.append(state.train_data.stats()["warm_start"])


@pytest.mark.parametrize("chosen, expected", [(None, [False, True, True]),
                                              (False, [False, False, False])])
def test_the_trainer_warms_epochs_nobody_chose_for_and_leaves_the_choice_as_it_was(chosen, expected):
    x, y = torch.randn(48, 4), torch.randint(0, 2, (48,))
    pipe = (hd.from_tensors((x, y)).map(lambda e: e, num_parallel_calls=2, use_processes=True)
            .batch(8).prefetch(2))
    pipe.warm_start = chosen
    seen = _SeenWarm()
    model = torch.nn.Linear(4, 2)
    trainer = hm.Trainer(strategy=hm.get_strategy("one-device", device="cpu"), progress=False,
                         callbacks=[seen])
    trainer.fit(model, torch.optim.SGD(model.parameters(), lr=0.1), pipe, epochs=3)
    assert seen.seen == expected and pipe.warm_start is chosen
    assert pipe._prepared is None  # nothing prepared after the last epoch is left behind


def test_a_resume_inside_the_tail_prepares_the_next_epoch_at_once():
    warm, cold = processes(True), processes(False)
    warm.load_state_dict({**warm.state_dict(), "epoch": 2, "position": 11})  # 12 batches
    assert [plain(b[1]) for b in warm] == labels(cold, 2)[11:]
    assert [plain(b[1]) for b in warm] == labels(cold, 3) and warm.stats()["warm_start"]
    warm.close()


def test_a_read_stopped_mid_message_stops_the_workers_instead_of_hanging(monkeypatch):
    from hpmodel.data import workers

    runner = workers.ProcessRunner(batch_of, workers=1)
    assert runner.claim()
    real = workers.read_message

    def interrupted(source, pinned):
        source.read(5)  # part of the message read, then the read stops
        raise MemoryError("pinned memory exhausted")

    monkeypatch.setattr(workers, "read_message", interrupted)
    with pytest.raises(MemoryError):
        runner.result(runner.submit([1, 2]))
    monkeypatch.setattr(workers, "read_message", real)
    handle = runner.submit([3]) if not runner.closed else (99, 0)
    with pytest.raises(RuntimeError, match="stopped"):
        runner.result(handle)
    assert not runner.claim()  # a broken runner is never reused
    runner.release()


# --- results read out of band, into pinned memory when a CUDA copy follows -------------
def test_out_of_band_frames_round_trip_and_report_a_torn_message():
    import io
    import pickle

    import numpy as np

    from hpmodel.data.frames import encode, read_message, send_message

    r, w = os.pipe()
    with io.FileIO(r, "r") as reader, io.FileIO(w, "w") as writer:
        arrays = [np.arange(12, dtype=np.float32).reshape(3, 4), np.arange(3)[::2]]  # 2nd: strided
        send_message(writer, ("ok", arrays, 0.5, 2))
        send_message(writer, ("error", ValueError("bad"), "tb"))  # no buffers at all
        head, buffers = read_message(reader, pinned=False)
        kind, out, _, _ = pickle.loads(head, buffers=buffers)
        assert kind == "ok" and [a.tolist() for a in out] == [a.tolist() for a in arrays]
        assert out[0].flags.writeable  # torch.from_numpy takes it without a warning
        head, buffers = read_message(reader, pinned=False)
        assert buffers == [] and pickle.loads(head, buffers=buffers)[0] == "error"
        parts = encode(("ok", np.zeros(1000)))
        writer.write(parts[0])
        writer.write(bytes(parts[1])[:100])  # the worker died mid-buffer
        writer.close()
        with pytest.raises(EOFError):
            read_message(reader, pinned=False)


def batch_of(chunk):
    return [torch.stack([torch.as_tensor(v) for v in chunk])]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_results_arrive_page_locked_when_a_cuda_copy_follows():
    from hpmodel.data.workers import ProcessRunner

    runner = ProcessRunner(batch_of, workers=2)
    try:
        runner.pinned = True
        (out,), _, _ = runner.result(runner.submit(list(range(64))))
        assert out.is_pinned() and out.tolist() == list(range(64))
        runner.pinned = False
        (out,), _, _ = runner.result(runner.submit(list(range(8))))
        assert not out.is_pinned()
    finally:
        runner.close()
    pipe = (hd.from_tensors((X, Y)).map(lambda e: e, num_parallel_calls=2, use_processes=True)
            .batch(8).prefetch_to_device("cuda").with_options(warm_start=True))
    for _ in range(2):
        got = [(xb.device.type, yb.tolist()) for xb, yb in pipe]
        assert [g[1] for g in got] == [Y[i:i + 8].tolist() for i in range(0, 48, 8)]
        assert {g[0] for g in got} == {"cuda"}
    pipe.close()
