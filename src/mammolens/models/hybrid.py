"""The hybrid fusion models: several ImageNet backbones see the same adapted image, and their
pooled features are concatenated before one dense head.

``hybrid`` is the seed projects' DenseNet121 + ResNet50 (1024 + 2048 features); ``hybrid-lite``
is the same fusion over MobileNetV2 + EfficientNet-Lite0, the two backbones whose real ImageNet
weights can be installed offline, so it is the hybrid that can start from ImageNet here.
"""

from __future__ import annotations

from collections.abc import Sequence

from mammolens.errors import ConfigError
from mammolens.models.classifier import BackboneClassifier
from mammolens.models.registry import MODELS


def _fusion(
    num_classes: int,
    in_chans: int,
    backbones: Sequence[str],
    input_adapter: str,
    normalize: bool,
    hidden: int,
    dropout: float,
) -> BackboneClassifier:
    if isinstance(backbones, str) or len(backbones) < 2:
        raise ConfigError(f"model option 'backbones' of a hybrid needs two or more backbones, got {backbones!r}")
    return BackboneClassifier(
        list(backbones), num_classes, in_chans=in_chans, input_adapter=input_adapter,
        normalize=normalize, hidden=hidden, dropout=dropout,
    )  # fmt: skip


@MODELS.register("hybrid")
def hybrid(
    num_classes: int,
    in_chans: int = 1,
    backbones: Sequence[str] = ("densenet121", "resnet50"),
    input_adapter: str = "conv",
    normalize: bool = False,
    hidden: int = 256,
    dropout: float = 0.5,
) -> BackboneClassifier:
    return _fusion(num_classes, in_chans, backbones, input_adapter, normalize, hidden, dropout)


@MODELS.register("hybrid-lite")
def hybrid_lite(
    num_classes: int,
    in_chans: int = 1,
    backbones: Sequence[str] = ("mobilenetv2_100", "tf_efficientnet_lite0"),
    input_adapter: str = "conv",
    normalize: bool = False,
    hidden: int = 256,
    dropout: float = 0.5,
) -> BackboneClassifier:
    return _fusion(num_classes, in_chans, backbones, input_adapter, normalize, hidden, dropout)
