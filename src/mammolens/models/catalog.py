"""Model names, known before torch or timm is imported: ``mammolens models`` and config checks
answer at once, and each model's module is imported only when that model is built."""

from __future__ import annotations

from mammolens.utils.registry import Registry

# timm architectures with a mammolens recipe (stages, CAM layer, offline weights): backbones.py.
BACKBONES = (
    "densenet121", "resnet50", "vgg16", "mobilenetv2_100", "tf_efficientnet_lite0", "tf_efficientnet_lite1",
    "tf_efficientnet_lite2", "inception_v3", "vit_small_patch14_dinov2",
)  # fmt: skip

# timm arguments a backbone is built with beyond num_classes / in_chans. DINOv2's native grid is
# 37x37 patches (518 px); mammolens' default input is 224 px = 16x16 patches, so the position
# embedding is stored at 16x16 (resampled once when weights load) and resampled by timm per input
# for any other size (dynamic_img_size).
TIMM_OPTIONS: dict[str, dict[str, object]] = {
    "vit_small_patch14_dinov2": {"img_size": 224, "dynamic_img_size": True},
}

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
