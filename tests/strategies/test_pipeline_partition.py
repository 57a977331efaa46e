"""The partitioner: exact min-max boundaries, and profiled stages of unequal blocks that take
about the same time."""

import pytest
import torch
from torch import nn

from hpmodel.kernel.errors import HpmodelError
from hpmodel.strategies.partition import (balance, bounds_from_split_points, describe_plan,
                                          profile_blocks, stage_costs)

# Block i holds LAYERS[i] Linear+Tanh layers: its cost differs by construction (1× to 4×).
LAYERS = [1, 1, 1, 1, 2, 2, 4, 4]


def unequal_blocks(width=384):
    torch.manual_seed(0)
    return [nn.Sequential(*[m for _ in range(n) for m in (nn.Linear(width, width), nn.Tanh())])
            for n in LAYERS]


def test_balance_is_the_exact_min_max_split():
    assert balance(LAYERS, 2) == [0, 6, 8]
    assert balance(LAYERS, 4) == [0, 4, 6, 7, 8]
    assert balance([5, 1, 1, 1], 2) == [0, 1, 4]
    assert stage_costs(LAYERS, [0, 4, 6, 7, 8]) == [4, 4, 4, 4]
    assert bounds_from_split_points([3], 8, 2) == [0, 3, 8]
    with pytest.raises(HpmodelError, match="8 block.* but the pipeline has 9 stages"):
        balance(LAYERS, 9)


@pytest.mark.parametrize("stages", [2, 4])
def test_partition_of_given_costs_balances_unequal_blocks(stages):
    """On given costs (no timing: that lives in 'hpmodel bench pipeline'), the partition's
    slowest stage is within 25% of its fastest, where the naive equal-count split is not."""
    costs = [float(n) for n in LAYERS]  # block i costs LAYERS[i] units
    bounds = balance(costs, stages)
    per_stage = stage_costs(costs, bounds)
    assert max(per_stage) / min(per_stage) <= 1.25, (bounds, per_stage)
    naive = [len(LAYERS) * i // stages for i in range(stages + 1)]
    naive_costs = stage_costs(costs, naive)
    assert max(naive_costs) / min(naive_costs) > 1.5  # the blocks really are unequal


def test_profiler_measures_every_block_and_the_plan_names_them():
    blocks, x = unequal_blocks(width=32), torch.randn(8, 32)
    costs = profile_blocks(blocks, x, repeats=2)
    assert len(costs) == len(blocks) and all(c.seconds > 0 for c in costs)
    bounds = balance([c.seconds for c in costs], 2)
    assert "stage 0: blocks 0.." in describe_plan(bounds, costs)
