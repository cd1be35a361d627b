"""Lesion-level steps: multi-scale crops at native resolution, and hand-crafted descriptors.

``multiscale_crop`` cuts, from the full-resolution film (put it before any ``resize``), square crops
centred on the finding: one per ``scales`` entry with half-side ``k`` x the finding's radius, and
optionally one of fixed physical side ``fixed_mm`` (so the lesion's size stays visible after every
crop is resized to ``size``). The crops are stacked as channels: a (C, size, size) array, which a
3-channel input maps onto an RGB-pretrained backbone. A crop reaching past the film's edge is padded
with zeros (background), never slid inwards, so the finding stays at the centre of every channel.
ROIs are returned in channel 0's coordinates.

``lesion_descriptors`` records size, intensity and GLCM texture descriptors on the Sample (see
``descriptors.py``); the cache stores them beside the array.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from mammolens.preprocess.descriptors import intensity_descriptors, texture_descriptors
from mammolens.preprocess.sample import Sample
from mammolens.preprocess.steps import STEPS
from mammolens.utils.errors import DataError


def _finding(sample: Sample, step: str) -> tuple[float, float, float]:
    """Centre and radius of the box holding every ROI circle (one finding per lesion sample)."""
    if not sample.rois:
        raise DataError(f"{step}: sample has no ROI (lesion steps need the finding's circle)")
    rois = np.asarray(sample.rois, dtype=np.float64)
    lo = (rois[:, :2] - rois[:, 2:]).min(axis=0)
    hi = (rois[:, :2] + rois[:, 2:]).max(axis=0)
    centre = (lo + hi) / 2
    return float(centre[0]), float(centre[1]), float((hi - lo).max() / 2)


def _pixel_mm(sample: Sample, configured: float | None, step: str) -> float:
    """The file's pixel spacing when it has one, else the configured one."""
    value = sample.pixel_mm if sample.pixel_mm is not None else configured
    if value is None:
        raise DataError(f"{step}: the image has no pixel spacing; set {step}.pixel_mm (MIAS: 0.2)")
    return float(value)


def padded_crop(pixels: np.ndarray, cx: float, cy: float, side: float) -> tuple[np.ndarray, int, int]:
    """A ``side`` x ``side`` window centred on (cx, cy), zero-padded where it leaves the image;
    returns it with its top-left corner in image coordinates (which may be negative)."""
    n = max(1, int(round(side)))
    # pixel centres sit at integers: a window [left, left + n) is centred on left + (n - 1) / 2
    left, top = (int(np.floor(c - (n - 1) / 2 + 0.5)) for c in (cx, cy))
    out = np.zeros((n, n), np.float32)
    h, w = pixels.shape
    y0, y1, x0, x1 = max(top, 0), min(top + n, h), max(left, 0), min(left + n, w)
    if y1 > y0 and x1 > x0:
        out[y0 - top : y1 - top, x0 - left : x1 - left] = pixels[y0:y1, x0:x1]
    return out, left, top


def _resize(crop: np.ndarray, size: int) -> np.ndarray:
    interpolation = cv2.INTER_AREA if crop.shape[0] > size else cv2.INTER_CUBIC
    return np.clip(cv2.resize(crop, (size, size), interpolation=interpolation), 0.0, 1.0)


