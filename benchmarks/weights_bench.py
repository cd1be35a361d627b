"""How ImageNet-like the offline backbones' features are, where a file has no ImageNet head.

EfficientNet-Lite0 (its file names scikit-image's cat a cat) is the verified ImageNet model. For
each backbone, two views (whole, and a seeded crop) of 18 scikit-image photos go through it; a
ridge (standardised features, alpha 100) fitted on the other photos predicts each photo's Lite0
logits, scored by the mean correlation of predicted and true logits per view; linear CKA between
the features and the logits needs no fit. Random weights are the floor, the ImageNet nets with a
verified head the reference. The test (tests/test_weights_packages.py) asserts the DenseNet121
rows of this table.

    python benchmarks/weights_bench.py --size 96 --out bench-weights.json
"""

from __future__ import annotations

import argparse
import json
import time

import timm
import torch

from mammolens.models import weights
from mammolens.models.catalog import TIMM_OPTIONS
from mammolens.models.feature_check import (
    held_out_photo_fit,
    linear_cka,
    photo_crops,
    photo_groups,
)
from mammolens.models.weights import load_backbone_weights

ROWS = [  # (backbone, ImageNet weights?)
    ("densenet121", True), ("densenet121", False), ("tf_efficientnet_lite1", True),
    ("mobilenetv2_100", True), ("vit_small_patch14_dinov2", True), ("vit_small_patch14_dinov2", False),
]  # fmt: skip








def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=96, help="input side (a ViT gets the nearest multiple of 14)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    weights._hub_unreachable = lambda: "benchmark: offline files only"
    x = photo_crops(args.size)
    groups = photo_groups()
    lite0 = timm.create_model("tf_efficientnet_lite0").eval()
    load_backbone_weights(lite0, "tf_efficientnet_lite0", "imagenet")
    with torch.no_grad():
        logits = lite0(x).numpy()
    rows = []
    for arch, pretrained in ROWS:
        torch.manual_seed(0)
        model = timm.create_model(arch, num_classes=0, **TIMM_OPTIONS.get(arch, {})).eval()
        origin = load_backbone_weights(model, arch, "imagenet") if pretrained else "random"
        inputs = x
        if arch.startswith("vit_"):
            side = max(14, round(args.size / 14) * 14)
            inputs = torch.nn.functional.interpolate(x, size=(side, side), mode="bilinear", antialias=True)
        start = time.perf_counter()
        with torch.no_grad():
            features = model(inputs).numpy()
        row = {
            "backbone": arch, "weights": origin, "ridge_corr": round(held_out_photo_fit(features, logits, groups), 3),
            "cka": round(linear_cka(features, logits), 3), "forward_s": round(time.perf_counter() - start, 1),
        }  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"size": args.size, "views": len(x), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
