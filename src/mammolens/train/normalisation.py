"""Model-input normalisation, recorded in every bundle so inference feeds the model what training did.

The default is ImageNet's statistics averaged over RGB: timm adapts pretrained RGB stems to one channel
by summing the filters, so a gray image standardised this way is what those weights expect.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from mammolens.utils.errors import ConfigError

IMAGENET_GRAY: dict[str, float] = {"mean": 0.449, "std": 0.226}


def check_normalisation(normalisation: dict[str, Any] | None) -> dict[str, float]:
    """``{"mean": m, "std": s}`` with a positive std; None means IMAGENET_GRAY."""
    if normalisation is None:
        return dict(IMAGENET_GRAY)
    if set(normalisation) != {"mean", "std"}:
        raise ConfigError(f"normalisation: expected keys mean and std, got {sorted(normalisation)}")
    mean, std = float(normalisation["mean"]), float(normalisation["std"])
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise ConfigError(f"normalisation: need a finite mean and a positive std, got {normalisation}")
    return {"mean": mean, "std": std}


def normalise(images: torch.Tensor, normalisation: dict[str, float]) -> torch.Tensor:
    """[0, 1] images -> model input, (x - mean) / std."""
    return (images - normalisation["mean"]) / normalisation["std"]
