"""Preprocessing steps: small configurable callables, Sample -> Sample, registered by name.

Each step is a frozen dataclass whose fields are its parameters, so a step is built, validated
and hashed from the same ``{"name": ..., **params}`` dict that a config file holds. Every
geometric step moves the ROI circles (and the mask) with the pixels. Pixel centres sit at
integer coordinates: a crop shifts by the offset, a flip maps x -> W - 1 - x, a resize maps
x -> (x + 0.5) * scale - 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from mammolens.preprocess.sample import ROI, Sample
from mammolens.utils.errors import DataError
from mammolens.utils.registry import Registry

STEPS: Registry[type] = Registry("preprocessing step")

# Breast masks are found on a copy this size: connected components on a full 4500x2800 film
# cost ~50x more and find the same outline.
_MASK_SIDE = 512


def breast_mask(pixels: np.ndarray, threshold: float = 0.05) -> tuple[np.ndarray, float]:
    """The breast as the largest connected region above ``threshold``, on a downscaled copy.

    Returns the small bool mask and its scale (small side / full side). A low fixed level keeps
    the faint skin line that Otsu's level (0.2-0.35 on films) cuts off. Burned-in labels and
    markers are separate components and drop out; an opening cuts thin bridges to them. A thin
    band at the image edge is ignored while choosing the component, because scanned films carry
    bright frame lines there that would join the breast to every label; the breast is then
    extended back to the edge wherever it reached that band (the chest wall does).
    """
    scale = min(1.0, _MASK_SIDE / max(pixels.shape))
    small = pixels
    if scale < 1.0:
        size = (max(1, round(pixels.shape[1] * scale)), max(1, round(pixels.shape[0] * scale)))
        stride = max(1, int(max(pixels.shape) // (2 * _MASK_SIDE)))  # a 4x cheaper first cut, still averaged after
        small = cv2.resize(np.ascontiguousarray(pixels[::stride, ::stride]), size, interpolation=cv2.INTER_AREA)
    binary = (small > threshold).astype(np.uint8)
    edge = max(1, round(0.02 * max(binary.shape)))
    if min(binary.shape) <= 4 * edge:
        edge = 0
    else:
        binary[:edge], binary[-edge:], binary[:, :edge], binary[:, -edge:] = 0, 0, 0, 0
    binary = cv2.morphologyEx(binary, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7)))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if n <= 1:
        return np.zeros(small.shape, bool), scale
    largest = (labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)
    outline, _ = cv2.findContours(largest, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    mask = cv2.drawContours(np.zeros_like(largest), outline, -1, 1, thickness=cv2.FILLED).astype(bool)  # no holes
    if edge:
        mask[:edge], mask[-edge:] = mask[edge], mask[-edge - 1]
        mask[:, :edge], mask[:, -edge:] = mask[:, edge : edge + 1], mask[:, -edge - 1 : -edge]
    return mask, scale


def _crop(sample: Sample, top: int, bottom: int, left: int, right: int) -> Sample:
    return sample.replace(
        pixels=sample.pixels[top:bottom, left:right].copy(),  # a copy: later steps may write in place
        rois=tuple((x - left, y - top, r) for x, y, r in sample.rois),
        mask=None if sample.mask is None else sample.mask[top:bottom, left:right].copy(),
    )


def _flip(sample: Sample) -> Sample:
    width = sample.pixels.shape[1]
    return sample.replace(
        pixels=np.ascontiguousarray(sample.pixels[:, ::-1]),
        rois=tuple((width - 1 - x, y, r) for x, y, r in sample.rois),
        mask=None if sample.mask is None else np.ascontiguousarray(sample.mask[:, ::-1]),
    )


@STEPS.register("orient")
@dataclass(frozen=True)
class Orient:
    """Mirror so the chest wall is on the left, giving the model one breast orientation to learn.

    ``tissue`` (default) flips when the right half holds more breast: it reads the image itself,
    so a wrong or missing laterality header cannot flip a model's input (on mini-MIAS it puts
    the chest wall on the left for every film whose breast is clearly on one side; mdb151/152
    fill the frame). ``laterality`` trusts the L/R label and the standard storage of CBIS-DDSM
    and DICOM (a left breast stored chest wall on the left), which not every source follows:
    mini-MIAS films are stored mirrored (see its adapter), so there a right breast has its chest
    wall on the left. ``auto`` uses laterality when known and tissue otherwise.
    """

    by: Literal["auto", "laterality", "tissue"] = "tissue"

    def __post_init__(self) -> None:
        if self.by not in ("auto", "laterality", "tissue"):
            raise ValueError(f"orient.by must be 'auto', 'laterality' or 'tissue', got {self.by!r}")

    def __call__(self, sample: Sample) -> Sample:
        side = sample.laterality.upper()
        if self.by != "tissue" and side in ("L", "R"):
            return _flip(sample) if side == "R" else sample
        if self.by == "laterality":
            raise DataError("orient(by='laterality') needs a laterality of L or R; this sample has none")
        mask, _ = breast_mask(sample.pixels)
        half = mask.shape[1] // 2
        left, right = mask[:, :half].sum(), mask[:, mask.shape[1] - half :].sum()
        return _flip(sample) if right > left else sample


@STEPS.register("crop_breast")
@dataclass(frozen=True)
class CropBreast:
    """Crop to the breast and blank everything outside it (background, labels, markers).

    ``threshold`` is the intensity in [0, 1] above which a pixel may be breast (see
    ``breast_mask``). ``margin`` is a fraction of the image's longer side kept around the breast.
    """

    threshold: float = 0.05
    margin: float = 0.01
    blank_outside: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold < 1.0:
            raise ValueError(f"crop_breast.threshold must be in [0, 1), got {self.threshold}")
        if not 0.0 <= self.margin < 0.5:
            raise ValueError(f"crop_breast.margin must be in [0, 0.5), got {self.margin}")

    def __call__(self, sample: Sample) -> Sample:
        small, scale = breast_mask(sample.pixels, self.threshold)
        if not small.any():
            return sample.flagged("breast_not_found")
        height, width = sample.pixels.shape
        pad = int(round(self.margin * max(height, width)))
        rows, cols = np.nonzero(small)
        top = max(0, int(rows.min() / scale) - pad)
        bottom = min(height, int(np.ceil((rows.max() + 1) / scale)) + pad)
        left = max(0, int(cols.min() / scale) - pad)
        right = min(width, int(np.ceil((cols.max() + 1) / scale)) + pad)
        cropped = _crop(sample, top, bottom, left, right)
        if not self.blank_outside:
            return cropped
        grow = max(1, int(round(pad * scale)))
        small = cv2.dilate(small.astype(np.uint8), np.ones((2 * grow + 1, 2 * grow + 1), np.uint8))
        keep = cv2.resize(small, (width, height), interpolation=cv2.INTER_NEAREST)[top:bottom, left:right]
        pixels = cropped.pixels  # _crop copied it, so blanking in place leaves the input alone
        pixels[keep == 0] = 0.0
        return cropped.replace(pixels=pixels)


@STEPS.register("crop_roi")
@dataclass(frozen=True)
class CropROI:
    """Square crop around the lesion(s) for lesion-level tasks.

    The side is ``context`` times the diameter of the box holding every ROI circle, at least
    ``min_size`` pixels, moved (not padded) to stay inside the image. A sample without ROI is
    an error, or with ``on_missing='full'`` keeps the whole image and is flagged 'roi_missing'
    so the cache and the run summary report it: among lesion crops a whole film is a shortcut
    (the kind of input predicts the label), so ``full`` is only ever an explicit choice.
    """

    context: float = 1.5
    min_size: int = 64
    on_missing: Literal["full", "error"] = "error"

    def __post_init__(self) -> None:
        if self.context < 1.0:
            raise ValueError(f"crop_roi.context must be >= 1 (it multiplies the ROI), got {self.context}")
        if self.min_size < 1:
            raise ValueError(f"crop_roi.min_size must be >= 1, got {self.min_size}")
        if self.on_missing not in ("full", "error"):
            raise ValueError(f"crop_roi.on_missing must be 'full' or 'error', got {self.on_missing!r}")

    def __call__(self, sample: Sample) -> Sample:
        if not sample.rois:
            if self.on_missing == "error":
                raise DataError("crop_roi: sample has no ROI (set on_missing: full to keep the whole image)")
            return sample.flagged("roi_missing")
        rois = np.asarray(sample.rois, dtype=np.float64)
        lo = (rois[:, :2] - rois[:, 2:]).min(axis=0)
        hi = (rois[:, :2] + rois[:, 2:]).max(axis=0)
        centre = (lo + hi) / 2
        side = max(self.context * float((hi - lo).max()), float(self.min_size))
        height, width = sample.pixels.shape
        left, right = _window(centre[0], side, width)
        top, bottom = _window(centre[1], side, height)
        return _crop(sample, top, bottom, left, right)


def _window(centre: float, side: float, limit: int) -> tuple[int, int]:
    """[start, stop) of length ``side`` around ``centre``, slid to lie within [0, limit)."""
    length = min(int(round(side)), limit)
    start = int(round(centre + 0.5 - length / 2))
    start = min(max(start, 0), limit - length)
    return start, start + length


@STEPS.register("contrast_stretch")
@dataclass(frozen=True)
class ContrastStretch:
    """Map the breast's ``low``..``high`` percentiles to 0..1, so films and detectors agree.

    Percentiles come from the non-zero (breast) pixels only: a film's black background would
    otherwise pin the low end.
    """

    low: float = 2.0
    high: float = 98.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.low < self.high <= 100.0:
            raise ValueError(f"contrast_stretch needs 0 <= low < high <= 100, got {self.low}, {self.high}")

    def __call__(self, sample: Sample) -> Sample:
        pixels = sample.pixels
        step = max(1, int(np.sqrt(pixels.size / 1e6)))  # ~1M pixels pin the percentiles as well
        values = pixels[::step, ::step]
        values = values[values > 0]
        if values.size == 0:
            return sample
        lo, hi = np.percentile(values, [self.low, self.high])
        if hi <= lo:
            return sample
        out = (pixels - np.float32(lo)) * np.float32(1.0 / (hi - lo))
        return sample.replace(pixels=np.clip(out, 0.0, 1.0, out=out))


@STEPS.register("clahe")
@dataclass(frozen=True)
class Clahe:
    """Contrast-limited adaptive histogram equalisation (OpenCV, 16-bit, so no 8-bit banding).

    ``clip_limit`` is OpenCV's: a multiple of a tile's mean histogram bin count. Background
    pixels that were exactly zero stay zero.
    """

    clip_limit: float = 2.0
    tile_grid: int = 8

    def __post_init__(self) -> None:
        if self.clip_limit <= 0:
            raise ValueError(f"clahe.clip_limit must be > 0, got {self.clip_limit}")
        if self.tile_grid < 1:
            raise ValueError(f"clahe.tile_grid must be >= 1, got {self.tile_grid}")

    def __call__(self, sample: Sample) -> Sample:
        pixels = sample.pixels
        as16 = np.rint(np.clip(pixels, 0.0, 1.0) * 65535.0).astype(np.uint16)
        clahe = cv2.createCLAHE(clipLimit=self.clip_limit, tileGridSize=(self.tile_grid, self.tile_grid))
        out = clahe.apply(as16).astype(np.float32) * np.float32(1.0 / 65535.0)
        out[pixels <= 0] = 0.0
        return sample.replace(pixels=out)


@STEPS.register("resize")
@dataclass(frozen=True)
class Resize:
    """Resize to ``size`` x ``size``; ``keep_aspect`` fits the longer side and pads with zeros.

    Shrinking uses area averaging (OpenCV INTER_AREA), which anti-aliases a 4500x2800 film down
    to 224 without the moire a point sampler gives; growing uses bicubic. With unequal x and y
    scales (keep_aspect off) a circle's radius takes the larger scale, so it still covers its
    lesion.
    """

    size: int = 224
    keep_aspect: bool = True

    def __post_init__(self) -> None:
        if self.size < 8:
            raise ValueError(f"resize.size must be >= 8, got {self.size}")

    def __call__(self, sample: Sample) -> Sample:
        height, width = sample.pixels.shape
        if self.keep_aspect:
            scale = self.size / max(height, width)
            new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
        else:
            new_w = new_h = self.size
        sx, sy = new_w / width, new_h / height
        shrink = sx < 1 or sy < 1
        pixels = cv2.resize(
            np.ascontiguousarray(sample.pixels),
            (new_w, new_h),
            interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC,
        )
        pixels = np.clip(pixels, 0.0, 1.0, out=pixels)
        mask = None
        if sample.mask is not None:
            mask = cv2.resize(sample.mask.astype(np.float32), (new_w, new_h), interpolation=cv2.INTER_AREA) >= 0.5
        left, top = (self.size - new_w) // 2, (self.size - new_h) // 2
        if (new_w, new_h) != (self.size, self.size):
            canvas = np.zeros((self.size, self.size), np.float32)
            canvas[top : top + new_h, left : left + new_w] = pixels
            pixels = canvas
            if mask is not None:
                full = np.zeros((self.size, self.size), bool)
                full[top : top + new_h, left : left + new_w] = mask
                mask = full
        rois: tuple[ROI, ...] = tuple(
            ((x + 0.5) * sx - 0.5 + left, (y + 0.5) * sy - 0.5 + top, r * max(sx, sy))
            for x, y, r in sample.rois
        )
        pixel_mm = None if sample.pixel_mm is None else sample.pixel_mm / ((sx + sy) / 2)
        return sample.replace(pixels=pixels.astype(np.float32, copy=False), rois=rois, mask=mask, pixel_mm=pixel_mm)
