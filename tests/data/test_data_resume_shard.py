"""Exact resume (state_dict / load_state_dict) and exactly-once sharding across ranks."""

from __future__ import annotations

import io
import json

import pytest
import torch

import hpmodel.data as hd
from data_helpers import plain, run_epoch

N = 37
X = torch.arange(N)


def indexable(calls=None):
    return (hd.from_tensors((X, X * 10)).shuffle(1000, seed=5)
            .map(lambda e: (e[0] + 100, e[1]), num_parallel_calls=calls).batch(4).prefetch(2))


def streaming(calls=None):
    return (hd.from_dataset(lambda: iter(range(N))).map(lambda v: v * 2, num_parallel_calls=calls)
            .shuffle(8, seed=9).filter(lambda v: v % 3 != 0).batch(3))


def cached(calls=None):
    return hd.from_tensors(X).map(int, num_parallel_calls=calls).cache().shuffle(10, seed=1)


def processes(calls=None):
    workers = 2 if calls in (None, hd.AUTOTUNE) else calls
    return (hd.from_tensors((X, X * 10)).shuffle(1000, seed=6)
            .map(lambda e: (e[0] + 100, e[1]), num_parallel_calls=workers, use_processes=True)
            .batch(4))


BUILDERS = [indexable, streaming, cached, processes]


def roundtrip(state):
    """The state through JSON and through torch.save/load(weights_only=True)."""
    state = json.loads(json.dumps(state))
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def take_then_save(pipe, n, epoch):
    pipe.set_epoch(epoch)
    it = iter(pipe)
    got = [plain(next(it)) for _ in range(n)]
    state = roundtrip(pipe.state_dict())
    it.close()
    return got, state


def resumed(build, state, calls, n=None):
    pipe = build(calls)
    pipe.load_state_dict(state)
    pipe.set_epoch(state["epoch"])  # the Trainer's call; must keep the position
    it = iter(pipe)
    out = []
    for item in it:
        out.append(plain(item))
        if n is not None and len(out) == n:
            return out, roundtrip(pipe.state_dict())
    return out, roundtrip(pipe.state_dict())


@pytest.mark.parametrize("build", BUILDERS)
@pytest.mark.parametrize("cut", [0, 1, 5])
def test_resume_mid_epoch_yields_exactly_the_rest(build, cut):
    reference = run_epoch(build(), epoch=2)
    got, state = take_then_save(build(), cut, epoch=2)
    assert state["epoch"] == 2 and state["position"] == cut
    rest, _ = resumed(build, state, calls=3)  # a different thread count than before
    assert got + rest == reference


@pytest.mark.parametrize("build", BUILDERS)
def test_resume_twice_in_one_epoch(build):
    reference = run_epoch(build(), epoch=1)
    first, state = take_then_save(build(2), 2, epoch=1)
    second, state = resumed(build, state, calls=None, n=3)
    assert state["position"] == 5
    rest, _ = resumed(build, state, calls=hd.AUTOTUNE)
    assert first + second + rest == reference


@pytest.mark.parametrize("build", BUILDERS)
def test_resume_at_epoch_boundary_and_before_first_element(build):
    pipe = build()
    epoch0 = run_epoch(pipe, epoch=0)
    state = roundtrip(pipe.state_dict())
    assert (state["epoch"], state["position"]) == (1, 0)
    reference1 = run_epoch(build(), epoch=1)
    assert resumed(build, state, calls=2)[0] == reference1
    fresh = build()
    before = roundtrip(fresh.state_dict())  # before the first element
    assert resumed(build, before, calls=2)[0] == epoch0


def test_unseeded_shuffle_resumes_through_the_saved_seed():
    build = lambda calls=None: hd.from_tensors(X).shuffle(100).batch(5)  # noqa: E731
    pipe = build()
    got, state = take_then_save(pipe, 3, epoch=0)
    pipe2 = build()
    pipe2.load_state_dict(state)
    rest = run_epoch(pipe2)
    assert sorted(v for b in got + rest for v in b) == list(range(N))


def test_load_state_from_other_pipeline_is_refused():
    state = indexable().state_dict()
    with pytest.raises(ValueError, match="different pipeline"):
        streaming().load_state_dict(state)


def _flatten(batches):
    out = []
    for b in batches:
        out.extend(b if isinstance(b, list) and b and isinstance(b[0], int) else [b])
    return out


@pytest.mark.parametrize("build", [
    lambda: hd.from_tensors(X).shuffle(100, seed=2).map(int, num_parallel_calls=2),
    lambda: hd.from_dataset(lambda: iter(range(N))).shuffle(5, seed=2).batch(4).unbatch(),
    lambda: hd.from_tensors(X).filter(lambda v: int(v) % 2 == 0).map(int),
])
@pytest.mark.parametrize("epoch", [0, 1])
def test_exactly_once_per_epoch_across_two_ranks(build, epoch):
    whole = sorted(plain(v) for v in run_epoch(build(), epoch=epoch))
    parts = [run_epoch(build().shard(2, rank), epoch=epoch) for rank in range(2)]
    assert sorted(parts[0] + parts[1]) == whole
    assert not set(parts[0]) & set(parts[1])
    assert abs(len(parts[0]) - len(parts[1])) <= 1


@pytest.mark.parametrize("stream", [False, True])
def test_batch_mode_splits_each_global_batch_into_contiguous_slices(stream):
    source = (hd.from_dataset(lambda: iter(range(40))) if stream
              else hd.from_tensors(torch.arange(40)))
    build = lambda: source.shuffle(50, seed=4).map(int).batch(8, drop_remainder=True)  # noqa: E731
    global_batches = run_epoch(build(), epoch=3)
    ranks = [run_epoch(build().shard(2, r, mode="batch"), epoch=3) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(global_batches) == 5
    for g, b0, b1 in zip(global_batches, *ranks):
        assert b0 == g[:4] and b1 == g[4:]
    if not stream:
        assert len(build().shard(2, 1, mode="batch")) == 5


def test_shard_resume_on_one_rank():
    build = lambda: hd.from_tensors(X).shuffle(100, seed=1).map(int).shard(2, 1)  # noqa: E731
    reference = run_epoch(build(), epoch=1)
    got, state = take_then_save(build(), 4, epoch=1)
    pipe = build()
    pipe.load_state_dict(state)
    assert got + run_epoch(pipe) == reference


def test_shard_argument_errors():
    with pytest.raises(ValueError, match="not divisible"):
        hd.from_tensors(X).batch(5).shard(2, 0, mode="batch")
    with pytest.raises(ValueError, match="shard index"):
        hd.from_tensors(X).shard(2, 2)
    with pytest.raises(ValueError, match="already sharded"):
        hd.from_tensors(X).shard(2, 0).shard(2, 1)
