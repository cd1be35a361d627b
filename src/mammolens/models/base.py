"""The contract every registered model keeps, so training, feature caching and CAM need no special cases.

A model is ``forward_features`` (image -> pooled vector) then ``forward_head`` (vector -> logits).
Training freezes/unfreezes ``backbone_blocks``; the feature fast path caches ``forward_features``;
Grad-CAM hooks ``cam_target_layers`` (one per backbone for a fusion model).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class MammoModel(nn.Module):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        # The create_model(**config) arguments that rebuild this architecture (saved in bundles).
        self.config = dict(config)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) image batch -> (B, D) pooled features."""
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """(B, D) features -> (B, num_classes) logits."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def backbone_blocks(self) -> list[nn.Module]:
        """Feature-extractor stages ordered input -> output (``finetune-last-N`` unfreezes the last N)."""
        raise NotImplementedError

    def head_modules(self) -> list[nn.Module]:
        """Modules after the pooled features; always trainable."""
        raise NotImplementedError

    def cam_target_layers(self) -> dict[str, nn.Module]:
        """Name -> last spatial layer of each backbone, for Grad-CAM style explanations."""
        raise NotImplementedError
