"""Hand-crafted lesion descriptors: size, intensity inside and around the circle, margin, GLCM texture.

They live in the preprocessing room because they are a function of exactly what the Pipeline sees
(the film and the finding's circle): a descriptor step records them on the Sample, the cache stores
them beside the array, and at inference ``Pipeline(bundle.preprocess)`` recomputes them from the
same image + ROI the predictor gets, so a bundle that uses them stays self-contained.
"""

from __future__ import annotations

import cv2
import numpy as np

GLCM_PROPS = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM")


def _disc_and_ring(shape: tuple[int, int], cx: float, cy: float, r: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
    return d <= r, (d > r) & (d <= 2 * r), (d > 0.8 * r) & (d <= 1.2 * r)


def _stats(prefix: str, values: np.ndarray) -> list[tuple[str, float]]:
    if values.size == 0:
        return [(f"{prefix}_{k}", 0.0) for k in ("mean", "std", "p10", "p90")]
    p10, p90 = np.percentile(values, [10, 90])
    return [(f"{prefix}_mean", float(values.mean())), (f"{prefix}_std", float(values.std())),
            (f"{prefix}_p10", float(p10)), (f"{prefix}_p90", float(p90))]


def intensity_descriptors(pixels: np.ndarray, cx: float, cy: float, r: float) -> list[tuple[str, float]]:
    """Statistics inside the circle and in the ring r..2r around it, their contrast, and the mean
    gradient magnitude on the circle's outline band (a sharp margin vs an ill-defined one)."""
    r = max(r, 1.0)
    top, left = max(0, int(cy - 2 * r) - 1), max(0, int(cx - 2 * r) - 1)
    window = pixels[top : int(cy + 2 * r) + 2, left : int(cx + 2 * r) + 2].astype(np.float32)
    if window.size == 0:
        window = np.zeros((1, 1), np.float32)
    disc, ring, band = _disc_and_ring(window.shape, cx - left, cy - top, r)
    inside, around = window[disc], window[ring]
    out = _stats("inside", inside) + _stats("ring", around)
    contrast = (inside.mean() if inside.size else 0.0) - (around.mean() if around.size else 0.0)
    gx, gy = cv2.Sobel(window, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(window, cv2.CV_32F, 0, 1, ksize=3)
    grad = np.sqrt(gx * gx + gy * gy)
    out += [("inside_minus_ring", float(contrast)), ("margin_gradient", float(grad[band].mean()) if band.any() else 0.0)]
    return out


def texture_descriptors(pixels: np.ndarray, cx: float, cy: float, r: float, *, levels: int = 32,
                        distances: tuple[int, ...] = (1, 3), max_side: int = 256) -> list[tuple[str, float]]:
    """scikit-image GLCM properties of the square inscribed in the circle (the lesion's inside; its
    margin is ``margin_gradient``'s), at the film's own resolution (area-averaged down to ``max_side``
    only for very large lesions), quantised to ``levels`` grey levels over [0, 1] so lesions compare,
    averaged over 4 angles, one value per distance."""
    from skimage.feature import graycomatrix, graycoprops

    half = max(r / np.sqrt(2.0), 2.0)
    top, left = max(0, int(round(cy - half))), max(0, int(round(cx - half)))
    patch = pixels[top : int(round(cy + half)) + 1, left : int(round(cx + half)) + 1].astype(np.float32)
    if min(patch.shape) < 2:
        patch = np.zeros((4, 4), np.float32)
    if max(patch.shape) > max_side:
        f = max_side / max(patch.shape)
        patch = cv2.resize(patch, (max(2, round(patch.shape[1] * f)), max(2, round(patch.shape[0] * f))),
                           interpolation=cv2.INTER_AREA)
    # clamp to the top level before the cast: 1.0 * 256 levels would wrap to 0 in uint8
    q = np.minimum(np.clip(np.nan_to_num(patch), 0.0, 1.0) * levels, levels - 1).astype(np.uint8)
    glcm = graycomatrix(q, distances=list(distances), angles=[0, np.pi / 4, np.pi / 2, 3 * np.pi / 4],
                        levels=levels, symmetric=True, normed=True)
    out = []
    for prop in GLCM_PROPS:
        values = np.nan_to_num(graycoprops(glcm, prop))  # (distances, angles); correlation of a flat patch is nan
        out += [(f"glcm_{prop}_d{d}", float(values[i].mean())) for i, d in enumerate(distances)]
    return out
