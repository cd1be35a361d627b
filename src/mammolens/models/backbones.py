"""timm feature extractors with what mammolens needs on top: stages, a CAM layer, normalisation.

timm owns the architectures and their ImageNet recipes; this module only records, per
architecture, how its modules group into stages (for ``finetune-last-N``) and which module is the
last spatial feature map (for Grad-CAM). A vision transformer's last map is its patch tokens laid
back on their grid, and its pooled vector their mean (DINOv2's patch-token average), so CAMs, the
attention decoder and the fusion see it like any CNN.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from mammolens.models.adapters import Normalize
from mammolens.models.catalog import BACKBONES, TIMM_OPTIONS
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


def _vit_stages(model: nn.Module) -> list[list[str]]:
    # Embedding (patch projection, class token, position embedding), four groups of blocks, final norm.
    depth = len(model.blocks)
    groups = [[f"blocks.{i}" for i in range(j, min(j + depth // 4, depth))] for j in range(0, depth, depth // 4)]
    return [["patch_embed", "cls_token", "pos_embed"], *groups, ["norm"]]


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
    "tf_efficientnet_lite1": _effnet_stages,
    "tf_efficientnet_lite2": _effnet_stages,
    "vit_small_patch14_dinov2": _vit_stages,
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
    "tf_efficientnet_lite1": "bn2",
    "tf_efficientnet_lite2": "bn2",
    "vit_small_patch14_dinov2": "token_map",  # TimmBackbone's own hook on the patch-token grid
    "inception_v3": "Mixed_7c",
}
_VIT = {"vit_small_patch14_dinov2"}

if set(_STAGES) != set(BACKBONES) or set(_CAM_LAYER) != set(BACKBONES):
    raise RuntimeError("backbones.py and catalog.BACKBONES list different architectures")

# Smallest input side each backbone accepts (inception_v3's stem and reductions need 75 px, a
# ViT/14 two patches a side).
MIN_INPUT_SIZE = {name: {"inception_v3": 75, "vit_small_patch14_dinov2": 28}.get(name, 32) for name in BACKBONES}


class TimmBackbone(nn.Module):
    """A timm model with ``num_classes=0``, optionally behind the normalisation its weights expect."""

    def __init__(self, arch: str, in_chans: int = 3, normalize: bool = False) -> None:
        super().__init__()
        self.arch = arch
        self.model = timm.create_model(
            arch, pretrained=False, num_classes=0, in_chans=in_chans, **TIMM_OPTIONS.get(arch, {})
        )
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
        self.is_vit = arch in _VIT
        if self.is_vit:
            self.token_map = nn.Identity()  # the patch-token grid passes through here (Grad-CAM's hook)

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) image -> (B, D', h, w) last spatial feature map."""
        x = self.normalize(x)
        if not self.is_vit:
            return self.model.forward_features(x)
        tokens = self.model.forward_features(x)[:, self.model.num_prefix_tokens :]
        h, w = self.model.patch_embed.dynamic_feat_size(x.shape[-2:])
        return self.token_map(tokens.transpose(1, 2).reshape(x.shape[0], -1, h, w))

    def pool(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Spatial map -> (B, num_features) pooled vector (timm's own global pooling / pre-logits)."""
        if self.is_vit:
            return feature_map.mean(dim=(2, 3))
        return self.model.forward_head(feature_map, pre_logits=True)

    def stages(self) -> list[nn.Module]:
        """The backbone's stages, input -> output; together they hold every backbone parameter."""
        return [nn.ModuleList(self._part(name) for name in group) for group in _STAGES[self.arch](self.model)]

    def _part(self, name: str) -> nn.Module:
        """A named sub-module, or a holder for a bare parameter (a ViT's class token, position embedding)."""
        if isinstance(getattr(self.model, name, None), nn.Parameter):
            holder = nn.Module()
            holder.register_parameter(name, getattr(self.model, name))
            return holder
        return self.model.get_submodule(name)

    def first_conv(self) -> nn.Conv2d:
        """The convolution that sees the backbone's input (timm's ``pretrained_cfg["first_conv"]``)."""
        return self.model.get_submodule(self.model.pretrained_cfg["first_conv"])

    def cam_layer(self) -> nn.Module:
        return self.token_map if self.is_vit else self.model.get_submodule(_CAM_LAYER[self.arch])

    def load_pretrained(self, source: str | Path, *, trust_pickle: bool = False) -> str:
        """Load ImageNet (``"imagenet"``) or file weights into the timm model; returns where from."""
        return load_backbone_weights(self.model, self.arch, source, trust_pickle=trust_pickle)
