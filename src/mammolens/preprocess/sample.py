"""The unit a preprocessing step works on, and how a manifest row becomes one.

A step changes pixels *and* the ROI circles together, so lesion coordinates stay true in
whatever image the model finally sees (crop shifts them, resize scales them, flip mirrors them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from mammolens.data.rois import parse_rois
from mammolens.utils.errors import DataError

ROI = tuple[float, float, float]  # (x, y, r): x = column, y = row, origin top-left, in pixels

# loader(path, frame) -> a 2-D float array in [0, 1], or an object with `.pixels` (and
# optionally `.meta.laterality`) such as mammolens.io.Image. Must be picklable (a module-level
# function) because cache workers run in separate processes.
Loader = Callable[[str, "int | None"], Any]

MASK_SIZE_TOLERANCE = 0.02  # a mask up to 2% off its image's size is rescaled (and flagged), not refused


@dataclass(frozen=True)
class Sample:
    pixels: np.ndarray  # float32, 2-D, [0, 1]
    rois: tuple[ROI, ...] = ()  # in this image's pixel coordinates
    laterality: str = ""  # 'L', 'R' or '' when unknown
    mask: np.ndarray | None = None  # bool, same shape as pixels: the lesion outline, if known
    flags: tuple[str, ...] = ()  # what a step could not do as asked, e.g. 'roi_missing'
    pixel_mm: float | None = None  # pixel side in mm, when the file says (DICOM PixelSpacing)
    descriptors: tuple[tuple[str, float], ...] = ()  # (name, value) pairs recorded by descriptor steps

    def replace(self, **changes: Any) -> Sample:
        return dataclasses.replace(self, **changes)

    def flagged(self, flag: str) -> Sample:
        return self if flag in self.flags else self.replace(flags=(*self.flags, flag))


def default_loader(path: str, frame: int | None = None) -> Any:
    from mammolens.io import read_image  # imported late: the io room is optional for tests

    return read_image(path, frame=frame)


def read_pixels(loader: Loader, path: str, frame: int | None = None) -> tuple[np.ndarray, str]:
    """Pixels (float32 [0, 1]) and laterality ('' when the file does not say) from a loader."""
    pixels, laterality, _ = read_film(loader, path, frame)
    return pixels, laterality


def read_film(loader: Loader, path: str, frame: int | None = None) -> tuple[np.ndarray, str, float | None]:
    """read_pixels plus the pixel side in mm (the mean of the file's row/column spacing), if it has one."""
    image = loader(path, frame)
    spacing = getattr(getattr(image, "meta", None), "pixel_spacing_mm", None)
    pixel_mm = float(np.mean(spacing)) if spacing else None
    pixels = getattr(image, "pixels", image)
    laterality = getattr(getattr(image, "meta", None), "laterality", "") or ""
    pixels = np.asarray(pixels)
    if pixels.ndim != 2 or pixels.size == 0:
        raise DataError(f"expected a 2-D greyscale image, got shape {pixels.shape}", path=path)
    return pixels.astype(np.float32, copy=False), str(laterality), pixel_mm


def rois_from_mask(mask: np.ndarray, *, min_fraction: float = 0.01) -> list[ROI]:
    """One covering circle per connected lesion in a binary mask.

    The circle is the smallest one enclosing the component, so a CAM inside the lesion always
    falls inside its ROI. Components smaller than ``min_fraction`` of the largest one are
    specks from the mask's digitisation, not lesions.
    """
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return []
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = [i + 1 for i, a in enumerate(areas) if a >= min_fraction * areas.max()]
    rois = []
    for label in keep:
        x, y, w, h = (int(v) for v in stats[label, :4])
        component = (labels[y : y + h, x : x + w] == label).astype(np.uint8)
        contours, _ = cv2.findContours(component, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        (cx, cy), r = cv2.minEnclosingCircle(np.concatenate(contours))
        rois.append((float(cx + x), float(cy + y), max(float(r), 0.5)))
    return rois


def sample_from_row(row: Mapping[str, Any], loader: Loader) -> tuple[Sample, str]:
    """Read a manifest row into a Sample; also say where its ROIs came from.

    A row with a ``mask_path`` (CBIS-DDSM's binary ROI mask) takes its ROIs from the mask's
    components, since the mask is the annotation itself; otherwise from the ``rois`` column
    (``data.rois``): each item gives one covering circle, and any box, polygon or mask item makes the
    sample's mask the union of every item's exact area, which the localisation score reads.
    """
    path = str(row["path"])
    frame = int(row.get("frame", -1))
    pixels, file_laterality, pixel_mm = read_film(loader, path, None if frame < 0 else frame)
    laterality = str(row.get("laterality", "") or file_laterality).upper()
    mask = None
    flags: tuple[str, ...] = ()
    mask_path = str(row.get("mask_path", "") or "")
    if mask_path:
        mask, flags = _read_mask(loader, mask_path, pixels.shape, path)
        rois, roi_source = rois_from_mask(mask), "mask"
    else:
        shapes = parse_rois(str(row.get("rois") or "[]"), f"sample {row.get('sample_id')!r}")
        rois = []
        if any(s.kind != "circle" for s in shapes):
            area = np.zeros(pixels.shape, np.uint8)
            for s in shapes:
                if s.kind == "mask":
                    found, found_flags = _read_mask(loader, s.path, pixels.shape, path)
                    area |= found.astype(np.uint8)
                    rois += rois_from_mask(found)
                    flags = (*flags, *(f for f in found_flags if f not in flags))
                else:
                    s.draw(area)
                    rois.append(s.circle())
            mask = area > 0
        else:
            rois = [s.circle() for s in shapes]
        roi_source = "manifest" if rois else "none"
    sample = Sample(pixels=pixels, rois=tuple(rois), laterality=laterality, mask=mask, flags=flags, pixel_mm=pixel_mm)
    return sample, roi_source


def _read_mask(loader: Loader, mask_path: str, shape: tuple[int, ...], path: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """A binary ROI mask at its image's size; a few published masks are some pixels off it: rescaled."""
    mask_pixels, _ = read_pixels(loader, mask_path)
    if mask_pixels.shape == shape:
        return mask_pixels > 0.5, ()
    off = max(abs(m - p) / p for m, p in zip(mask_pixels.shape, shape))
    if off > MASK_SIZE_TOLERANCE:
        raise DataError(
            f"ROI mask is {mask_pixels.shape[1]}x{mask_pixels.shape[0]} but its image {path} "
            f"is {shape[1]}x{shape[0]}",
            path=mask_path,
        )
    mask_pixels = cv2.resize(mask_pixels, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return mask_pixels > 0.5, ("mask_resized",)
