"""Where each pixel of the model's input came from on the original film.

Every geometric preprocessing step (orient's flip, crop_breast's and crop_roi's crops, resize with
its keep-aspect padding) is an axis-aligned affine map ``x' = a x + b`` per axis, and the steps move
the ROI circles with the pixels. So the pipeline is run step by step here with two probe points
appended to the ROIs, and the probes' movement gives each step's map exactly, without re-deriving
any step's arithmetic. The steps that read the ROIs (crop_roi, multiscale_crop and
lesion_descriptors build their window or measurements around them) run on the real ROIs alone, and
their map (a shift, and for multiscale_crop a scale: its first channel's) is read off the circles'
centre and radius.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from mammolens.preprocess import Pipeline, Sample
from mammolens.preprocess.lesion import LesionDescriptors, MultiscaleCrop
from mammolens.preprocess.steps import CropROI

_READS_ROIS = (CropROI, MultiscaleCrop, LesionDescriptors)

_PROBES = ((0.0, 0.0, 0.0), (1000.0, 1000.0, 0.0))


@dataclass(frozen=True)
class InputGeometry:
    """Original-image pixel (x, y) -> model-input pixel (ax x + bx, ay y + by); pixel centres at integers."""

    ax: float
    bx: float
    ay: float
    by: float
    original_shape: tuple[int, int]  # (H, W) of the film as read
    input_shape: tuple[int, int]  # (H, W) the model sees

    def to_input(self, x: float, y: float) -> tuple[float, float]:
        return self.ax * x + self.bx, self.ay * y + self.by

    def to_original(self, x: float, y: float) -> tuple[float, float]:
        return (x - self.bx) / self.ax, (y - self.by) / self.ay

    def then(self, ax: float, bx: float, ay: float, by: float, shape: tuple[int, int]) -> InputGeometry:
        """This map followed by one more step's."""
        return InputGeometry(ax * self.ax, ax * self.bx + bx, ay * self.ay, ay * self.by + by, self.original_shape, shape)

    def warp_to_original(self, values: np.ndarray) -> np.ndarray:
        """A model-input-sized map -> the original image's size (bilinear; 0 where the model saw nothing)."""
        values = np.ascontiguousarray(values, dtype=np.float32)
        if values.shape != self.input_shape:
            values = cv2.resize(values, self.input_shape[::-1], interpolation=cv2.INTER_LINEAR)
        # warpAffine with WARP_INVERSE_MAP reads dst(x, y) = src(M (x, y)): M is original -> input.
        matrix = np.array([[self.ax, 0.0, self.bx], [0.0, self.ay, self.by]], dtype=np.float64)
        height, width = self.original_shape
        return cv2.warpAffine(
            values, matrix, (width, height), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_CONSTANT, borderValue=0.0,
        )  # fmt: skip

    def field_of_view(self) -> np.ndarray:
        """Bool mask of the original pixels that land inside the model's input."""
        return self.warp_to_original(np.ones(self.input_shape, np.float32)) > 0.5


def preprocess_with_geometry(pipeline: Pipeline, sample: Sample) -> tuple[Sample, InputGeometry]:
    """Run ``pipeline`` on ``sample`` and return the output with its original -> input map."""
    geometry = InputGeometry(1.0, 0.0, 1.0, 0.0, sample.pixels.shape, sample.pixels.shape)
    n_real = len(sample.rois)
    for step in pipeline.steps:
        if isinstance(step, _READS_ROIS):
            out = step(sample)
            # A crop (and its resize) is a shift and a scale; with no ROI (on_missing='full') it keeps the image.
            if n_real:
                (x0, y0, r0), (x1, y1, r1) = sample.rois[0], out.rois[0]
                scale = r1 / r0 if r0 > 0 else 1.0
                geometry = geometry.then(scale, x1 - scale * x0, scale, y1 - scale * y0, out.pixels.shape[-2:])
            else:
                geometry = geometry.then(1.0, 0.0, 1.0, 0.0, out.pixels.shape[-2:])
            sample = out
            continue
        out = step(sample.replace(rois=(*sample.rois, *_PROBES)))
        (x0, y0, _), (x1, y1, _) = out.rois[n_real:]
        ax, ay = (x1 - x0) / 1000.0, (y1 - y0) / 1000.0
        geometry = geometry.then(ax, x0, ay, y0, out.pixels.shape)
        sample = out.replace(rois=out.rois[:n_real])
    return sample, geometry
