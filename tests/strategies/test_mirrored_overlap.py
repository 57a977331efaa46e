"""Mirrored with the optimizer step overlapped with communication stays exact (Gloo, 2 processes)."""

import hpmodel as hm
from parity_helpers import adamw, assert_matches_one_device, one_device, train


def test_overlap_optimizer_matches_one_device():
    # A 2 KB bucket cap splits the small model over several buckets, so steps run per bucket.
    strategy = hm.get_strategy("mirrored", devices=2, overlap_optimizer=True, bucket_cap_mb=0.002)
    # grad_accum = 2: the hook must step only after the last micro-batch (no_sync before it).
    result = train(strategy, replicas=2, optimizer=adamw, grad_accum=2)
    assert_matches_one_device(result, one_device(adamw, grad_accum=2))


def test_gradient_compression_stays_close_to_one_device():
    # The all-reduce runs in 16 bits (fp16 on Gloo; bf16 needs NCCL): equal to OneDevice up to
    # 16-bit rounding of the gradients.
    result = train(hm.get_strategy("mirrored", devices=2, gradient_compression="fp16"), replicas=2)
    assert_matches_one_device(result, one_device(), tolerance=2e-2)
    exact = train(hm.get_strategy("mirrored", devices=2), replicas=2)
    assert result.state_dict["2.weight"].ne(exact.state_dict["2.weight"]).any()  # really compressed


def test_overlap_is_off_in_a_single_process():
    # One process has no all-reduce to hide the step behind (on a GPU the overlap only cost
    # time there), so the optimizer steps as usual.
    import torch
    import torch.distributed as dist
    from torch import nn

    dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    try:
        strategy = hm.get_strategy("mirrored", devices=1, device="cpu", overlap_optimizer=True)
        model, optimizer = strategy.setup(nn.Linear(2, 2), lambda p: torch.optim.SGD(p, lr=0.1))
        before = model.module.weight.detach().clone()
        model(torch.ones(1, 2)).sum().backward()
        assert torch.equal(model.module.weight, before)  # backward alone stepped nothing
        strategy.optimizer_step(optimizer)
        assert not torch.equal(model.module.weight, before)
    finally:
        dist.destroy_process_group()
