"""CentralStorage on two real CPU processes (Gloo) matches OneDevice at the same global batch."""

import pytest

import hpmodel as hm
from hpmodel.kernel.errors import ConfigError
from parity_helpers import adamw, assert_matches_one_device, one_device, train


def test_central_storage_two_processes_match_one_device():
    # hold_global_batch: batch_size 64 is the global batch, split 2 × 32 by the strategy.
    strategy = hm.get_strategy("central-storage", devices=2)
    result = train(strategy, replicas=1, optimizer=adamw, clip_grad_norm=1.0, hold_global_batch=True)
    assert_matches_one_device(result, one_device(adamw, clip_grad_norm=1.0))


def test_central_storage_rejects_unknown_master_device():
    with pytest.raises(ConfigError, match="master_device"):
        hm.get_strategy("central-storage", master_device="gpu7")
