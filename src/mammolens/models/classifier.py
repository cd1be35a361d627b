"""Classifiers over one or more timm backbones: adapter -> backbones -> pooled features, concatenated -> head.

One backbone is the single-backbone model (registered under its timm name); two or more is the
fusion the hybrid models are made of (see ``hybrid.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from mammolens.models.adapters import backbone_in_chans, make_input_adapter, pointwise_mix
from mammolens.models.backbones import BACKBONES, TimmBackbone
from mammolens.models.base import MammoModel
from mammolens.models.heads import make_head
from mammolens.models.registry import MODELS, Pretrained
from mammolens.utils.errors import ConfigError


class BackboneClassifier(MammoModel):
    def __init__(
        self,
        backbones: Sequence[str],
        num_classes: int,
        *,
        in_chans: int = 1,
        input_adapter: str = "conv",
        normalize: bool = False,
        hidden: int = 0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__({})
        if isinstance(backbones, str) or not backbones:
            raise ConfigError(f"model option 'backbones' must be a list of backbone names, got {backbones!r}")
        unknown = [b for b in backbones if b not in BACKBONES]
        if unknown:
            raise ConfigError(f"unknown backbone {unknown[0]!r}; known: {', '.join(BACKBONES)}")
        if len(set(backbones)) != len(backbones):
            raise ConfigError(f"model option 'backbones' names a backbone twice: {list(backbones)}")
        self.adapter = make_input_adapter(input_adapter, in_chans)
        inner_chans = backbone_in_chans(input_adapter, in_chans)
        self.backbones = nn.ModuleDict({b: TimmBackbone(b, inner_chans, normalize) for b in backbones})
        self.num_features = sum(b.num_features for b in self.backbones.values())
        self.head = make_head(self.num_features, num_classes, hidden=hidden, dropout=dropout)
        self.pretrained_from: dict[str, str] = {}  # backbone -> where its weights came from (provenance)
        self.in_chans = in_chans

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.adapter(x)
        return torch.cat([b.pool(b.forward_map(x)) for b in self.backbones.values()], dim=1)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def fold_input_adapter(self) -> bool:
        """Fold a pointwise adapter into every backbone's first convolution, in place; False if it is not one.

        For inference graphs (ONNX export): the same function, without the adapter's pass over the
        image and with a first convolution over ``in_chans`` channels instead of 3, as timm's own
        ``in_chans=1`` stem. Not with per-backbone normalisation, which would shift the padding.
        """
        mix = pointwise_mix(self.adapter, self.in_chans)
        convs = [b.first_conv() for b in self.backbones.values()]
        if (mix is None or any(not isinstance(b.normalize, nn.Identity) for b in self.backbones.values())
                or any(conv.groups != 1 for conv in convs)):  # fmt: skip
            return False
        with torch.no_grad():
            for conv in convs:
                conv.weight = nn.Parameter(torch.einsum("ocij,cn->onij", conv.weight, mix), requires_grad=False)
                conv.in_channels = self.in_chans
        self.adapter = nn.Identity()
        return True

    def backbone_blocks(self) -> list[nn.Module]:
        """Adapter (if learnable), then the backbones' stages interleaved by depth.

        The stage lists are aligned at the output end and interleaved, so the last N blocks are
        the deepest stages of every backbone in turn (DenseNet stage 5, ResNet stage 5, DenseNet
        stage 4, ...): ``finetune-last-N`` unfreezes comparable depths of each branch.
        """
        stage_lists = [b.stages() for b in self.backbones.values()]
        depth = max(len(s) for s in stage_lists)
        interleaved = [
            stages[j - (depth - len(stages))]
            for j in range(depth)
            for stages in stage_lists
            if j >= depth - len(stages)
        ]
        learnable_adapter = [self.adapter] if list(self.adapter.parameters()) else []
        return learnable_adapter + interleaved

    def head_modules(self) -> list[nn.Module]:
        return [self.head]

    def cam_target_layers(self) -> dict[str, nn.Module]:
        return {name: b.cam_layer() for name, b in self.backbones.items()}

    def load_pretrained(self, pretrained: Pretrained, *, trust_pickle: bool = False) -> None:
        """``"imagenet"`` for every backbone, one file for a single backbone, or a mapping backbone -> either."""
        if isinstance(pretrained, Mapping):
            unknown = sorted(set(pretrained) - set(self.backbones))
            if unknown:
                raise ConfigError(
                    f"pretrained names backbone {unknown[0]!r}; this model has {', '.join(self.backbones)}"
                )
            sources = {k: v for k, v in pretrained.items() if v is not None}
        elif str(pretrained) == "imagenet" or len(self.backbones) == 1:
            sources = dict.fromkeys(self.backbones, pretrained)
        else:
            raise ConfigError(
                f"one weights file cannot fill {len(self.backbones)} backbones; pass pretrained='imagenet' or a "
                f"mapping {{{', '.join(repr(b) + ': path' for b in self.backbones)}}}"
            )
        for name, source in sources.items():
            source = source if str(source) == "imagenet" else Path(source)
            self.pretrained_from[name] = self.backbones[name].load_pretrained(source, trust_pickle=trust_pickle)


def _register_single(arch: str) -> None:
    def factory(
        num_classes: int,
        in_chans: int = 1,
        input_adapter: str = "conv",
        normalize: bool = False,
        hidden: int = 0,
        dropout: float = 0.0,
    ) -> BackboneClassifier:
        return BackboneClassifier(
            [arch], num_classes, in_chans=in_chans, input_adapter=input_adapter,
            normalize=normalize, hidden=hidden, dropout=dropout,
        )  # fmt: skip

    factory.__doc__ = f"timm {arch} (ImageNet recipe, num_classes=0) + mammolens head."
    MODELS.add(arch, factory)


for _arch in BACKBONES:
    _register_single(_arch)
