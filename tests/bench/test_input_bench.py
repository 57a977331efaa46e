"""Pieces of ``hpmodel bench input`` at toy sizes (the whole bench runs on the GPU machine)."""

from __future__ import annotations

import torch

import hpmodel.data as hd
from hpmodel.bench import _input_cases as cases
from hpmodel.bench.input import map_cost


def test_epoch_rate_counts_every_epoch_and_runs_the_untimed_step_after():
    calls = []
    pipe = hd.from_tensors((torch.zeros(10, 2), torch.arange(10))).batch(4)
    rate = cases.epoch_rate(lambda: iter(pipe), 10, epochs=2, after=lambda: calls.append(1))
    assert rate > 0 and calls == [1]


def test_map_cost_is_the_work_per_element_inside_the_stage_and_the_rate_it_bounds():
    stats = {"stages": [{"stage": "map", "elements": 100, "busy_seconds": 0.2, "workers": 4}]}
    cost = map_cost(stats, workers=8)  # the stage's own worker count wins
    assert cost == {"ms_per_element_in_workers": 2.0, "workers": 4,
                    "elements_per_second_bound": 2000.0}
    assert map_cost({"stages": []}, 2) == {}


def test_the_training_loop_reports_its_waits():
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    run = cases._train_loop(hd.from_tensors((x, y)).batch(16), model, opt,
                            torch.device("cpu"), to_device=False)
    assert run["steps"] == 4 and 0 <= run["input_bound_fraction"] <= 1
    assert run["wait_ms_p50"] <= run["wait_ms_p90"] <= run["wait_ms_max"]
    assert 0 <= run["steps_waiting_over_1ms"] <= 3
