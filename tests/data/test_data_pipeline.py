"""Ordering, determinism, cardinality and the chainable stages of hpmodel.data."""

from __future__ import annotations

import pytest
import torch

import hpmodel.data as hd
from data_helpers import plain, run_epoch

X = torch.arange(40)
Y = X * 10


def test_from_tensors_slices_and_batches():
    pipe = hd.from_tensors((X, Y)).batch(16)
    batches = list(pipe)
    assert len(pipe) == 3 == len(batches)
    assert batches[0][0].tolist() == list(range(16))
    assert batches[2][1].tolist() == [v * 10 for v in range(32, 40)]
    assert len(hd.from_tensors((X, Y)).batch(16, drop_remainder=True)) == 2


def test_from_tensors_single_tensor_and_dict():
    assert [int(v) for v in hd.from_tensors(X).take(3)] == [0, 1, 2]
    first = next(iter(hd.from_tensors({"a": X, "b": Y})))
    assert plain(first) == {"a": 0, "b": 0}


def test_from_tensors_rejects_unequal_rows():
    with pytest.raises(ValueError, match="same number of rows"):
        hd.from_tensors((X, Y[:5]))


@pytest.mark.parametrize("calls", [None, 1, 2, 4, hd.AUTOTUNE])
def test_seeded_order_is_identical_across_runs_and_parallelism(calls):
    def build(c):
        return (hd.from_tensors((X, Y)).shuffle(8, seed=3)
                .map(lambda e: (e[0] * 2, e[1]), num_parallel_calls=c)
                .batch(5).prefetch(2))
    reference = run_epoch(build(None), epoch=1)
    assert run_epoch(build(calls), epoch=1) == reference
    assert run_epoch(build(calls), epoch=1) == reference
    assert run_epoch(build(calls), epoch=2) != reference  # reshuffled per epoch


def test_process_map_matches_thread_map():
    def build(processes):
        return (hd.from_dataset(list(range(50))).shuffle(10, seed=0)
                .map(lambda v: v * v, num_parallel_calls=2, use_processes=processes,
                     chunk_size=4))
    assert run_epoch(build(True)) == run_epoch(build(False))


def test_streaming_shuffle_is_seeded_and_a_permutation():
    def build():
        return hd.from_dataset(lambda: iter(range(100))).shuffle(16, seed=7)
    first, second = run_epoch(build()), run_epoch(build())
    assert first == second and sorted(first) == list(range(100)) and first != list(range(100))


def test_unseeded_shuffle_differs_between_pipelines():
    a = run_epoch(hd.from_tensors(X).shuffle(100))
    b = run_epoch(hd.from_tensors(X).shuffle(100))
    assert sorted(a) == sorted(b) and a != b


def test_nondeterministic_map_keeps_the_elements():
    pipe = hd.from_tensors(X).map(lambda v: int(v) + 1, num_parallel_calls=3,
                                  deterministic=False)
    assert sorted(run_epoch(pipe)) == list(range(1, 41))


def test_filter_unbatch_repeat_take_skip():
    pipe = hd.from_tensors(X).filter(lambda v: int(v) % 3 == 0)
    assert run_epoch(pipe) == list(range(0, 40, 3))
    assert pipe.cardinality() == hd.UNKNOWN
    with pytest.raises(TypeError, match="cardinality"):
        len(pipe)
    assert run_epoch(hd.from_tensors(X).batch(7).unbatch()) == list(range(40))
    rep = hd.from_tensors(X[:4]).repeat(3)
    assert len(rep) == 12 and run_epoch(rep) == [0, 1, 2, 3] * 3
    assert hd.from_tensors(X).repeat().cardinality() == hd.INFINITE
    assert run_epoch(hd.from_tensors(X).skip(35).take(3)) == [35, 36, 37]


def test_repeat_reshuffles_each_pass():
    out = run_epoch(hd.from_tensors(X[:10]).shuffle(10, seed=0).repeat(2))
    assert sorted(out[:10]) == sorted(out[10:]) == list(range(10)) and out[:10] != out[10:]


def test_memory_cache_runs_map_once():
    calls = []
    pipe = hd.from_tensors(X).map(lambda v: calls.append(1) or int(v)).cache()
    assert run_epoch(pipe) == run_epoch(pipe) == list(range(40))
    assert len(calls) == 40


def test_from_dataset_map_style_and_iterable():
    class Squares(torch.utils.data.Dataset):
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return torch.tensor(i * i), torch.tensor(i)

    xb, yb = next(iter(hd.from_dataset(Squares()).batch(5)))
    assert xb.tolist() == [0, 1, 4, 9, 16] and yb.tolist() == [0, 1, 2, 3, 4]

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(range(3))

    assert run_epoch(hd.from_dataset(Stream())) == [0, 1, 2]
    with pytest.raises(ValueError, match="one-shot iterator"):
        hd.from_dataset(iter(range(3)))


def test_plain_pytorch_loop_with_device_stage_on_cpu():
    model = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    pipe = (hd.from_tensors((X.float()[:, None], Y.float()[:, None])).batch(8)
            .prefetch(hd.AUTOTUNE).prefetch_to_device("cpu"))
    for xb, yb in pipe:
        loss = torch.nn.functional.mse_loss(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    stats = pipe.stats()
    assert stats["elements"] == 5 and 0.0 <= stats["input_bound_fraction"] <= 1.0
    assert [s["stage"] for s in stats["stages"]] == ["source", "batch", "prefetch"] or \
        stats["stages"][0]["stage"] == "source"


def test_bad_arguments_name_the_fix():
    with pytest.raises(ValueError, match="num_parallel_calls must be a positive integer"):
        hd.from_tensors(X).map(abs, num_parallel_calls=0)
    with pytest.raises(ValueError, match="batch_size"):
        hd.from_tensors(X).batch(0)


def test_errors_in_workers_reach_the_consumer():
    def boom(v):
        if int(v) == 7:
            raise RuntimeError("bad element 7")
        return v

    with pytest.raises(RuntimeError, match="bad element 7"):
        run_epoch(hd.from_tensors(X).map(boom, num_parallel_calls=2).prefetch(2))


def test_pipelines_pickle_for_spawned_processes():
    import pickle

    pipe = (hd.from_tensors({"x": X, "y": Y}).shuffle(100, seed=1).map(dict, num_parallel_calls=2)
            .batch(8).prefetch(2))
    reference = run_epoch(pipe)
    clone = pickle.loads(pickle.dumps(pipe))
    assert run_epoch(clone, epoch=0) == reference
    single = pickle.loads(pickle.dumps(hd.from_tensors(X).take(3)))
    assert run_epoch(single) == [0, 1, 2]
