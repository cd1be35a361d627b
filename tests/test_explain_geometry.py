"""Heatmaps go back onto the original film: a known point through the pipeline and back."""

from __future__ import annotations

import numpy as np
import pytest

from mammolens.explain.geometry import preprocess_with_geometry
from mammolens.preprocess import Pipeline, Sample
from mammolens.preprocess.pipeline import default_steps

POINT = (150.0, 90.0)  # (x, y) on the 240 x 300 original (H x W)


def film() -> np.ndarray:
    """A breast on the RIGHT (so orient flips it), a label in a corner, a bright dot at POINT."""
    yy, xx = np.mgrid[:240, :300]
    image = np.zeros((240, 300), np.float32)
    image[((xx - 300) / 190.0) ** 2 + ((yy - 120) / 110.0) ** 2 <= 1] = 0.4
    image[5:15, 5:25] = 0.9  # a burned-in label: crop_breast drops it
    image[(xx - POINT[0]) ** 2 + (yy - POINT[1]) ** 2 <= 2] = 1.0
    return image


STEPS = {
    "film": [{"name": "orient"}, {"name": "crop_breast"}, {"name": "resize", "size": 64}],
    "lesion": [
        {"name": "orient"}, {"name": "crop_breast"}, {"name": "crop_roi", "context": 3.0, "min_size": 32},
        {"name": "resize", "size": 64},
    ],
    "stretched": [{"name": "crop_breast"}, {"name": "resize", "size": 48, "keep_aspect": False}],
    "default": default_steps(size=64),
}


@pytest.mark.parametrize("name", sorted(STEPS))
def test_a_known_point_goes_through_and_back(name: str) -> None:
    sample = Sample(film(), rois=((*POINT, 8.0),))
    out, geometry = preprocess_with_geometry(Pipeline({"steps": STEPS[name]}), sample)
    assert geometry.original_shape == (240, 300) and geometry.input_shape == out.pixels.shape
    # the pipeline moved the ROI itself: our map must agree with it
    x_in, y_in = geometry.to_input(*POINT)
    assert (x_in, y_in) == pytest.approx(out.rois[0][:2], abs=1e-6)
    assert geometry.to_original(x_in, y_in) == pytest.approx(POINT, abs=1e-6)
    if name != "default":  # no CLAHE/stretch in the way: the dot is the brightest input pixel
        ys, xs = np.nonzero(out.pixels >= 0.8 * out.pixels.max())  # the dot's centre of mass
        assert np.hypot(xs.mean() - x_in, ys.mean() - y_in) <= 1.0
    # a heatmap peaked at the dot's input pixel lands back on the dot, within the resize scale
    heat = np.zeros(out.pixels.shape, np.float32)
    heat[int(round(y_in)), int(round(x_in))] = 1.0
    back = geometry.warp_to_original(heat)
    assert back.shape == (240, 300)
    y_b, x_b = np.unravel_index(np.argmax(back), back.shape)
    scale = 1.0 / min(abs(geometry.ax), abs(geometry.ay))
    assert np.hypot(x_b - POINT[0], y_b - POINT[1]) <= scale


def test_orient_flip_is_recorded_and_the_field_of_view_is_the_crop() -> None:
    _, geometry = preprocess_with_geometry(Pipeline({"steps": STEPS["lesion"]}), Sample(film(), rois=((*POINT, 8.0),)))
    assert geometry.ax < 0 < geometry.ay  # mirrored left-right, not up-down
    fov = geometry.field_of_view()
    rows, cols = np.nonzero(fov)
    side = 3.0 * 16  # crop_roi: context x the ROI's diameter
    assert abs((cols.max() - cols.min() + 1) - side) <= 2 and abs((rows.max() - rows.min() + 1) - side) <= 2
    assert fov[int(POINT[1]), int(POINT[0])] and not fov[10, 10]
