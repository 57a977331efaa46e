"""Sharded (FSDP2) on two real CPU processes (Gloo) matches OneDevice at the same global batch."""

import pytest

import hpmodel as hm
from hpmodel.kernel.errors import HpmodelError
from parity_helpers import assert_matches_one_device, one_device, train


def test_sharded_two_processes_match_one_device_with_accumulation():
    # grad_accum = 2 also exercises no_sync (FSDP2's set_requires_gradient_sync).
    result = train(hm.get_strategy("sharded", devices=2), replicas=2, grad_accum=2)
    assert_matches_one_device(result, one_device(grad_accum=2))


def test_sharded_cpu_offload_needs_gpus():
    strategy = hm.get_strategy("sharded", devices=2, device="cpu", cpu_offload=True)
    with pytest.raises(HpmodelError, match="cpu_offload"):
        strategy.setup(None)
