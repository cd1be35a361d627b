"""Lesion preprocessing (issue 14): multi-scale crops at native resolution and lesion descriptors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mammolens.preprocess import Pipeline, Sample
from mammolens.preprocess.lesion import LesionDescriptors, MultiscaleCrop, padded_crop
from mammolens.utils.errors import ConfigError, DataError


def _film(cx=150.0, cy=120.0, r=12.0, shape=(300, 400), value=0.8):
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    pixels = np.full(shape, 0.1, np.float32)
    pixels[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = value
    return Sample(pixels=pixels, rois=((cx, cy, r),))


def _bright(channel):
    return channel > 0.45


def test_multiscale_crops_contain_the_mass_at_every_scale():
    r = 12.0
    step = MultiscaleCrop(scales=(1.0, 2.0, 4.0), fixed_mm=20.0, pixel_mm=0.2, size=64, min_size=8)
    out = step(_film(r=r))
    assert out.pixels.shape == (4, 64, 64) and out.pixels.dtype == np.float32
    sides = [2 * r, 4 * r, 8 * r, 20.0 / 0.2]
    for channel, side in zip(out.pixels, sides, strict=True):
        assert _bright(channel[28:36, 28:36]).all()  # the disc sits at the centre of every crop
        # ... whole: its area fraction is the disc's share of the crop (pi r^2 / side^2)
        assert _bright(channel).mean() == pytest.approx(np.pi * r * r / side**2, rel=0.15)
    x, y, rr = out.rois[0]  # channel 0's coordinates: the 1x crop spans the circle
    assert (x, y) == pytest.approx((31.5, 31.5), abs=1.5) and rr == pytest.approx(32.0, rel=0.05)


def test_a_crop_past_the_film_edge_is_padded_not_shifted():
    sample = _film(cx=5.0, cy=6.0, r=10.0)
    out = MultiscaleCrop(scales=(4.0,), size=80, min_size=8)(sample)
    channel = out.pixels[0]
    assert _bright(channel[38:42, 38:42]).all()  # still centred on the finding
    assert (channel[:25, :25] == 0).all()  # outside the film: zeros, not film pixels slid in
    crop, left, top = padded_crop(sample.pixels, 5.0, 6.0, 80)
    assert (left, top) == (-34, -33) and crop.shape == (80, 80)
    assert np.array_equal(crop[33:, 34:], sample.pixels[:47, :46])


def test_min_size_and_pixel_spacing_from_the_file_win():
    sample = _film(r=2.0).replace(pixel_mm=0.1)  # the file says 0.1 mm, the config 0.2
    step = MultiscaleCrop(scales=(1.0,), fixed_mm=10.0, pixel_mm=0.2, min_size=16, size=32)
    assert step.sides(sample) == [16.0, 100.0]
    with pytest.raises(DataError, match="pixel_mm"):
        MultiscaleCrop(scales=(1.0,), fixed_mm=10.0)(_film())
    with pytest.raises(DataError, match="no ROI"):
        MultiscaleCrop()(Sample(pixels=np.zeros((50, 50), np.float32)))


def test_resize_keeps_the_pixel_spacing_true():
    sample = _film().replace(pixel_mm=0.2)
    out = Pipeline({"steps": [{"name": "resize", "size": 200, "keep_aspect": True}]})(sample)
    assert out.pixel_mm == pytest.approx(0.4)


@pytest.mark.parametrize("params, message", [
    ({"scales": []}, "at least one"), ({"scales": [0]}, "positive"), ({"fixed_mm": -1}, "fixed_mm"),
])
def test_bad_multiscale_settings_are_one_config_line(params, message):
    with pytest.raises((ConfigError, ValueError), match=message):
        Pipeline({"steps": [{"name": "multiscale_crop", **params}]})


def test_descriptors_measure_size_intensity_and_texture():
    plain = LesionDescriptors(pixel_mm=0.2)(_film(r=15.0))
    values = dict(plain.descriptors)
    assert values["radius_mm"] == pytest.approx(3.0)
    assert values["inside_mean"] == pytest.approx(0.8, abs=0.01)
    assert values["ring_mean"] == pytest.approx(0.1, abs=0.01)
    assert values["inside_minus_ring"] == pytest.approx(0.7, abs=0.02)
    assert values["margin_gradient"] > 0.5  # a sharp edge
    rng = np.random.default_rng(0)
    textured = _film(r=15.0)
    noisy = textured.pixels + (rng.random(textured.pixels.shape, dtype=np.float32) * 0.2)
    rough = dict(LesionDescriptors(pixel_mm=0.2)(textured.replace(pixels=noisy)).descriptors)
    assert rough["glcm_contrast_d1"] > values["glcm_contrast_d1"]
    assert rough["glcm_homogeneity_d1"] < values["glcm_homogeneity_d1"]
    only_size = LesionDescriptors(intensity=False, texture=False, pixel_mm=0.2)(_film())
    assert [n for n, _ in only_size.descriptors] == ["radius_mm"]


def test_descriptors_need_the_2d_film_and_a_spacing():
    with pytest.raises(DataError, match="pixel_mm"):
        LesionDescriptors()(_film())
    stacked = _film().replace(pixels=np.zeros((3, 20, 20), np.float32))
    with pytest.raises(DataError, match="before multiscale_crop"):
        LesionDescriptors(pixel_mm=0.2)(stacked)


def test_cache_keeps_channels_and_descriptors(tmp_path):
    from mammolens.data.adapters.base import load_source
    from mammolens.data.synthetic import generate
    from mammolens.data.tasks import derive_task
    from mammolens.preprocess import PreprocessCache

    generate(tmp_path / "syn", n_per_class=3, size=64, seed=0, calc_fraction=0.0, progress=False)
    manifest, _ = derive_task(load_source(str(tmp_path / "syn")).manifest, "benign-malignant")
    steps = [{"name": "lesion_descriptors", "pixel_mm": 0.2, "texture": False},
             {"name": "multiscale_crop", "scales": [1, 2, 4], "size": 32, "min_size": 4}]
    cache = PreprocessCache(tmp_path / "cache", {"steps": steps})
    cache.build(manifest, workers=1, progress=False)
    sid = manifest.df["sample_id"].iloc[0]
    array = cache.load(sid)
    assert array.shape == (3, 32, 32)
    names = cache.descriptor_names(sid)
    assert names[0] == "radius_mm" and len(cache.load_descriptors(sid)) == len(names)
    row = manifest.df.iloc[0]
    (_, _, r), = json.loads(row["rois"])
    assert cache.load_descriptors(sid)[0] == pytest.approx(r * 0.2)


def test_texture_quantisation_clamps_before_the_uint8_cast():
    """At 256 levels a white pixel (1.0 * 256) is level 255, its neighbour at 254/256 level 254: contrast 1,
    not the 254**2 of a white that wrapped round to black."""
    from mammolens.preprocess.descriptors import texture_descriptors

    pixels = np.full((64, 64), 254 / 256, np.float32)
    pixels[:, ::2] = 1.0
    values = dict(texture_descriptors(pixels, 32, 32, 20, levels=256, distances=(1,)))
    assert values["glcm_contrast_d1"] <= 1.0
