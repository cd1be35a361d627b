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

import numpy as np
import timm
import torch
from skimage import data
from sklearn.linear_model import Ridge

from mammolens.models import weights
from mammolens.models.catalog import TIMM_OPTIONS
from mammolens.models.weights import load_backbone_weights

PHOTOS = [
    "astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
    "colorwheel", "brick", "grass", "gravel", "camera", "coins", "moon", "page", "text", "cell", "clock",
]  # fmt: skip
ROWS = [  # (backbone, ImageNet weights?)
    ("densenet121", True), ("densenet121", False), ("tf_efficientnet_lite1", True),
    ("mobilenetv2_100", True), ("vit_small_patch14_dinov2", True), ("vit_small_patch14_dinov2", False),
]  # fmt: skip


def photo_crops(size: int) -> torch.Tensor:
    rng = np.random.default_rng(0)
    crops = []
    for name in PHOTOS:
        image = getattr(data, name)()
        image = np.stack([image] * 3, -1) if image.ndim == 2 else image[..., :3]
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255
        h, w = x.shape[1:]
        for scale in (1.0, rng.uniform(0.4, 0.8)):
            side = int(min(h, w) * scale)
            top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
            crop = x[None, :, top : top + side, left : left + side]
            crops.append(torch.nn.functional.interpolate(crop, size=(size, size), mode="bilinear", antialias=True)[0])
    mean = torch.tensor((0.485, 0.456, 0.406))[:, None, None]
    std = torch.tensor((0.229, 0.224, 0.225))[:, None, None]
    return (torch.stack(crops) - mean) / std


def held_out_fit(features: np.ndarray, logits: np.ndarray, groups: np.ndarray) -> float:
    predicted = np.zeros_like(logits)
    for g in np.unique(groups):
        train, test = groups != g, groups == g
        mu, sd = features[train].mean(0), features[train].std(0) + 1e-3
        predicted[test] = Ridge(alpha=100.0).fit((features[train] - mu) / sd, logits[train]).predict((features[test] - mu) / sd)
    p, y = predicted - predicted.mean(1, keepdims=True), logits - logits.mean(1, keepdims=True)
    return float(((p * y).sum(1) / np.sqrt((p**2).sum(1) * (y**2).sum(1))).mean())


def linear_cka(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(0), b - b.mean(0)
    return float(np.linalg.norm(a.T @ b) ** 2 / (np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=96, help="input side (a ViT gets the nearest multiple of 14)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    weights._hub_unreachable = lambda: "benchmark: offline files only"
    x = photo_crops(args.size)
    groups = np.repeat(np.arange(len(PHOTOS)), 2)
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
            "backbone": arch, "weights": origin, "ridge_corr": round(held_out_fit(features, logits, groups), 3),
            "cka": round(linear_cka(features, logits), 3), "forward_s": round(time.perf_counter() - start, 1),
        }  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"size": args.size, "views": len(x), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
