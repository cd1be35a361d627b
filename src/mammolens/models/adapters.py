"""Grayscale mammograms into RGB ImageNet backbones.

Three ways, chosen by the ``input_adapter`` option:

- ``conv``: a learnable 3x3 convolution in_chans -> 3 (the seed projects' adapter). It starts as
  channel replication, so pretrained filters see a grey image on the first step and training
  only moves away from that when it helps.
- ``repeat``: fixed channel replication; no parameters.
- ``timm``: no adapter; the backbone is built with ``in_chans`` inputs and timm sums the first
  convolution's pretrained RGB filters (``adapt_input_conv``).
"""

from __future__ import annotations

import torch
from torch import nn

from mammolens.models.options import require_choice
from mammolens.utils.errors import ConfigError

INPUT_ADAPTERS = ("conv", "repeat", "timm")


class ConvAdapter(nn.Conv2d):
    def __init__(self, in_chans: int) -> None:
        super().__init__(in_chans, 3, kernel_size=3, padding=1)
        with torch.no_grad():
            self.weight.zero_()
            self.weight[:, :, 1, 1] = 1.0 / in_chans
            self.bias.zero_()


class RepeatAdapter(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.expand(-1, 3, -1, -1)


def pointwise_mix(adapter: nn.Module, in_chans: int) -> torch.Tensor | None:
    """(3, in_chans) matrix M with ``adapter(x)[c] == sum_i M[c, i] * x[i]`` at every pixel, or None.

    Such an adapter maps the zero padding of the next convolution to zero, so it folds exactly into
    that convolution's weights (``BackboneClassifier.fold_input_adapter``). ``repeat`` always is one;
    ``conv`` is one until training moves its off-centre taps or bias (it starts as replication and stays
    so when the backbone and adapter are frozen).
    """
    if isinstance(adapter, RepeatAdapter):
        return torch.ones(3, in_chans)
    if isinstance(adapter, ConvAdapter):
        weight = adapter.weight.detach()
        off_centre = weight.clone()
        off_centre[:, :, 1, 1] = 0
        if not off_centre.any() and not adapter.bias.detach().any():
            return weight[:, :, 1, 1].clone()
    return None


def make_input_adapter(mode: str, in_chans: int) -> nn.Module:
    """The module between the image and the backbone (``nn.Identity`` for ``timm``)."""
    require_choice(mode, "input_adapter", INPUT_ADAPTERS)
    if mode == "conv":
        return ConvAdapter(in_chans)
    if mode == "repeat":
        if in_chans == 3:
            return nn.Identity()
        if in_chans != 1:
            raise ConfigError(f"input_adapter 'repeat' needs in_chans 1 or 3, got {in_chans}; use 'conv' or 'timm'")
        return RepeatAdapter()
    return nn.Identity()


def backbone_in_chans(mode: str, in_chans: int) -> int:
    """Channels the backbone itself sees behind the adapter."""
    return in_chans if mode == "timm" else 3


class Normalize(nn.Module):
    """The exact mean/std a backbone's pretrained weights expect, applied to [0, 1] input.

    Off by default (``normalize=False``): training standardises every image with ImageNet's
    grey statistics and records them in the bundle, which suits all these backbones. With
    ``normalize=True`` the model takes [0, 1] pixels and gives each backbone its own statistics
    (EfficientNet-Lite's are 0.5/0.5, not ImageNet's), e.g. both branches of ``hybrid-lite``.
    Buffers are non-persistent: they follow from the config, not from the weights.
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std
