"""Test-only model for the resume-elsewhere tests (``model.target = "resume_models:indexed_mlp"``).

Column 0 of every example is its index in the training arrays; the model trains on the
other columns and, in training mode, appends the indices of each local batch it sees to
``$INDEX_LOG.rank{RANK}`` (one JSON list a line), so a test can rebuild the global batch
of every step and compare the sample order of two runs element by element. The log path
comes from the environment, not the config, so that it is not part of the backup's
fingerprint.
"""

import json
import os

from torch import nn


class IndexedMLP(nn.Module):
    def __init__(self, features, num_classes, width):
        super().__init__()
        log = os.environ.get("INDEX_LOG", "")
        self.net = nn.Sequential(nn.Linear(features, width), nn.Tanh(), nn.Linear(width, num_classes))
        self.log = f"{log}.rank{os.environ.get('RANK', '0')}" if log else ""

    def forward(self, x):  # x: (batch, 1 + features), column 0 the example's index
        if self.training and self.log:
            with open(self.log, "a") as handle:
                handle.write(json.dumps([int(i) for i in x[:, 0].tolist()]) + "\n")
        return self.net(x[:, 1:])


def indexed_mlp(input_shape, num_classes, width=16):
    return IndexedMLP(input_shape[0] - 1, num_classes, width)
