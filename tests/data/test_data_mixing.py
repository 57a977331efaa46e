"""Weighted sampling across pipelines (sample_from), take(-1)/skip(-1), the DataLoader wrapper."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

import hpmodel.data as hd
from hpmodel.train.batches import to_batches

from data_helpers import consume, plain, run_epoch


def _inputs(shuffled=False):
    a = hd.from_tensors(torch.arange(0, 40))
    b = hd.from_tensors(torch.arange(100, 110))
    c = hd.from_tensors(torch.arange(200, 220))
    if shuffled:
        a, c = a.shuffle(40, seed=3), c.shuffle(5, seed=None).map(lambda v: v + 0)
    return [a, b, c]


@pytest.mark.parametrize("stop_on", ["first_exhausted", "all_exhausted"])
def test_mixing_is_deterministic_per_seed_and_epoch(stop_on):
    mix = lambda seed: hd.sample_from(_inputs(), [0.5, 0.2, 0.3], seed=seed, stop_on=stop_on)  # noqa: E731
    first = run_epoch(mix(7), 0)
    assert first == run_epoch(mix(7), 0)
    assert first != run_epoch(mix(8), 0)
    assert first != run_epoch(mix(7), 1)
    for lo, hi in ((0, 40), (100, 110), (200, 220)):  # each input keeps its own order
        mine = [v for v in first if lo <= v < hi]
        assert mine == list(range(lo, lo + len(mine)))


def test_stop_rules():
    every = run_epoch(hd.sample_from(_inputs(), [0.5, 0.2, 0.3], seed=0,
                                     stop_on="all_exhausted"))
    assert sorted(every) == list(range(40)) + list(range(100, 110)) + list(range(200, 220))
    short = run_epoch(hd.sample_from(_inputs(), [0.5, 0.2, 0.3], seed=0))
    assert short == every[:len(short)] and len(short) < len(every)
    # the epoch ends when an exhausted input is drawn: one input ran out
    assert any(all(v in short for v in range(lo, hi))
               for lo, hi in ((0, 40), (100, 110), (200, 220)))
    only_a = run_epoch(hd.sample_from(_inputs(), [1, 0, 0], seed=0))
    assert only_a == list(range(40))


@pytest.mark.parametrize("stop_on", ["first_exhausted", "all_exhausted"])
@pytest.mark.parametrize("known_sizes", [True, False])
def test_mixing_resumes_exactly(stop_on, known_sizes):
    def build():
        inputs = _inputs(shuffled=True)
        if not known_sizes:  # unknown cardinality: the replay path
            inputs[1] = inputs[1].filter(lambda v: True)
        return hd.sample_from(inputs, [0.5, 0.2, 0.3], seed=None, stop_on=stop_on).batch(3)

    pipe = build()
    pipe.set_epoch(1)
    full = run_epoch(pipe, 1)
    pipe.set_epoch(1)
    head, it = consume(pipe, 4)
    state = pipe.state_dict()
    it.close()
    again = build()  # new unseeded shuffles and mixing seed: the state carries them
    again.load_state_dict(state)
    rest = [plain(b) for b in again]
    assert head + rest == full


def test_mixing_rejects_bad_weights():
    with pytest.raises(ValueError, match="one weight per pipeline"):
        hd.sample_from(_inputs(), [1, 2])
    with pytest.raises(ValueError, match="stop_on"):
        hd.sample_from(_inputs(), None, stop_on="never")


def test_take_and_skip_minus_one_follow_tf_data():
    pipe = hd.from_tensors(torch.arange(6))
    assert run_epoch(pipe.take(-1)) == list(range(6)) and pipe.take(-1).cardinality() == 6
    assert run_epoch(pipe.skip(-1)) == [] and pipe.skip(-1).cardinality() == 0
    with pytest.raises(ValueError, match="-1"):
        pipe.take(-2)


def test_plain_loop_over_the_wrapper_sees_the_trainers_order():
    x, y = torch.randn(50, 3), torch.arange(50)
    seen_by_trainer = to_batches((x, y), 8, shuffle=True, seed=5)
    loader = to_batches((x, y), 8, shuffle=True, seed=5).as_dataloader()
    assert len(loader) == 7 and loader.batch_size == 8
    for epoch in range(2):  # the Trainer sets each epoch; the wrapper advances by itself
        expected = run_epoch(seen_by_trainer, epoch)
        assert [plain(b) for b in loader] == expected
    # where a real DataLoader object is required
    wrapped = DataLoader(to_batches((x, y), 8, shuffle=True, seed=5).as_dataloader(),
                         batch_size=None)
    assert [plain(b) for b in wrapped] == run_epoch(seen_by_trainer, 0)
