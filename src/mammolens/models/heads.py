"""The classifier head shared by every model: pooled features -> (hidden layer) -> logits."""

from __future__ import annotations

from torch import nn

from mammolens.models.options import require_fraction, require_int


def make_head(in_features: int, num_classes: int, *, hidden: int = 0, dropout: float = 0.0) -> nn.Sequential:
    """``hidden=0`` is a linear probe; ``hidden>0`` adds Linear-ReLU-Dropout (the seeds' dense head)."""
    require_int(hidden, "hidden", minimum=0)
    dropout = require_fraction(dropout, "dropout")
    if hidden:
        return nn.Sequential(
            nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
        )
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, num_classes))
