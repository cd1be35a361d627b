"""Does a backbone without an ImageNet head carry ImageNet features? Measured, not assumed.

A weight file with no classifier (the Keras DenseNet121, the ONNX DINOv2) cannot name a cat. Its
features can still be compared with a verified ImageNet model's logits on natural photos: a ridge
fitted on the other photos predicts each photo's logits (held out by photo), and linear CKA
compares the two representations. Real ImageNet features score far above the same net at random
initialisation (tests/test_weights_packages.py, benchmarks/weights_bench.py).
"""

from __future__ import annotations

import numpy as np
import torch

# scikit-image's bundled photos: natural scenes, textures, micrographs and text
PHOTOS = [
    "astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
    "colorwheel", "brick", "grass", "gravel", "camera", "coins", "moon", "page", "text", "cell", "clock",
]  # fmt: skip
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def photo_crops(size: int) -> torch.Tensor:
    """Two views (whole, and a seeded crop) of each photo, ImageNet-standardised, (2 * len(PHOTOS), 3, s, s)."""
    from skimage import data

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
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    return (torch.stack(crops) - mean) / std


def photo_groups() -> np.ndarray:
    """The photo each of ``photo_crops``' views comes from (the unit held out)."""
    return np.repeat(np.arange(len(PHOTOS)), 2)


def held_out_photo_fit(features: np.ndarray, logits: np.ndarray, groups: np.ndarray) -> float:
    """Mean correlation (over images) of a ridge's predicted logits with the true ones, each photo
    predicted by a ridge fitted on the other photos (features standardised on the training part)."""
    from sklearn.linear_model import Ridge

    predicted = np.zeros_like(logits)
    for g in np.unique(groups):
        train, test = groups != g, groups == g
        mu, sd = features[train].mean(0), features[train].std(0) + 1e-3
        ridge = Ridge(alpha=100.0).fit((features[train] - mu) / sd, logits[train])
        predicted[test] = ridge.predict((features[test] - mu) / sd)
    p = predicted - predicted.mean(1, keepdims=True)
    y = logits - logits.mean(1, keepdims=True)
    return float(((p * y).sum(1) / np.sqrt((p**2).sum(1) * (y**2).sum(1))).mean())


def linear_cka(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(0), b - b.mean(0)
    return float(np.linalg.norm(a.T @ b) ** 2 / (np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b)))
