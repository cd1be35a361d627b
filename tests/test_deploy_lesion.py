"""Lesion bundles with multi-scale crops and a descriptor head (issue 14) through the deploy verbs:
the Predictor on a film + ROI gives the probability the training/evaluation pipeline gave that
lesion, and `predict --rois`, the service's x, y, r fields and `explain` work for them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from mammolens.cli import app
from mammolens.deploy.predictor import Predictor
from mammolens.utils.errors import ConfigError

SIZE = 16  # each multi-scale crop


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny lesion experiment: descriptors, 1x/2x/4x crops, the logistic head over both, TTA."""
    from mammolens.engine.config import load_config
    from mammolens.engine.experiment import run_experiment

    tmp = tmp_path_factory.mktemp("lesion")
    config = {
        "name": "tiny-lesion",
        "data": {"source": "synthetic", "task": "benign-malignant",
                 "synthetic": {"n_per_class": 10, "size": 64, "seed": 1, "calc_fraction": 0.0}},
        "preprocess": {"steps": [{"name": "lesion_descriptors", "pixel_mm": 0.2},
                                 {"name": "multiscale_crop", "scales": [1, 2, 4], "size": SIZE, "min_size": 4}]},
        "model": {"name": "scratch-cnn", "options": {"depth": 1, "width": 4, "hidden": 0}},
        "train": {"transfer": "frozen", "feature_fast_path": True, "head": "logistic", "head_inputs": "both",
                  "tta": 8, "accelerator": "cpu", "progress": False, "logistic_c": [0.1, 1.0]},
        "workers": 1, "cache_dir": str(tmp / "cache"),
    }  # fmt: skip
    (tmp / "c.yaml").write_text(yaml.safe_dump(config))
    run_experiment(load_config(tmp / "c.yaml"), tmp / "run", progress=False)
    return tmp


def _lesions(run: Path, part: str = "test") -> list[dict]:
    ids = json.loads((run / "run" / "split.json").read_text())["parts"][part]
    with open(run / "run" / "manifest.csv", newline="") as fh:
        rows = {r["sample_id"]: r for r in csv.DictReader(fh)}
    return [rows[s] for s in ids]


def _roi(row: dict) -> tuple[float, float, float]:
    (roi,) = json.loads(row["rois"])  # one finding per lesion sample
    return tuple(roi)


def test_the_predictor_gives_each_lesion_the_probability_evaluation_gave(run):
    from mammolens.bundle.model import load_model_bundle
    from mammolens.data.manifest import Manifest
    from mammolens.evaluate.predict import predict_manifest

    bundle = load_model_bundle(run / "run" / "bundle")
    assert bundle.model.config["in_chans"] == 3 and bundle.descriptor_head and bundle.tta == 8
    predictor = Predictor.load(run / "run" / "bundle")
    assert predictor.spec.channels == 3 and predictor.spec.descriptors == bundle.descriptor_head["names"]
    assert predictor.spec.input_spec()["model_input"] == [3, SIZE, SIZE]
    rows = _lesions(run)
    got = np.array([[predictor.predict(r["path"], roi=_roi(r)).probabilities[c] for c in bundle.classes] for r in rows])
    saved = Manifest.load(run / "run" / "manifest.csv")
    index = [int(np.flatnonzero(saved.df["sample_id"] == r["sample_id"])[0]) for r in rows]
    evaluated = predict_manifest(bundle, saved.subset(index), run / "cache", workers=1, progress=False)
    # evaluation reads the cache, which stores the crops as 16-bit integers: equal up to that rounding
    np.testing.assert_allclose(got, evaluated, atol=1e-4)
    assert np.ptp(got[:, 1]) > 1e-3  # the lesions get different answers: the comparison means something
    # ... and the descriptors matter: without their share of the logits the answers differ.
    inputs = [predictor.prepare(predictor.read(r["path"]), roi=_roi(r)) for r in rows]
    images_only = bundle.predict_proba(np.stack([i.pixels for i in inputs]),
                                       descriptors=np.zeros((len(rows), len(predictor.spec.descriptors))) +
                                       np.asarray(bundle.descriptor_head["mean"]))  # fmt: skip
    assert np.abs(images_only - got).max() > 1e-3
    assert predictor.predict_batch([r["path"] for r in rows], rois=[_roi(r) for r in rows])[0].probabilities == \
        pytest.approx(dict(zip(bundle.classes, got[0])), abs=1e-6)  # fmt: skip


