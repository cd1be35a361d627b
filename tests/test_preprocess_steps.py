"""Preprocessing steps and config: each step alone, ROI geometry through the chain, config errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mammolens.preprocess import STEPS, Pipeline, PreprocessConfig, Sample, default_config, rois_from_mask
from mammolens.preprocess import pipeline as pipeline_module
from mammolens.preprocess.sample import sample_from_row
from mammolens.utils.configuration import from_dict
from mammolens.utils.errors import ConfigError, DataError

LESION = (60.0, 150.0, 12.0)  # x, y, r in the fixture's pixels


def disc(shape: tuple[int, int], x: float, y: float, r: float) -> np.ndarray:
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    return (cols - x) ** 2 + (rows - y) ** 2 <= r**2


def film(chest_wall: str = "left", label: bool = True) -> Sample:
    """A 300x240 'mammogram': a half-disc breast on the chest-wall edge, a bright lesion, a label."""
    h, w = 300, 240
    rng = np.random.default_rng(0)
    centre_x = 0 if chest_wall == "left" else w - 1
    breast = disc((h, w), centre_x, 150, 130)
    pixels = np.where(breast, 0.35 + 0.1 * rng.random((h, w)), 0.0).astype(np.float32)
    lesion_x = LESION[0] if chest_wall == "left" else w - 1 - LESION[0]
    pixels[disc((h, w), lesion_x, LESION[1], LESION[2])] = 1.0
    if label:
        label_x = slice(200, 225) if chest_wall == "left" else slice(15, 40)
        pixels[10:30, label_x] = 0.9  # burned-in marker, apart from the breast
    return Sample(pixels=pixels, rois=((lesion_x, LESION[1], LESION[2]),))


def lesion_pixels_inside_roi(sample: Sample, level: float = 0.95) -> tuple[np.ndarray, float]:
    """Where the bright disc ended up, and how far its centroid is from the ROI centre."""
    (x, y, r), = sample.rois
    rows, cols = np.nonzero(sample.pixels > level)
    assert rows.size > 0, "the lesion disappeared"
    dist = np.hypot(cols - x, rows - y)
    return dist, float(np.hypot(cols.mean() - x, rows.mean() - y))


def test_registry_lists_the_steps():
    assert set(STEPS.names()) == {"orient", "crop_breast", "crop_roi", "contrast_stretch", "clahe", "resize",
                                  "multiscale_crop", "lesion_descriptors", "breast_descriptors"}


def test_crop_breast_drops_background_and_label_and_moves_roi():
    sample = film()
    out = STEPS.get("crop_breast")()(sample)
    h, w = out.pixels.shape
    assert w < 160 and h < 290  # breast is x < 131, y in 20..280; the label at x >= 200 is gone
    assert out.pixels.max() == 1.0 and not np.any(np.isclose(out.pixels, 0.9))
    dist, offset = lesion_pixels_inside_roi(out)
    assert offset < 0.5 and dist.max() <= out.rois[0][2] + 0.5


def test_crop_breast_blank_outside_can_be_turned_off():
    # the label sits outside the breast's bounding box here, so put one inside it
    sample = film(label=False)
    pixels = sample.pixels.copy()
    pixels[22:26, 120:124] = 0.9  # a marker just beyond the breast edge, inside the box
    kept = STEPS.get("crop_breast")(blank_outside=False)(sample.replace(pixels=pixels))
    blanked = STEPS.get("crop_breast")()(sample.replace(pixels=pixels))
    assert np.isclose(kept.pixels, 0.9).any() and not np.isclose(blanked.pixels, 0.9).any()


def test_orient_by_tissue_flips_a_right_chest_wall_and_mirrors_the_roi():
    out = STEPS.get("orient")()(film("right"))
    dist, offset = lesion_pixels_inside_roi(out)
    assert offset < 0.5 and out.rois[0][0] == pytest.approx(LESION[0])
    already = film("left")
    assert STEPS.get("orient")()(already).pixels is already.pixels


def test_orient_by_laterality():
    right = film("right").replace(laterality="R")
    out = STEPS.get("orient")(by="laterality")(right)
    assert out.rois[0][0] == pytest.approx(LESION[0])
    left = film("right").replace(laterality="L")  # trusted as labelled, even against the tissue
    assert STEPS.get("orient")(by="laterality")(left).rois == left.rois
    assert STEPS.get("orient")(by="auto")(film("right")).rois[0][0] == pytest.approx(LESION[0])
    with pytest.raises(DataError, match="laterality"):
        STEPS.get("orient")(by="laterality")(film("left"))


def test_crop_roi_context_min_size_and_missing():
    sample = film()
    out = STEPS.get("crop_roi")(context=2.0, min_size=16)(sample)
    assert out.pixels.shape == (48, 48)  # 2 x the 24 px diameter
    dist, offset = lesion_pixels_inside_roi(out)
    assert offset < 0.5 and dist.max() <= out.rois[0][2] + 0.5
    assert STEPS.get("crop_roi")(context=1.0, min_size=100)(sample).pixels.shape == (100, 100)
    near_edge = sample.replace(rois=((5.0, 5.0, 4.0),))
    shifted = STEPS.get("crop_roi")(min_size=50)(near_edge)
    assert shifted.pixels.shape == (50, 50) and shifted.rois == ((5.0, 5.0, 4.0),)  # slid, not padded
    with pytest.raises(DataError, match="no ROI"):
        STEPS.get("crop_roi")()(sample.replace(rois=()))
    kept = STEPS.get("crop_roi")(on_missing="full")(sample.replace(rois=()))
    assert kept.flags == ("roi_missing",) and kept.pixels.shape == sample.pixels.shape


def test_contrast_stretch_uses_breast_pixels_only():
    rng = np.random.default_rng(1)
    pixels = np.zeros((100, 100), np.float32)
    pixels[20:80, 10:60] = 0.3 + 0.2 * rng.random((60, 50))
    out = STEPS.get("contrast_stretch")(low=2, high=98)(Sample(pixels))
    breast = out.pixels[20:80, 10:60]
    assert np.percentile(breast, 2) == pytest.approx(0.0, abs=0.01)
    assert np.percentile(breast, 98) == pytest.approx(1.0, abs=0.01)
    assert np.all(out.pixels[:, 60:] == 0) and out.pixels.dtype == np.float32


def test_clahe_raises_local_contrast_and_keeps_background_black():
    rng = np.random.default_rng(2)
    pixels = np.zeros((128, 128), np.float32)
    pixels[:, :96] = 0.5 + 0.02 * rng.standard_normal((128, 96)).astype(np.float32)
    out = STEPS.get("clahe")(clip_limit=2.0, tile_grid=4)(Sample(pixels)).pixels
    assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
    assert np.all(out[:, 100:] == 0)
    assert out[:, :96].std() > 3 * pixels[:, :96].std()


def test_resize_keep_aspect_pads_and_maps_rois():
    sample = film(label=False)
    out = STEPS.get("resize")(size=64, keep_aspect=True)(sample)
    assert out.pixels.shape == (64, 64) and out.pixels.dtype == np.float32
    assert np.all(out.pixels[:, :6] == 0) and np.all(out.pixels[:, -6:] == 0)  # 240/300*64 = 51 px wide
    dist, offset = lesion_pixels_inside_roi(out, level=0.7)
    assert offset < 0.6 and dist.max() <= out.rois[0][2] + 0.5
    squashed = STEPS.get("resize")(size=64, keep_aspect=False)(sample)
    dist, offset = lesion_pixels_inside_roi(squashed, level=0.7)
    assert offset < 0.6 and dist.max() <= squashed.rois[0][2] + 0.5


def test_resize_anti_aliases_a_fine_pattern():
    checker = (np.indices((1000, 1000)).sum(axis=0) % 2).astype(np.float32)  # 1-pixel checkerboard
    out = STEPS.get("resize")(size=100)(Sample(checker)).pixels
    assert out.mean() == pytest.approx(0.5, abs=0.01) and out.std() < 0.01  # no moire


def test_resize_upscales_within_range():
    out = STEPS.get("resize")(size=64)(Sample(np.eye(16, dtype=np.float32))).pixels
    assert out.shape == (64, 64) and out.min() >= 0 and out.max() <= 1


def test_full_chain_keeps_the_lesion_under_its_roi():
    for wall in ("left", "right"):
        pipeline = Pipeline({"steps": [{"name": "orient"}, {"name": "crop_breast"}, {"name": "resize", "size": 96}]})
        out = pipeline(film(wall))
        assert out.pixels.shape == (96, 96)
        dist, offset = lesion_pixels_inside_roi(out, level=0.7)
        assert offset < 0.6 and dist.max() <= out.rois[0][2] + 0.5
        lesion = Pipeline(default_config(size=32, roi=True))(film(wall))  # 64 px crop (min_size) -> 32
        (x, y, r), = lesion.rois
        assert abs(x - 15.5) <= 0.5 and abs(y - 15.5) <= 0.5 and r == pytest.approx(6.0)


def test_steps_leave_their_input_alone():
    sample = film("right")
    before = sample.pixels.copy()
    Pipeline(default_config(size=64, roi=True))(sample)
    assert np.array_equal(sample.pixels, before)
    rows, cols = np.mgrid[:100, :100]
    whole = Sample(np.where(rows + cols < 150, 0.5, 0.0).astype(np.float32))  # its box is the whole image
    whole.pixels[92:96, 92:96] = 0.9  # a marker inside that box, blanked by crop_breast
    before = whole.pixels.copy()
    out = STEPS.get("crop_breast")()(whole)
    assert out.pixels.shape == (100, 100) and out.pixels[94, 94] == 0 and np.array_equal(whole.pixels, before)


def test_mask_moves_with_the_pixels():
    sample = film("right", label=False)
    mask = sample.pixels == 1.0
    out = Pipeline({"steps": [{"name": "orient"}, {"name": "crop_breast"}, {"name": "resize", "size": 64}]})(
        sample.replace(mask=mask)
    )
    assert out.mask.shape == (64, 64) and out.mask.any()
    assert np.all(out.pixels[out.mask] > 0.7)


def test_rois_from_mask_cover_each_component():
    mask = disc((200, 200), 50, 60, 10) | disc((200, 200), 150, 140, 20)
    mask[5, 5] = True  # a speck, not a lesion
    rois = sorted(rois_from_mask(mask))
    assert len(rois) == 2
    for (x, y, r), (ex, ey, er) in zip(rois, [(50, 60, 10), (150, 140, 20)]):
        assert abs(x - ex) < 1 and abs(y - ey) < 1 and er <= r < er + 1.5
    assert rois_from_mask(np.zeros((10, 10), bool)) == []


def test_sample_from_row_prefers_the_mask(tmp_path):
    image, mask = film().pixels, disc((300, 240), 100, 100, 15)
    np.save(tmp_path / "img.npy", image)
    np.save(tmp_path / "mask.npy", mask.astype(np.float32))
    row = {"sample_id": "a", "path": str(tmp_path / "img.npy"), "frame": -1, "laterality": "l",
           "rois": json.dumps([[1, 2, 3]]), "mask_path": str(tmp_path / "mask.npy")}
    sample, source = sample_from_row(row, lambda path, frame: np.load(path))
    assert source == "mask" and sample.laterality == "L" and sample.mask.sum() == mask.sum()
    (x, y, r), = sample.rois
    assert (round(x), round(y)) == (100, 100) and 15 <= r < 16.5
    sample, source = sample_from_row({**row, "mask_path": ""}, lambda path, frame: np.load(path))
    assert source == "manifest" and sample.rois == ((1.0, 2.0, 3.0),)
    np.save(tmp_path / "small.npy", np.zeros((10, 10), np.float32))
    with pytest.raises(DataError, match="small.npy: ROI mask is 10x10 but its image .*img.npy is 240x300"):
        sample_from_row({**row, "mask_path": str(tmp_path / "small.npy")}, lambda path, frame: np.load(path))
    np.save(tmp_path / "near.npy", mask[:-3].astype(np.float32))  # 3 rows short, as some published masks are
    sample, _ = sample_from_row({**row, "mask_path": str(tmp_path / "near.npy")}, lambda path, frame: np.load(path))
    assert sample.flags == ("mask_resized",) and sample.mask.shape == image.shape and len(sample.rois) == 1


def test_config_errors_name_the_step_and_param():
    with pytest.raises(ConfigError, match="unknown preprocessing step 'sharpen'; known: breast_descriptors, clahe, contrast_stretch"):
        PreprocessConfig(steps=[{"name": "sharpen"}])
    with pytest.raises(ConfigError, match=r"steps\[1\]: step 'clahe' has no parameter 'clip'; its parameters: clip_limit"):
        PreprocessConfig(steps=[{"name": "orient"}, {"name": "clahe", "clip": 3}])
    with pytest.raises(ConfigError, match="resize.size must be >= 8"):
        from_dict(PreprocessConfig, {"steps": [{"name": "resize", "size": 2}]}, "preprocess")
    with pytest.raises(ConfigError, match="expected int"):
        from_dict(PreprocessConfig, {"steps": [{"name": "resize", "size": "big"}]}, "preprocess")
    with pytest.raises(ConfigError, match="'sideways' is not one of"):
        from_dict(PreprocessConfig, {"steps": [{"name": "orient", "by": "sideways"}]}, "preprocess")
    with pytest.raises(ConfigError, match="'name'"):
        PreprocessConfig(steps=[{"size": 3}])
    with pytest.raises(ConfigError, match="unknown config key 'preprocess.stages'"):
        from_dict(PreprocessConfig, {"stages": []}, "preprocess")


def test_config_hash_is_stable_and_sensitive(monkeypatch):
    spelled_out = {"steps": [{"name": "clahe", "clip_limit": 2.0, "tile_grid": 8}, {"name": "resize"}]}
    implicit = {"steps": [{"name": "clahe"}, {"name": "resize", "size": 224}]}
    assert Pipeline(spelled_out).config_hash() == Pipeline(implicit).config_hash()
    before = Pipeline(implicit).config_hash()
    # the code that makes the arrays is part of the key: changed code never reuses old arrays
    monkeypatch.setattr(pipeline_module, "code_fingerprint", lambda: "other code")
    assert Pipeline(implicit).config_hash() != before
    monkeypatch.undo()
    other = {"steps": [{"name": "clahe", "clip_limit": 3.0}, {"name": "resize"}]}
    assert Pipeline(other).config_hash() != Pipeline(implicit).config_hash()
    assert Pipeline(default_config(224)).config_hash() != Pipeline(default_config(512)).config_hash()
    names = [s["name"] for s in default_config(roi=True).steps]
    assert names == ["orient", "crop_breast", "crop_roi", "contrast_stretch", "clahe", "resize"]
