"""Overlay PNGs: the film's size, untouched where there is no heat, circles and outline drawn."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from mammolens.explain.overlay import (
    gallery_png,
    overlay_png,
    overlay_rgb,
    panel_png,
    top_region,
)
from mammolens.utils.errors import ConfigError


def _film_and_heat() -> tuple[np.ndarray, np.ndarray]:
    image = np.tile(np.linspace(0.2, 0.8, 90, dtype=np.float32), (60, 1))
    heat = np.zeros((60, 90), np.float32)
    heat[10:30, 50:80] = np.linspace(0.1, 1.0, 30, dtype=np.float32)
    return image, heat


def test_overlay_is_the_film_where_cold_and_coloured_where_hot() -> None:
    image, heat = _film_and_heat()
    rgb = overlay_rgb(image, heat, opacity=0.6)
    assert rgb.shape == (60, 90, 3) and rgb.dtype == np.uint8
    grey = np.round(image * 255).astype(int)
    assert np.abs(rgb[45:, :40].astype(int) - grey[45:, :40, None]).max() <= 1  # no heat: film as it is
    hot = rgb[20, 79].astype(int)
    assert hot.max() - hot.min() > 60  # coloured, not grey
    decoded = cv2.imdecode(np.frombuffer(overlay_png(image, heat), np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (60, 90, 3)


def test_roi_circle_and_top_region_outline() -> None:
    image, heat = _film_and_heat()
    rgb = overlay_rgb(image, heat, opacity=0.0, rois=[(20, 30, 8)], contour_top=10)
    r, g, b = rgb[30, 28].astype(int)  # the circle's rightmost point: green (anti-aliased)
    assert g > r + 100 and g > b + 100
    region = top_region(heat, 10)
    assert region.sum() == pytest.approx(0.1 * (heat > 0).sum(), rel=0.15) and region[:, :75].sum() == 0
    assert (rgb == 255).all(axis=2).any()  # the white outline
    with pytest.raises(ConfigError, match="differ in size"):
        overlay_rgb(image, heat[:, :10])
    with pytest.raises(ConfigError, match="unknown colormap 'jetty'"):
        overlay_rgb(image, heat, colormap="jetty")


def test_panel_and_gallery_are_pngs() -> None:
    image, heat = _film_and_heat()
    panel = panel_png(image, heat, probabilities={"benign": 0.3, "malignant": 0.7}, decision="malignant",
                      method="gradcam", target="malignant")
    assert cv2.imdecode(np.frombuffer(panel, np.uint8), cv2.IMREAD_COLOR) is not None
    sheet = gallery_png([(overlay_rgb(image, heat), "a"), (overlay_rgb(image, heat), "b")] * 3, columns=4, tile_side=50)
    assert cv2.imdecode(np.frombuffer(sheet, np.uint8), cv2.IMREAD_COLOR).shape[:2] == (2 * (50 + 26), 200)
