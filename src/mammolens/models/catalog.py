"""Model names, known before torch or timm is imported: ``mammolens models`` and config checks
answer at once, and each model's module is imported only when that model is built."""

from __future__ import annotations

from mammolens.registry import Registry

# timm architectures with a mammolens recipe (stages, CAM layer, offline weights): backbones.py.
BACKBONES = ("densenet121", "resnet50", "vgg16", "mobilenetv2_100", "tf_efficientnet_lite0", "inception_v3")

# A factory takes (num_classes, in_chans, **architecture options) and returns an untrained model
# with a ``load_pretrained(source, trust_pickle)`` method.
MODELS: Registry = Registry("model")

for _arch in BACKBONES:
    MODELS.lazy(_arch, "mammolens.models.classifier")
for _name in ("hybrid", "hybrid-lite"):
    MODELS.lazy(_name, "mammolens.models.hybrid")
MODELS.lazy("scratch-cnn", "mammolens.models.scratch")
MODELS.lazy("attention", "mammolens.models.attention")
MODELS.lazy("patch-classifier", "mammolens.patches.model")  # issue 14: patch classifier -> whole film
MODELS.lazy("bilateral", "mammolens.models.bilateral")


def list_models() -> list[str]:
    return MODELS.names()
