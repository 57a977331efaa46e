"""A training script that uses a strategy and runs unchanged under torchrun.

    python -m torch.distributed.run --nproc-per-node 2 tests/strategies/torchrun_script.py OUT.pt mirrored
    python tests/strategies/torchrun_script.py OUT.pt mirrored     # hpmodel starts the 2 processes
"""

import sys

import torch

import hpmodel as hm
from parity_helpers import train

if __name__ == "__main__":
    out, name = sys.argv[1], sys.argv[2]
    strategy = hm.get_strategy(name, devices=2, device="cpu")
    result = train(strategy, replicas=2)
    if strategy.is_main:
        torch.save({"state_dict": result.state_dict, "history": result.history,
                    "summary": result.summary}, out)
