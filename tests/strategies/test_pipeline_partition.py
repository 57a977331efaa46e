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


def partition_spread(blocks, x, stages):
    """Profile, partition, then measure each stage (one module) with the same profiler."""
    costs = profile_blocks(blocks, x, repeats=9)
    bounds = balance([c.seconds for c in costs], stages)
    assert "stage 0: blocks 0.." in describe_plan(bounds, costs)
    stage_modules = [nn.Sequential(*blocks[a:b]) for a, b in zip(bounds, bounds[1:])]
    seconds = [c.seconds for c in profile_blocks(stage_modules, x, repeats=9)]
    return bounds, max(seconds) / min(seconds)


@pytest.mark.parametrize("stages", [2, 4])
def test_profiled_partition_gives_stages_within_25_percent(stages):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: timings on a shared 2-core machine vary less
    try:
        blocks, x = unequal_blocks(), torch.randn(128, 384)
        # A burst of load from other processes can spoil one profile: the best of three counts.
        attempts = []
        for _ in range(3):
            attempts.append(partition_spread(blocks, x, stages))
            if attempts[-1][1] <= 1.25:
                break
        assert min(spread for _, spread in attempts) <= 1.25, attempts
        naive = [nn.Sequential(*blocks[i * len(blocks) // stages:(i + 1) * len(blocks) // stages])
                 for i in range(stages)]
        naive_seconds = [c.seconds for c in profile_blocks(naive, x, repeats=5)]
        assert max(naive_seconds) / min(naive_seconds) > 1.5  # the blocks really are unequal
    finally:
        torch.set_num_threads(threads)
