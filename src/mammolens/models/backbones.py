"""timm feature extractors with what mammolens needs on top: stages, a CAM layer, normalisation.

timm owns the architectures and their ImageNet recipes; this module only records, per
architecture, how its modules group into stages (for ``finetune-last-N``) and which module is the
last spatial feature map (for Grad-CAM).
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from mammolens.models.adapters import Normalize
from mammolens.models.catalog import BACKBONES
from mammolens.models.weights import load_backbone_weights


def _effnet_stages(model: nn.Module) -> list[list[str]]:
    # MobileNetV2 and EfficientNet share timm's EfficientNet skeleton: stem, block groups, 1x1 head conv.
    return [["conv_stem", "bn1"], *[[f"blocks.{i}"] for i in range(len(model.blocks))], ["conv_head", "bn2"]]


def _vgg_stages(model: nn.Module) -> list[list[str]]:
    # One stage per max-pool-terminated conv block.
    stages, current = [], []
    for idx, layer in enumerate(model.features):
        current.append(f"features.{idx}")
        if isinstance(layer, nn.MaxPool2d):
            stages.append(current)
            current = []
    return stages


_STAGES = {
    "densenet121": lambda m: [
        ["features.conv0", "features.norm0", "features.pool0"],
        ["features.denseblock1", "features.transition1"],
        ["features.denseblock2", "features.transition2"],
        ["features.denseblock3", "features.transition3"],
        ["features.denseblock4", "features.norm5"],
    ],
    "resnet50": lambda m: [["conv1", "bn1"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]],
    "vgg16": _vgg_stages,
    "mobilenetv2_100": _effnet_stages,
    "tf_efficientnet_lite0": _effnet_stages,
    "inception_v3": lambda m: [
        ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"],
        ["Conv2d_3b_1x1", "Conv2d_4a_3x3"],
        ["Mixed_5b", "Mixed_5c", "Mixed_5d"],
        ["Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"],
        ["Mixed_7a", "Mixed_7b", "Mixed_7c"],
    ],
}

# The last module whose output is a spatial map that the pooled features are computed from
# (VGG: the last conv block's ReLU, 14x14 at 224 px, before the final max-pool).
_CAM_LAYER = {
    "densenet121": "features.norm5",
    "resnet50": "layer4",
    "vgg16": "features.29",
    "mobilenetv2_100": "bn2",
    "tf_efficientnet_lite0": "bn2",
    "inception_v3": "Mixed_7c",
}

if set(_STAGES) != set(BACKBONES) or set(_CAM_LAYER) != set(BACKBONES):
    raise RuntimeError("backbones.py and catalog.BACKBONES list different architectures")

# Smallest input side each backbone accepts (inception_v3's stem and reductions need 75 px).
MIN_INPUT_SIZE = {name: 75 if name == "inception_v3" else 32 for name in BACKBONES}


class TimmBackbone(nn.Module):
    """A timm model with ``num_classes=0``, optionally behind the normalisation its weights expect."""

    def __init__(self, arch: str, in_chans: int = 3, normalize: bool = False) -> None:
        super().__init__()
        self.arch = arch
        self.model = timm.create_model(arch, pretrained=False, num_classes=0, in_chans=in_chans)
        if arch == "vgg16":
            # The convolutional base, as in transfer learning with Keras' include_top=False: timm
            # keeps fc6/fc7 as a 7x7 conv MLP (120M parameters, 4096 features) even with
            # num_classes=0; the mammography recipe pools the 512 conv channels instead.
            self.model.pre_logits = nn.Identity()
            self.model.head_hidden_size = self.model.num_features
        cfg = self.model.pretrained_cfg
        mean, std = tuple(cfg["mean"]), tuple(cfg["std"])
        if in_chans != len(mean):  # summed RGB filters see one grey channel: average the statistics
            mean, std = (sum(mean) / len(mean),) * in_chans, (sum(std) / len(std),) * in_chans
        self.normalize = Normalize(mean, std) if normalize else nn.Identity()
        self.num_features: int = self.model.head_hidden_size

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) image -> (B, D', h, w) last spatial feature map."""
        return self.model.forward_features(self.normalize(x))

    def pool(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Spatial map -> (B, num_features) pooled vector (timm's own global pooling / pre-logits)."""
        return self.model.forward_head(feature_map, pre_logits=True)

    def stages(self) -> list[nn.Module]:
        """The backbone's stages, input -> output; together they hold every backbone parameter."""
        return [
            nn.ModuleList(self.model.get_submodule(name) for name in group)
            for group in _STAGES[self.arch](self.model)
        ]

    def cam_layer(self) -> nn.Module:
        return self.model.get_submodule(_CAM_LAYER[self.arch])

    def load_pretrained(self, source: str | Path, *, trust_pickle: bool = False) -> str:
        """Load ImageNet (``"imagenet"``) or file weights into the timm model; returns where from."""
        return load_backbone_weights(self.model, self.arch, source, trust_pickle=trust_pickle)
