"""A small CNN trained from scratch (seed 002): useful where ImageNet weights are unavailable or
unwanted, and as the default encoder of the attention model."""

from __future__ import annotations

import torch
from torch import nn

from mammolens.models.base import MammoModel
from mammolens.models.heads import make_head
from mammolens.models.options import require_int
from mammolens.models.registry import MODELS, Pretrained
from mammolens.utils.errors import ConfigError


def conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class ConvBlock(nn.Sequential):
    """conv-BN-ReLU (-conv-BN-ReLU) then 2x2 max-pool: halves the grid, widens the channels."""

    def __init__(self, c_in: int, c_out: int, double: bool = True) -> None:
        layers = conv_bn_relu(c_in, c_out) + (conv_bn_relu(c_out, c_out) if double else [])
        super().__init__(*layers, nn.MaxPool2d(2))


class ScratchEncoder(nn.Sequential):
    """``depth`` blocks, ``width`` channels doubling per block.

    (B, C, H, W) -> (B, width * 2**(depth - 1), H / 2**depth, W / 2**depth).
    """

    def __init__(self, in_chans: int, depth: int = 4, width: int = 32, double: bool = True) -> None:
        require_int(depth, "depth", minimum=1)
        require_int(width, "width", minimum=1)
        channels = [in_chans] + [width * 2**i for i in range(depth)]
        super().__init__(*(ConvBlock(a, b, double) for a, b in zip(channels, channels[1:])))
        self.out_channels = channels[-1]


class ScratchCNN(MammoModel):
    def __init__(
        self, num_classes: int, in_chans: int, depth: int, width: int, double_conv: bool, hidden: int, dropout: float
    ) -> None:
        super().__init__({})
        self.encoder = ScratchEncoder(in_chans, depth, width, double_conv)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = self.encoder.out_channels
        self.head = make_head(self.num_features, num_classes, hidden=hidden, dropout=dropout)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.encoder(x)).flatten(1)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def backbone_blocks(self) -> list[nn.Module]:
        return list(self.encoder)

    def head_modules(self) -> list[nn.Module]:
        return [self.head]

    def cam_target_layers(self) -> dict[str, nn.Module]:
        return {"encoder": self.encoder[-1]}

    def load_pretrained(self, pretrained: Pretrained, *, trust_pickle: bool = False) -> None:
        raise ConfigError(
            "model 'scratch-cnn' is trained from scratch; it takes no pretrained weights (use pretrained=None)"
        )


@MODELS.register("scratch-cnn")
def scratch_cnn(
    num_classes: int,
    in_chans: int = 1,
    depth: int = 4,
    width: int = 32,
    double_conv: bool = True,
    hidden: int = 128,
    dropout: float = 0.3,
) -> ScratchCNN:
    return ScratchCNN(num_classes, in_chans, depth, width, double_conv, hidden, dropout)
