"""The hybrid fusion models: several ImageNet backbones see the same adapted image, and their
pooled features are concatenated before one dense head.

``hybrid`` is the seed projects' DenseNet121 + ResNet50 (1024 + 2048 features); ``hybrid-lite``
is the same fusion over MobileNetV2 + EfficientNet-Lite0, the two backbones whose real ImageNet
weights can be installed offline, so it is the hybrid that can start from ImageNet here.
"""

from __future__ import annotations

from collections.abc import Sequence

from mammolens.models.classifier import BackboneClassifier
from mammolens.models.registry import MODELS
from mammolens.utils.errors import ConfigError


def _register_fusion(name: str, default_backbones: tuple[str, ...]) -> None:
    """Register a fusion model; the variants differ only in which backbones they fuse by default."""

    def factory(
        num_classes: int,
        in_chans: int = 1,
        backbones: Sequence[str] = default_backbones,
        input_adapter: str = "conv",
        normalize: bool = False,
        hidden: int = 256,
        dropout: float = 0.5,
    ) -> BackboneClassifier:
        if isinstance(backbones, str) or len(backbones) < 2:
            raise ConfigError(f"model option 'backbones' of a hybrid needs two or more backbones, got {backbones!r}")
        return BackboneClassifier(
            list(backbones), num_classes, in_chans=in_chans, input_adapter=input_adapter,
            normalize=normalize, hidden=hidden, dropout=dropout,
        )  # fmt: skip

    MODELS.add(name, factory)


_register_fusion("hybrid", ("densenet121", "resnet50"))
_register_fusion("hybrid-lite", ("mobilenetv2_100", "tf_efficientnet_lite0"))
