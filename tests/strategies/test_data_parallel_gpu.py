"""The CUDA paths (NCCL, CUDA-stream comm hooks, FSDP2 CPU offload) match OneDevice.

Run on a GPU machine: ``pytest -m gpu tests/strategies``. Skipped without CUDA.
"""

import pytest
import torch

import hpmodel as hm
from parity_helpers import adamw, assert_matches_one_device, one_device, train

GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(GPUS == 0, reason="needs CUDA")]
REPLICAS = min(2, max(GPUS, 1))
TOLERANCE = 1e-4  # GPU kernels sum in another order than the CPU reference


@pytest.mark.parametrize("name, options", [
    ("mirrored", {}),
    ("mirrored", {"overlap_optimizer": True, "bucket_cap_mb": 0.002}),
    ("central-storage", {"master_device": "cpu"}),
    ("sharded", {"cpu_offload": True}),
])
def test_cuda_strategies_match_one_device(name, options):
    strategy = hm.get_strategy(name, devices=REPLICAS, device="cuda", **options)
    result = train(strategy, replicas=REPLICAS, optimizer=adamw)
    assert_matches_one_device(result, one_device(adamw), tolerance=TOLERANCE)
