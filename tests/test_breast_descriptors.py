"""breast_descriptors: whole-breast intensity and texture measured on known synthetic breasts."""

from __future__ import annotations

import numpy as np
import pytest

from mammolens.utils.errors import ConfigError, DataError
from mammolens.preprocess import Pipeline, PreprocessConfig, Sample
from mammolens.preprocess.breast import BreastDescriptors


def breast(fill: np.ndarray) -> np.ndarray:
    """A 200 x 200 film: black background, a 100 x 120 breast block holding ``fill``."""
    film = np.zeros((200, 200), np.float32)
    film[40:140, 30:150] = fill
    return film


def values(sample: Sample) -> dict[str, float]:
    return dict(sample.descriptors)


def test_intensity_of_a_known_breast():
    fill = np.full((100, 120), 0.3, np.float32)
    fill[:, :30] = 0.9  # a quarter of the breast is dense (brighter than 0.6)
    out = values(BreastDescriptors(texture=False, pixel_mm=0.5)(Sample(pixels=breast(fill))))
    assert out["mean"] == pytest.approx(0.25 * 0.9 + 0.75 * 0.3, abs=1e-6)
    assert out["median"] == pytest.approx(0.3) and out["p90"] == pytest.approx(0.9)
    assert out["bright_fraction"] == pytest.approx(0.25)
    assert out["area_cm2"] == pytest.approx(100 * 120 * 0.25 / 100)  # 0.5 mm pixels
    denser = fill.copy()
    denser[:, :60] = 0.9
    assert values(BreastDescriptors(texture=False, pixel_mm=0.5)(Sample(pixels=breast(denser))))["bright_fraction"] == 0.5


def test_texture_sees_structure_inside_the_breast_not_its_outline():
    step = BreastDescriptors(intensity=False, pixel_mm=0.8, texture_mm=0.8)  # no resampling
    flat = values(step(Sample(pixels=breast(np.full((100, 120), 0.5, np.float32)))))
    stripes = np.tile(np.repeat(np.array([0.3, 0.8], np.float32), 2), 30)[None, :].repeat(100, axis=0)
    striped = values(step(Sample(pixels=breast(stripes))))
    # the flat breast has a sharp outline against the black background, yet no texture
    assert flat["glcm_contrast_d1"] == 0.0 and flat["glcm_homogeneity_d1"] == 1.0 and flat["local_std"] == 0.0
    assert striped["glcm_contrast_d1"] > 1.0 and striped["glcm_homogeneity_d1"] < 0.9
    assert striped["local_std"] > 0.1 and striped["entropy"] == pytest.approx(1.0)  # two grey levels, half each


def test_keep_selects_and_orders_and_the_pipeline_records_them():
    pipe = Pipeline(PreprocessConfig(steps=[
        {"name": "crop_breast"},
        {"name": "breast_descriptors", "pixel_mm": 0.2, "keep": ["area_cm2", "mean"]},
        {"name": "resize", "size": 32}]))
    out = pipe(Sample(pixels=breast(np.full((100, 120), 0.5, np.float32))))
    assert [n for n, _ in out.descriptors] == ["area_cm2", "mean"] and out.pixels.shape == (32, 32)
    assert dict(out.descriptors)["mean"] == pytest.approx(0.5)


@pytest.mark.parametrize("spec, message", [
    ({"keep": ["mean", "darkness"]}, "unknown darkness; known: mean"),
    ({"intensity": False, "texture": False}, "at least one of intensity, texture"),
    ({"bright": 1.5}, "bright must be in"),
])
def test_bad_settings_are_one_config_error(spec, message):
    with pytest.raises(ConfigError, match=message):
        PreprocessConfig(steps=[{"name": "breast_descriptors", **spec}])


def test_a_film_without_spacing_or_breast_is_refused():
    film = Sample(pixels=breast(np.full((100, 120), 0.5, np.float32)))
    with pytest.raises(DataError, match="pixel_mm"):
        BreastDescriptors()(film)
    with pytest.raises(DataError, match="after crop_breast"):
        BreastDescriptors(pixel_mm=0.2)(Sample(pixels=np.zeros((50, 50), np.float32)))
