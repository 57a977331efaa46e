"""A multi-layer perceptron: ``depth`` hidden blocks of ``width`` units."""

from __future__ import annotations

import math

from torch import nn

from hpmodel.models.shapes import InputSpec, reference_options


def mlp(config, input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """Flatten → depth × (Linear, GELU, Dropout) → Linear. Each hidden layer is one block.

    ``depth = 0`` is a linear model: multinomial logistic regression on the flat features."""
    reference_options(config.options)  # an unknown model.options key stops, as for the cnns
    blocks: list[nn.Module] = [nn.Flatten()]
    width_in = math.prod(input_shape)
    for _ in range(config.depth):
        blocks.append(nn.Sequential(nn.Linear(width_in, config.width), nn.GELU(),
                                    nn.Dropout(config.dropout)))
        width_in = config.width
    blocks.append(nn.Linear(width_in, num_classes))
    model = nn.Sequential(*blocks)
    model.expected_input = InputSpec("mlp", tuple(input_shape), ("features",), (math.prod(input_shape),))
    return model
