"""Whole-breast descriptors for density: how bright and how textured the breast is, recorded on the Sample.

Density is the share of fibroglandular (bright, structured) tissue in the breast, so the simplest
measurements of it are the breast's intensity distribution and its grey-level texture. The step
reads the breast as the non-zero pixels ``crop_breast`` left (blanked background), at the film's
intensity scale, so put it after ``crop_breast`` and before ``contrast_stretch``/``clahe``, which
would equalise away the very brightness it measures. The cache stores the values beside the array
and ``head_inputs: descriptors|both`` feeds them to the logistic head, as with lesion descriptors.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from mammolens.utils.errors import DataError
from mammolens.preprocess.lesion import _pixel_mm
from mammolens.preprocess.sample import Sample
from mammolens.preprocess.steps import STEPS

INTENSITY = ("mean", "median", "std", "p10", "p25", "p75", "p90", "bright_fraction", "area_cm2")
GLCM = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation")


def intensity_stats(values: np.ndarray, pixel_mm: float, bright: float) -> list[tuple[str, float]]:
    """The breast's grey-level distribution, the share of it brighter than ``bright``, and its area."""
    p10, p25, median, p75, p90 = np.percentile(values, [10, 25, 50, 75, 90])
    stats = {"mean": values.mean(), "median": median, "std": values.std(), "p10": p10, "p25": p25, "p75": p75,
             "p90": p90, "bright_fraction": (values > bright).mean(), "area_cm2": values.size * pixel_mm**2 / 100}
    return [(name, float(stats[name])) for name in INTENSITY]


def breast_texture(pixels: np.ndarray, pixel_mm: float, texture_mm: float, levels: int,
                   distances: tuple[int, ...]) -> list[tuple[str, float]]:
    """GLCM properties over the breast alone, on the film area-averaged to ``texture_mm`` pixels.

    Grey level 0 is kept for the background and its co-occurrences are dropped, so the breast's
    outline does not count as texture; the breast is quantised over its own 1st-99th percentiles
    (texture independent of exposure, which ``intensity_stats`` measures).
    """
    from skimage.feature import graycomatrix, graycoprops

    f = min(1.0, pixel_mm / texture_mm)
    small = cv2.resize(pixels, (max(2, round(pixels.shape[1] * f)), max(2, round(pixels.shape[0] * f))),
                       interpolation=cv2.INTER_AREA) if f < 1.0 else pixels
    inside = cv2.resize((pixels > 0).astype(np.uint8), small.shape[::-1], interpolation=cv2.INTER_NEAREST) > 0
    inside &= small > 0
    out: list[tuple[str, float]] = []
    if inside.sum() < 16:
        return [(f"glcm_{p}_d{d}", 0.0) for p in GLCM for d in distances] + [("entropy", 0.0), ("local_std", 0.0)]
    lo, hi = np.percentile(small[inside], [1, 99])
    scaled = np.clip((small - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    q = np.where(inside, 1 + np.minimum((scaled * levels).astype(np.int64), levels - 1), 0).astype(np.uint8)
    glcm = graycomatrix(q, distances=list(distances), angles=[0, np.pi / 4, np.pi / 2, 3 * np.pi / 4],
                        levels=levels + 1, symmetric=True, normed=False)[1:, 1:].astype(np.float64)
    glcm /= np.maximum(glcm.sum(axis=(0, 1), keepdims=True), 1.0)
    for prop in GLCM:
        values = np.nan_to_num(graycoprops(glcm, prop))  # (distances, angles)
        out += [(f"glcm_{prop}_d{d}", float(values[i].mean())) for i, d in enumerate(distances)]
    hist = np.bincount(q[inside], minlength=levels + 1)[1:] / inside.sum()
    out.append(("entropy", float(-(hist[hist > 0] * np.log2(hist[hist > 0])).sum())))
    blur = cv2.GaussianBlur(scaled.astype(np.float32), (0, 0), 2.0)
    local = cv2.GaussianBlur((scaled.astype(np.float32) - blur) ** 2, (0, 0), 2.0)
    out.append(("local_std", float(np.sqrt(local[inside]).mean())))
    return out


@STEPS.register("breast_descriptors")
@dataclass(frozen=True)
class BreastDescriptors:
    """Record the whole breast's intensity statistics (``intensity``: mean, median, std, percentiles,
    the share brighter than ``bright``, area in cm²) and GLCM texture (``texture``, at ``texture_mm``
    pixels) on the Sample. ``keep``: only these names, in this order (e.g. ``[mean]``)."""

    intensity: bool = True
    texture: bool = True
    bright: float = 0.6
    pixel_mm: float | None = None  # used when the file carries no pixel spacing (MIAS: 0.2)
    texture_mm: float = 0.8
    levels: int = 16
    distances: tuple[int, ...] = (1, 2, 4)
    keep: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not (self.intensity or self.texture):
            raise ValueError("breast_descriptors: switch on at least one of intensity, texture")
        if not 0.0 < self.bright < 1.0:
            raise ValueError(f"breast_descriptors.bright must be in (0, 1), got {self.bright}")
        if not 2 <= self.levels <= 254:
            raise ValueError(f"breast_descriptors.levels must be within 2..254, got {self.levels}")
        if self.texture_mm <= 0 or not self.distances or any(d < 1 for d in self.distances):
            raise ValueError("breast_descriptors: texture_mm must be > 0 and distances positive pixel offsets")
        known = list(self._names())
        unknown = [k for k in self.keep or () if k not in known]
        if unknown:
            raise ValueError(f"breast_descriptors.keep: unknown {', '.join(unknown)}; known: {', '.join(known)}")

    def _names(self) -> list[str]:
        names = list(INTENSITY) if self.intensity else []
        if self.texture:
            names += [f"glcm_{p}_d{d}" for p in GLCM for d in self.distances] + ["entropy", "local_std"]
        return names

    def __call__(self, sample: Sample) -> Sample:
        if sample.pixels.ndim != 2:
            raise DataError("breast_descriptors: put it before any step that stacks channels (it needs the 2-D film)")
        pixels = np.asarray(sample.pixels, dtype=np.float32)
        values = pixels[pixels > 0]
        if values.size == 0:
            raise DataError("breast_descriptors: no breast pixels; put it after crop_breast, which blanks the background")
        pixel_mm = _pixel_mm(sample, self.pixel_mm, "breast_descriptors")
        found: list[tuple[str, float]] = []
        if self.intensity:
            found += intensity_stats(values, pixel_mm, self.bright)
        if self.texture:
            found += breast_texture(pixels, pixel_mm, self.texture_mm, self.levels, tuple(self.distances))
        if self.keep:
            by_name = dict(found)
            found = [(k, by_name[k]) for k in self.keep]
        return sample.replace(descriptors=(*sample.descriptors, *found))