def test_a_lesion_bundle_still_asks_for_the_roi(run):
    predictor = Predictor.load(run / "run" / "bundle")
    with pytest.raises(ConfigError, match=r"lesion_descriptors, multiscale_crop\); give the lesion's roi") as err:
        predictor.predict(_lesions(run)[0]["path"])
    assert "\n" not in str(err.value)


def test_predict_rois_and_the_service_score_these_bundles(run, tmp_path):
    from fastapi.testclient import TestClient

    from mammolens.deploy.service import create_app

    bundle_dir = run / "run" / "bundle"
    predictor = Predictor.load(bundle_dir)
    rows = _lesions(run)[:4]
    rois = tmp_path / "rois.csv"
    with open(rois, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "x", "y", "r"])
        writer.writerows([r["path"], *_roi(r)] for r in rows)
    out = tmp_path / "out.csv"
    result = CliRunner().invoke(app, ["predict", str(bundle_dir), "--rois", str(rois), "--out", str(out), "--no-progress",
                                      "--heatmaps", str(tmp_path / "heat")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "heat").glob("*.png"))) == 4  # one overlay per lesion
    with open(out, newline="") as fh:
        scored = list(csv.DictReader(fh))
    expected = [predictor.predict(r["path"], roi=_roi(r)).probabilities["malignant"] for r in rows]
    assert [s["error"] for s in scored] == [""] * 4
    np.testing.assert_allclose([float(s["p_malignant"]) for s in scored], expected, atol=1e-6)
    client = TestClient(create_app(predictor))
    x, y, r = _roi(rows[0])
    with open(rows[0]["path"], "rb") as fh:
        response = client.post("/v1/predict", files={"file": ("a.png", fh.read())}, data={"x": x, "y": y, "r": r})
    assert response.status_code == 200, response.text
    assert response.json()["probabilities"]["malignant"] == pytest.approx(expected[0], abs=1e-6)
    card = client.get("/v1/model").json()["input"]
    assert card["model_input"] == [3, SIZE, SIZE] and card["needs_roi"] and card["descriptors"][0] == "radius_mm"


