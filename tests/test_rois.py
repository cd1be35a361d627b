"""General ROIs: the JSON type, what samples make of boxes/polygons/masks, and circles kept as they were."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from mammolens.data import rois as R
from mammolens.data.adapters.base import load_source
from mammolens.data.manifest import Manifest
from mammolens.utils.errors import DataError
from realdata import shared_folder
from mammolens.explain.localisation import finding_mask
from mammolens.explain.overlay import overlay_rgb
from mammolens.preprocess import STEPS, Pipeline
from mammolens.preprocess.sample import sample_from_row


def _film(tmp_path, h: int = 120, w: int = 100) -> str:
    path = tmp_path / "film.png"
    cv2.imwrite(str(path), np.full((h, w), 80, np.uint8))
    return str(path)


def _row(path: str, rois: list) -> dict:
    return {"sample_id": "s", "path": path, "rois": json.dumps(rois), "mask_path": "", "frame": -1}


def test_every_kind_round_trips_and_circles_stay_plain_triples():
    text = json.dumps([[10, 20, 5], {"box": [1, 2, 30, 40]}, {"polygon": [[0, 0], [10, 0], [0, 10]]}, {"mask": "/m.png"}])
    shapes = R.parse_rois(text)
    assert [s.kind for s in shapes] == ["circle", "box", "polygon", "mask"]
    assert json.loads(R.dump_rois(shapes)) == json.loads(text)
    assert R.dump_rois([R.circle(10, 20, 5)]) == "[[10.0, 20.0, 5.0]]"


@pytest.mark.parametrize("bad", ['[[1, 2]]', '[{"box": [5, 5, 1, 1]}]', '[{"polygon": [[0, 0], [1, 1]]}]',
                                 '[{"ellipse": [1]}]', '{"box": [1, 2, 3, 4]}', "not json"])
def test_bad_rois_are_one_line_errors_naming_the_sample(bad):
    rows = [{"sample_id": "a7", "source": "x", "path": "/a.png", "group": "g", "rois": bad}]
    with pytest.raises(DataError, match=r"sample 'a7': bad rois value") as info:
        Manifest.from_records(rows)
    assert "\n" not in str(info.value)


def test_covering_circle_holds_the_whole_shape():
    x, y, r = R.box(10, 20, 40, 60).circle()
    assert (x, y) == pytest.approx((25, 40), abs=0.5)
    assert r == pytest.approx(np.hypot(15, 20), rel=0.02)
    tri = R.polygon([(0, 0), (30, 0), (0, 30)])
    cx, cy, cr = tri.circle()
    assert all(np.hypot(px - cx, py - cy) <= cr + 1e-3 for px, py in tri.points)


def test_manifest_shapes_and_circles():
    rows = [{"sample_id": "a", "source": "x", "path": "/a.png", "group": "g",
             "rois": json.dumps([[1, 2, 3], {"box": [0, 0, 4, 4]}])}]
    m = Manifest.from_records(rows)
    assert [s.kind for s in m.shapes(0)] == ["circle", "box"]
    assert m.rois(0)[0] == (1.0, 2.0, 3.0)
    assert m.rois(0)[1] == pytest.approx((2.0, 2.0, np.hypot(2, 2)), rel=0.02)


def test_circles_alone_make_no_mask_exactly_as_before(tmp_path):
    sample, source = sample_from_row(_row(_film(tmp_path), [[30, 40, 6]]), cv2_loader)
    assert sample.rois == ((30.0, 40.0, 6.0),) and sample.mask is None and source == "manifest"


def test_box_and_polygon_become_the_mask_and_covering_circles(tmp_path):
    shapes = [{"box": [10, 10, 29, 19]}, {"polygon": [[60, 60], [90, 60], [60, 100]]}]
    sample, _ = sample_from_row(_row(_film(tmp_path), shapes), cv2_loader)
    assert len(sample.rois) == 2 and sample.mask is not None
    assert sample.mask[10:20, 10:30].all() and sample.mask[10:20, 10:30].sum() == 200
    assert sample.mask[70, 65] and not sample.mask[95, 85]  # inside / outside the triangle's hypotenuse
    assert sample.mask.sum() == pytest.approx(200 + 30 * 40 / 2, rel=0.1)
    # the localisation score reads the exact area, not the circles
    assert finding_mask(sample.mask.shape, sample.rois, sample.mask).sum() == sample.mask.sum()


def test_mask_item_is_read_like_a_mask_file(tmp_path):
    path = _film(tmp_path)
    m = np.zeros((120, 100), np.uint8)
    m[50:60, 20:40] = 255
    cv2.imwrite(str(tmp_path / "m.png"), m)
    sample, _ = sample_from_row(_row(path, [{"mask": str(tmp_path / "m.png")}, [80, 20, 5]]), cv2_loader)
    assert sample.mask[50:60, 20:40].all() and sample.mask[20, 80]
    assert len(sample.rois) == 2 and sample.rois[0][:2] == pytest.approx((29.5, 54.5), abs=0.6)


def test_crops_follow_a_polygon_through_the_pipeline(tmp_path):
    sample, _ = sample_from_row(_row(_film(tmp_path), [{"polygon": [[60, 60], [80, 60], [80, 80], [60, 80]]}]), cv2_loader)
    out = STEPS.get("crop_roi")(context=2.0, min_size=16)(sample)
    assert out.mask is not None and out.mask.shape == out.pixels.shape
    ys, xs = np.nonzero(out.mask)
    x, y, _ = out.rois[0]
    assert xs.mean() == pytest.approx(x, abs=1) and ys.mean() == pytest.approx(y, abs=1)
    resized = Pipeline({"steps": [{"name": "crop_roi", "context": 2.0, "min_size": 16}, {"name": "resize", "size": 32}]})(sample)
    assert resized.mask.shape == (32, 32) and resized.mask.any()


def test_overlay_draws_the_outline_of_the_area():
    image = np.zeros((60, 60), np.float32)
    area = np.zeros((60, 60), bool)
    area[20:40, 10:50] = True
    rgb = overlay_rgb(image, np.zeros_like(image), opacity=0.0, outline=area)
    assert rgb[20, 30].any() and not rgb[30, 30].any()  # edge drawn, inside left alone
    assert not overlay_rgb(image, np.zeros_like(image), opacity=0.0).any()


def test_new_columns_leave_an_old_manifest_hash_alone():
    rows = [{"sample_id": f"s{i}", "source": "x", "path": f"/s{i}.png", "group": f"g{i}"} for i in range(3)]
    old = Manifest.from_records(rows).content_hash()
    assert Manifest.from_records([{**r, "exam_id": r["group"]} for r in rows]).content_hash() == old
    assert Manifest.from_records([{**r, "density": "b"} for r in rows]).content_hash() != old
    assert Manifest.from_records([{**r, "exam_id": "e1"} for r in rows]).content_hash() != old
    assert Manifest.from_records([{**r, "density": "b", "birads": "4C"} for r in rows]).df[["density", "birads"]].iloc[0].tolist() == ["B", "4c"]
    with pytest.raises(DataError, match="density='E'"):
        Manifest.from_records([{**rows[0], "density": "E"}])


def cv2_loader(path: str, frame=None):
    return cv2.imread(path, cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255.0


@pytest.mark.realdata
def test_existing_adapters_fill_the_new_columns():
    mias = load_source(shared_folder("mias"), require_images=False).manifest.df
    assert (mias["exam_id"] == mias["group"]).all() and mias["exam_id"].nunique() == 129  # one exam per film pair
    assert set(mias["density"]) == set(mias["birads"]) == {""}  # MIAS grades tissue (meta), not BI-RADS
    cbis = load_source(shared_folder("cbis-ddsm"), require_images=False).manifest.df
    assert (cbis["exam_id"] == cbis["patient_id"]).all()
    assert set(cbis["density"]) == {"A", "B", "C", "D", ""} and set(cbis["birads"]) <= {"0", "1", "2", "3", "4", "5"}
    meta = cbis["meta"].map(json.loads)
    assert (cbis["density"] == meta.map(lambda m: " ABCD"[m["breast_density"] or 0].strip())).all()
