"""A MammoModel small enough for tests and smoke runs: it trains in milliseconds on 32x32 images.

Like Lightning's BoringModel, it lets training, bundles and explainers be exercised without a real
backbone; it is not registered as a model for users.
"""

from __future__ import annotations

import torch
from torch import nn

from mammolens.models.base import MammoModel


class TinyCNN(MammoModel):
    """Two conv-BN-ReLU blocks, global average pooling, dropout and a linear head."""

    def __init__(self, name: str = "tiny-cnn", num_classes: int = 2, width: int = 4, dropout: float = 0.0) -> None:
        super().__init__({"name": name, "num_classes": num_classes, "width": width, "dropout": dropout})
        self.block1 = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.block2 = nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU()
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * width, num_classes))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.block2(self.block1(x)))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def backbone_blocks(self) -> list[nn.Module]:
        return [self.block1, self.block2]

    def head_modules(self) -> list[nn.Module]:
        return [self.head]

    def cam_target_layers(self) -> dict[str, nn.Module]:
        return {"backbone": self.block2}
