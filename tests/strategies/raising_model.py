"""A model (for ``model.target = "raising_model:build"``) whose forward raises on rank 1."""

import torch
from torch import nn


class RaisesOnRankOne(nn.Module):
    def __init__(self, num_classes: int):
        super().__init__()
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x):
        if torch.distributed.is_initialized() and torch.distributed.get_rank() == 1:
            raise RuntimeError("deliberate failure in the forward pass of rank 1")
        return self.linear(x.flatten(1))


def build(input_shape, num_classes, **options):
    return RaisesOnRankOne(num_classes)