def test_explain_maps_the_crop_back_onto_the_film(run, tmp_path):
    from mammolens.bundle.model import load_model_bundle
    from mammolens.explain import explain_image
    from mammolens.explain.api import preprocess_for
    from mammolens.preprocess import Pipeline, Sample
    from mammolens.preprocess.sample import default_loader

    bundle = load_model_bundle(run / "run" / "bundle")
    predictor = Predictor.load(run / "run" / "bundle")
    row = _lesions(run)[0]
    roi = _roi(row)
    pixels = np.asarray(default_loader(row["path"]).pixels)
    pre, geometry = preprocess_for(bundle, pixels, [roi], "")
    assert pre.pixels.shape == (3, SIZE, SIZE)
    # the steps that read the ROI ran on the finding alone (the geometry's probe points would move its box)
    plain = Pipeline(bundle.preprocess)(Sample(pixels=pixels, rois=(roi,)))
    assert pre.descriptors == plain.descriptors
    np.testing.assert_array_equal(pre.pixels, plain.pixels)
    # the map is channel 0's crop (1x the radius, at least min_size px), centred on the finding
    cx, cy = geometry.to_original((SIZE - 1) / 2, (SIZE - 1) / 2)
    assert (cx, cy) == pytest.approx(roi[:2], abs=0.5)
    assert geometry.to_original(SIZE - 0.5, 0)[0] - geometry.to_original(-0.5, 0)[0] == round(max(2 * roi[2], 4))
    e = explain_image(bundle, pixels, rois=[roi])
    assert e.heatmap.shape == pixels.shape and np.isfinite(e.heatmap).all()
    fov = geometry.field_of_view()
    assert e.heatmap[~fov].max() == 0.0 and fov.sum() < pixels.size / 4
    p = predictor.predict(row["path"], roi=roi, heatmap=True)
    assert e.probabilities["malignant"] == pytest.approx(p.probabilities["malignant"], abs=1e-6)  # descriptors included
    np.testing.assert_allclose(p.heatmap, e.heatmap, atol=1e-6)
    out = tmp_path / "explain"
    rois = tmp_path / "rois.csv"
    rois.write_text("file,x,y,r\n" + ",".join(map(str, [row["path"], *roi])) + "\n")
    result = CliRunner().invoke(app, ["explain", str(run / "run" / "bundle"), "--rois", str(rois), "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "explanations.json").read_text())
    assert summary[Path(row["path"]).stem]["probabilities"]["malignant"] == pytest.approx(p.probabilities["malignant"], abs=1e-6)


def test_the_pixel_side_comes_from_the_file_as_in_training(tmp_path):
    """A radius-in-mm descriptor with no configured pixel_mm: DICOM PixelSpacing supplies it (through
    the Predictor and the service alike); a PNG, which has none, is refused in one line."""
    import dicom_fixtures
    from deploy_fixtures import SIZE as FILM_SIZE
    from deploy_fixtures import film, make_bundle, write_png
    from fastapi.testclient import TestClient

    from mammolens.deploy.service import create_app
    from mammolens.preprocess.pipeline import default_steps
    from mammolens.utils.errors import DataError

    steps = [{"name": "lesion_descriptors", "intensity": False, "texture": False}, *default_steps(FILM_SIZE, roi=True)]
    head = {"names": ["radius_mm"], "mean": [1.0], "scale": [0.5], "coef": [[0.0], [1.0]]}
    predictor = Predictor.load(make_bundle(tmp_path / "b", steps=steps, descriptor_head=head))
    pixels, roi = film(3), (30.0, 45.0, 6.0)
    spaced = {}
    for mm in (0.1, 0.2):
        path = dicom_fixtures.write_dicom(tmp_path / f"{mm}.dcm", (pixels * 65535).round().astype(np.uint16),
                                          PixelSpacing=[mm, mm])  # fmt: skip
        x = predictor.prepare(predictor.read(path), roi=roi)
        assert x.descriptors.tolist() == [pytest.approx(6.0 * mm)]
        spaced[mm] = predictor.predict(path, roi=roi).probabilities["malignant"]
        response = TestClient(create_app(predictor)).post(
            "/v1/predict", files={"file": ("a.dcm", path.read_bytes())}, data={"x": roi[0], "y": roi[1], "r": roi[2]})
        assert response.json()["probabilities"]["malignant"] == pytest.approx(spaced[mm], abs=1e-6)
    assert spaced[0.1] != pytest.approx(spaced[0.2], abs=1e-3)  # the descriptor head reads the radius in mm
    with pytest.raises(DataError, match="has no pixel spacing; set lesion_descriptors.pixel_mm") as err:
        predictor.predict(write_png(tmp_path / "a.png", pixels), roi=roi)
    assert "\n" not in str(err.value)


def test_evaluate_scores_and_reports_a_multiscale_bundle_as_the_predictor_scores_it(run, tmp_path):
    """`mammolens evaluate` on the source the run trained on: the report's thumbnails show channel 0
    of the (C, H, W) crops (they crashed matplotlib before), and every lesion gets the Predictor's score."""
    import pandas as pd

    from mammolens.cli import main

    (source,) = (run / "cache").glob("synthetic-*")  # the synthetic set as written for the run
    out = tmp_path / "eval"
    assert main(["evaluate", str(run / "run" / "bundle"), str(source), "--out", str(out), "--n-boot", "0",
                 "--cache-dir", str(run / "cache"), "--workers", "1"]) == 0  # fmt: skip
    assert "<img" in (out / "report.html").read_text()
    table = pd.read_csv(out / "predictions.csv").set_index("sample_id")
    predictor = Predictor.load(run / "run" / "bundle")
    rows = _lesions(run)
    expected = [predictor.predict(r["path"], roi=_roi(r)).probabilities["malignant"] for r in rows]
    np.testing.assert_allclose(table.loc[[r["sample_id"] for r in rows], "p_malignant"], expected, atol=1e-4)