@STEPS.register("multiscale_crop")
@dataclass(frozen=True)
class MultiscaleCrop:
    """Crops at ``scales`` x the finding's radius (half-side; at least ``min_size`` px) and, with
    ``fixed_mm``, one of that physical side; each resized to ``size``; stacked as channels."""

    scales: tuple[float, ...] = (1.0, 2.0, 4.0)
    fixed_mm: float | None = None
    pixel_mm: float | None = None  # used when the file carries no pixel spacing (MIAS: 0.2 mm at 1024 px)
    size: int = 224
    min_size: int = 32

    def __post_init__(self) -> None:
        if not self.scales and self.fixed_mm is None:
            raise ValueError("multiscale_crop needs at least one of scales or fixed_mm")
        if any(k <= 0 for k in self.scales):
            raise ValueError(f"multiscale_crop.scales must be positive, got {list(self.scales)}")
        if self.fixed_mm is not None and self.fixed_mm <= 0:
            raise ValueError(f"multiscale_crop.fixed_mm must be > 0, got {self.fixed_mm}")
        if self.pixel_mm is not None and self.pixel_mm <= 0:
            raise ValueError(f"multiscale_crop.pixel_mm must be > 0, got {self.pixel_mm}")
        if self.size < 8 or self.min_size < 1:
            raise ValueError(f"multiscale_crop needs size >= 8 and min_size >= 1, got {self.size}, {self.min_size}")

    def sides(self, sample: Sample) -> list[float]:
        """The side in film pixels of each channel's crop."""
        _, _, r = _finding(sample, "multiscale_crop")
        sides = [max(2.0 * k * r, float(self.min_size)) for k in self.scales]
        if self.fixed_mm is not None:
            sides.append(self.fixed_mm / _pixel_mm(sample, self.pixel_mm, "multiscale_crop"))
        return sides

    def __call__(self, sample: Sample) -> Sample:
        if sample.pixels.ndim != 2:
            raise DataError(f"multiscale_crop: expects a 2-D film, got shape {sample.pixels.shape}")
        cx, cy, _ = _finding(sample, "multiscale_crop")
        channels, first = [], None
        for side in self.sides(sample):
            crop, left, top = padded_crop(sample.pixels, cx, cy, side)
            channels.append(_resize(crop, self.size))
            if first is None:
                first = (left, top, self.size / crop.shape[0])
        left, top, s = first
        rois = tuple(((x - left + 0.5) * s - 0.5, (y - top + 0.5) * s - 0.5, r * s) for x, y, r in sample.rois)
        pixel_mm = None if sample.pixel_mm is None else sample.pixel_mm / s
        return sample.replace(pixels=np.stack(channels).astype(np.float32), rois=rois, mask=None, pixel_mm=pixel_mm)


@STEPS.register("lesion_descriptors")
@dataclass(frozen=True)
class LesionDescriptors:
    """Record descriptors of the finding on the Sample: ``radius`` (mm), ``intensity`` (inside the
    circle, in the ring around it, their contrast, margin gradient), ``texture`` (GLCM). Put it
    before any crop or resize so it sees the film at its own resolution."""

    radius: bool = True
    intensity: bool = True
    texture: bool = True
    pixel_mm: float | None = None  # used when the file carries no pixel spacing
    levels: int = 32
    distances: tuple[int, ...] = (1, 3)

    def __post_init__(self) -> None:
        if not (self.radius or self.intensity or self.texture):
            raise ValueError("lesion_descriptors: switch on at least one of radius, intensity, texture")
        if not 2 <= self.levels <= 256:
            raise ValueError(f"lesion_descriptors.levels must be within 2..256, got {self.levels}")
        if not self.distances or any(d < 1 for d in self.distances):
            raise ValueError(f"lesion_descriptors.distances must be positive pixel offsets, got {list(self.distances)}")

    def __call__(self, sample: Sample) -> Sample:
        if sample.pixels.ndim != 2:
            raise DataError("lesion_descriptors: put it before multiscale_crop (it needs the 2-D film)")
        cx, cy, r = _finding(sample, "lesion_descriptors")
        found: list[tuple[str, float]] = []
        if self.radius:
            found.append(("radius_mm", r * _pixel_mm(sample, self.pixel_mm, "lesion_descriptors")))
        if self.intensity:
            found += intensity_descriptors(sample.pixels, cx, cy, r)
        if self.texture:
            found += texture_descriptors(sample.pixels, cx, cy, r, levels=self.levels, distances=tuple(self.distances))
        return sample.replace(descriptors=(*sample.descriptors, *found))
