"""cv's ``ensemble/`` (the mean of fold bundles, members and ensemble at temperature != 1) through
``predict``, ``serve``, ``export`` and ``explain``: each verb gives the ensemble's own probabilities."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from deploy_fixtures import film, make_bundle, write_png
from mammolens.cli import main
from mammolens.deploy.predictor import Predictor
from mammolens.deploy.service import ServiceConfig, create_app
from mammolens.bundle import load_bundle, save_mean_ensemble
from mammolens.preprocess import Pipeline, sample_from_row
from mammolens.preprocess.sample import default_loader


@pytest.fixture(scope="module")
def ensemble_dir(tmp_path_factory):
    """As ``cv`` writes it: three fold bundles (temperature 1.3 each) under one mean, at its own temperature."""
    root = tmp_path_factory.mktemp("cv")
    folds = [make_bundle(root / f"repeat0/fold{i}/bundle", seed=i) for i in range(3)]
    return save_mean_ensemble(root / "ensemble", folds, threshold=0.45, temperature=0.8)


@pytest.fixture(scope="module")
def png(tmp_path_factory):
    return write_png(tmp_path_factory.mktemp("img") / "a.png", film(1))


def _expected(ensemble_dir, path):
    """The ensemble's own probabilities: its members' preprocessing, mean and temperature."""
    ensemble = load_bundle(ensemble_dir)
    sample, _ = sample_from_row({"path": str(path), "rois": "[]"}, default_loader)
    return ensemble.predict_proba(Pipeline(ensemble.preprocess)(sample).pixels[None])[0]


def test_predict_scores_the_cv_ensemble(ensemble_dir, png, tmp_path):
    out = tmp_path / "out.csv"
    assert main(["predict", str(ensemble_dir), str(png), "--out", str(out), "--no-progress"]) == 0
    (row,) = list(csv.DictReader(out.open()))
    assert float(row["p_malignant"]) == pytest.approx(float(_expected(ensemble_dir, png)[1]), abs=1e-5)


def test_serve_answers_with_the_cv_ensemble_and_its_heatmap(ensemble_dir, png):
    client = TestClient(create_app(ensemble_dir, ServiceConfig()))
    assert client.get("/v1/model").json()["threshold"] == 0.45
    r = client.post("/v1/predict", files={"file": ("a.png", png.read_bytes(), "image/png")}, data={"heatmap": "true"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["probabilities"]["malignant"] == pytest.approx(float(_expected(ensemble_dir, png)[1]), abs=1e-5)


def test_export_writes_the_ensemble_as_one_onnx_file(ensemble_dir, png, tmp_path):
    out = tmp_path / "ensemble.onnx"
    assert main(["export", str(ensemble_dir), "--out", str(out), "--exporter", "torchscript"]) == 0
    got = Predictor.load(out, backend="onnxruntime").predict(png)
    assert got.probabilities["malignant"] == pytest.approx(float(_expected(ensemble_dir, png)[1]), abs=1e-4)
    assert got.threshold == 0.45


def test_explain_maps_the_cv_ensemble_as_the_mean_of_its_members(ensemble_dir, png, tmp_path):
    from mammolens.explain import explain_image

    out = tmp_path / "explained"
    assert main(["explain", str(ensemble_dir), str(png), "--out", str(out)]) == 0
    summary = json.loads((out / "explanations.json").read_text())["a"]
    assert summary["probabilities"]["malignant"] == pytest.approx(float(_expected(ensemble_dir, png)[1]), abs=1e-5)
    assert (out / "a_overlay.png").is_file()
    ensemble = load_bundle(ensemble_dir)
    pixels = np.asarray(default_loader(str(png)).pixels)
    members = [explain_image(m, pixels).heatmap for m in ensemble.members]
    mean = np.mean(members, axis=0)
    np.testing.assert_allclose(explain_image(ensemble, pixels).heatmap, mean / mean.max(), atol=1e-5)
    # the Predictor's heatmap is the same map
    np.testing.assert_allclose(Predictor.load(ensemble_dir).explain(pixels), mean / mean.max(), atol=1e-5)


def test_explain_eval_scores_the_cv_ensemble(ensemble_dir, tmp_path):
    from mammolens.data.synthetic import generate

    source = generate(tmp_path / "syn", n_per_class=2, size=64, seed=3, progress=False)
    out = tmp_path / "loc"
    assert main(["explain-eval", str(ensemble_dir), str(source), "--out", str(out), "--method", "gradcam"]) == 0
    page = (out / "localisation.html").read_text()
    assert "ensemble of scratch-cnn" in page and (out / "localisation.csv").is_file()


def test_a_logistic_stacker_exports_as_one_graph_and_an_svc_one_is_refused(ensemble_dir, png, tmp_path):
    from mammolens.bundle import save_ensemble
    from mammolens.deploy.export import export_onnx
    from mammolens.evaluate.ensembles import fit_stacker
    from mammolens.utils.errors import ConfigError

    rng = np.random.default_rng(0)
    p = [np.stack([1 - q, q], 1) for q in rng.random((2, 40))]
    y, groups = (p[0][:, 1] + 0.3 * rng.random(40) > 0.6).astype(int), np.arange(40).astype(str)
    folds = [ensemble_dir / "members" / str(i) for i in range(2)]
    stacked = save_ensemble(tmp_path / "stack", folds, combiner=fit_stacker("logreg", p, y, groups),
                            threshold=0.5, temperature=1.7)  # fmt: skip
    report = Predictor.load(stacked).predict(png)
    assert main(["export", str(stacked), "--out", str(tmp_path / "s.onnx"), "--exporter", "torchscript"]) == 0
    got = Predictor.load(tmp_path / "s.onnx", backend="onnxruntime").predict(png)
    assert got.probabilities["malignant"] == pytest.approx(report.probabilities["malignant"], abs=1e-4)
    svc = save_ensemble(tmp_path / "svc", folds, combiner=fit_stacker("svc", p, y, groups), threshold=0.5,
                        temperature=1.0)  # fmt: skip
    with pytest.raises(ConfigError, match="takes mean and logreg ensembles, not a 'svc' stacker"):
        export_onnx(svc, tmp_path / "svc.onnx", exporter="torchscript")
